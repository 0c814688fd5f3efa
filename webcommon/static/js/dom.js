// DOM helpers: every piece of data reaches the page as a text node or an attribute value set here.
// Nothing in either console parses HTML, so device, village and CAP text that carry markup stay text.
// Shared by the gateway's and the county's console (served at /ui/common/js/dom.js).
import { lang } from "./i18n.js";

const BOOLEAN_PROPS = new Set(["checked", "disabled", "selected", "multiple", "required", "readOnly",
  "hidden", "open", "autofocus", "controls"]);
const FORBIDDEN = new Set(["style", "srcdoc", "formaction", "action", "xlink:href"]);
const NAME_OK = /^[a-z][a-z0-9-]*$/;

/** True for a URL with a scheme (a script URL, "https:", "data:") or a protocol-relative "//host". */
function hasScheme(v) {
  return v.startsWith("//") || /^[^/?#]*:/.test(v);
}

/** A URL for href: "#…", same-origin paths and blob: only (no script or data URLs, no other hosts). */
function safeHref(value) {
  const v = String(value).trim();
  if (v.startsWith("#") || v.startsWith("blob:")) return v;
  return hasScheme(v) ? "#" : v;
}

/** A URL for src: blob: URLs (audio made in the page) or same-origin relative paths only. */
function safeSrc(value) {
  const v = String(value).trim();
  if (v.startsWith("blob:")) return v;
  return hasScheme(v) ? "" : v;
}

function append(el, child) {
  if (child === null || child === undefined || child === false || child === true) return;
  if (Array.isArray(child)) {
    for (const c of child) append(el, c);
  } else if (child instanceof Node) {
    el.appendChild(child);
  } else {
    el.appendChild(document.createTextNode(String(child)));
  }
}

/**
 * Build an element. attrs: class (string or array), id, type, value, checked, disabled, placeholder,
 * title, for, name, role, aria-*, data-*, href (relative or '#…'), src (blob: or relative),
 * on: {event: fn}; other plain attribute names are set as attributes, except inline handlers
 * ("on…") and style, which throw (the CSP forbids them anyway).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false && !BOOLEAN_PROPS.has(key)) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) {
        if (typeof fn === "function") el.addEventListener(event, fn);
      }
    } else if (key === "class" || key === "className") {
      const names = Array.isArray(value) ? value.filter(Boolean) : String(value).split(/\s+/).filter(Boolean);
      if (names.length) el.classList.add(...names);
    } else if (key === "value") {
      el.value = String(value);
    } else if (BOOLEAN_PROPS.has(key) || key === "readonly") {
      el[key === "readonly" ? "readOnly" : key] = Boolean(value);
    } else if (key === "for") {
      el.htmlFor = String(value);
    } else if (key === "href") {
      el.setAttribute("href", safeHref(value));
    } else if (key === "src") {
      el.setAttribute("src", safeSrc(value));
    } else {
      const name = key.toLowerCase();
      if (!NAME_OK.test(name) || name.startsWith("on") || FORBIDDEN.has(name)) {
        throw new Error(`h(): attribute '${key}' is not allowed`);
      }
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

/** Remove all children of el. */
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Replace el's children with children (same rules as h()). */
export function mount(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// The gateway console shows times in the gateway's time zone (GET /session says which, setTimeZone()),
// not the browser's: an alert valid to 23:00 in the township must read 23:00 on a laptop set to UTC
// too, as it is spoken. The county console sets none: its times are in the browser's own zone.
let gatewayZone; // IANA name, e.g. "Asia/Shanghai"; undefined: the browser's own zone
const formatters = new Map();

function formatter(zone) {
  const key = zone || "";
  if (!formatters.has(key)) {
    formatters.set(key, new Intl.DateTimeFormat("en-US", { timeZone: zone, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
      timeZoneName: "shortOffset" }));
  }
  return formatters.get(key);
}

function parts(date, zone) {
  const out = {};
  for (const p of formatter(zone).formatToParts(date)) out[p.type] = p.value;
  return out;
}

/** Show every time in ``zone`` (an IANA name, the gateway's); an unknown or empty one keeps the browser's. */
export function setTimeZone(zone) {
  gatewayZone = undefined;
  if (!zone) return;
  try {
    formatter(String(zone));
    gatewayZone = String(zone);
  } catch {
    console.error(`unknown time zone ${zone}: times are shown in the browser's own`);
  }
}

/** The gateway's zone as "Asia/Shanghai (GMT+8)" (the browser's own when the gateway's is unknown). */
export function zoneLabel() {
  const name = gatewayZone || Intl.DateTimeFormat().resolvedOptions().timeZone;
  return `${name} (${parts(new Date(), gatewayZone).timeZoneName})`;
}

/**
 * Epoch seconds (number or numeric string) or an ISO string → "11-28 03:15:07" in the gateway's
 * zone; with the year ("2099-12-31 23:00:00") when it is not this year there, and with the zone
 * ("… GMT+8") when the browser's own zone is a different one at that moment; "—" when absent.
 */
export function fmtTime(ts) {
  if (ts === null || ts === undefined || ts === "") return "—";
  let d;
  if (typeof ts === "number" || /^\d+(\.\d+)?$/.test(String(ts))) d = new Date(Number(ts) * 1000);
  else d = new Date(String(ts));
  if (Number.isNaN(d.getTime())) return String(ts);
  const p = parts(d, gatewayZone);
  const date = p.year === parts(new Date(), gatewayZone).year ? `${p.month}-${p.day}`
    : `${p.year}-${p.month}-${p.day}`;
  const text = `${date} ${p.hour}:${p.minute}:${p.second}`;
  const obvious = !gatewayZone || parts(d, undefined).timeZoneName === p.timeZoneName;
  return obvious ? text : `${text} ${p.timeZoneName}`;
}

/** A duration in seconds → "12 s" / "3 min" / "2 h" / "4 d" (zh: "12 秒" / "3 分钟" / "2 小时" / "4 天"). */
export function fmtAgo(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return "—";
  const s = Math.max(0, Math.round(Number(seconds)));
  const zh = lang() === "zh";
  if (s < 60) return zh ? `${s} 秒` : `${s} s`;
  if (s < 3600) return zh ? `${Math.floor(s / 60)} 分钟` : `${Math.floor(s / 60)} min`;
  if (s < 86400) return zh ? `${Math.floor(s / 3600)} 小时` : `${Math.floor(s / 3600)} h`;
  return zh ? `${Math.floor(s / 86400)} 天` : `${Math.floor(s / 86400)} d`;
}

/** Seconds since epoch-seconds ts, for fmtAgo. */
export function since(ts) {
  return ts === null || ts === undefined ? null : Date.now() / 1000 - Number(ts);
}

const SVG_NS = "http://www.w3.org/2000/svg";
const SVG_ATTR_OK = /^[a-z][a-z0-9-]*$/;

/** An SVG element: attributes are plain geometry/class/data-* names (no "on…", no style, no href). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
      continue;
    }
    const name = key === "viewBox" ? "viewBox" : key.toLowerCase();
    if (name !== "viewBox" && (!SVG_ATTR_OK.test(name) || name.startsWith("on") || name === "style"
      || name.includes("href"))) {
      throw new Error(`svg(): attribute '${key}' is not allowed`);
    }
    el.setAttribute(name, Array.isArray(value) ? value.filter(Boolean).join(" ") : String(value));
  }
  append(el, children);
  return el;
}

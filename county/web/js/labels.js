// Labels and small pieces shared by the views: terminal states and gateway status in colour AND words,
// fault names, errors in words, and a debounced reload on live events. Everything shown stays text.
import { ApiError, onEvent } from "./api.js";
import { fmtAgo, fmtTime, h, since } from "./dom.js";
import { addStrings, lang, t } from "./i18n.js";
import { stateClass } from "/ui/common/js/terminal.js";

addStrings({
  zh: {
    "st.normal": "正常",
    "st.stopped": "关闭",
    "st.fault": "故障",
    "st.recovered": "故障恢复",
    "st.playing": "正在播放",
    "st.offline": "离线",
    "st.unknown": "等待数据",
    "gw.online": "在线",
    "gw.offline": "离线",
    "gw.unknown": "未知",
    "gw.sinceAgo": "{time}起（{ago}前）",
    "err.field": "出错（字段 {field}）：{message}",
    "fault.mains_lost": "市电中断",
    "fault.supply_fault": "电源故障",
    "fault.amp_fault": "功放故障",
    "fault.line_short": "线路短路",
    "fault.line_open": "线路开路",
    "fault.line_down": "通信中断",
    "fault.high_vswr": "驻波比过高",
    "fault.pll_unlocked": "锁相环失锁",
    "fault.no_audio_input": "无音频输入",
    "fault.impedance_deviation": "阻抗偏差",
    "fault.low_battery": "电池电量低",
    "fault.over_temperature": "温度过高",
    "fault.tamper": "防拆报警",
  },
  en: {
    "st.normal": "Normal",
    "st.stopped": "Off",
    "st.fault": "FAULT",
    "st.recovered": "Fault recovered",
    "st.playing": "Playing",
    "st.offline": "OFFLINE",
    "st.unknown": "Waiting for data",
    "gw.online": "online",
    "gw.offline": "OFFLINE",
    "gw.unknown": "unknown",
    "gw.sinceAgo": "since {time} ({ago} ago)",
    "err.field": "Error (field {field}): {message}",
    "fault.mains_lost": "Mains lost",
    "fault.supply_fault": "Power supply fault",
    "fault.amp_fault": "Amplifier fault",
    "fault.line_short": "Line short",
    "fault.line_open": "Line open",
    "fault.line_down": "Link down",
    "fault.high_vswr": "High VSWR",
    "fault.pll_unlocked": "PLL unlocked",
    "fault.no_audio_input": "No audio input",
    "fault.impedance_deviation": "Impedance deviation",
    "fault.low_battery": "Low battery",
    "fault.over_temperature": "Over temperature",
    "fault.tamper": "Tamper",
  },
});

export { stateClass }; // the terminal state → display class, shared with the gateway console

export const STATE_CLASSES = ["normal", "playing", "fault", "recovered", "stopped", "offline", "unknown"];
const SYMBOL = { normal: "●", stopped: "■", fault: "✖", recovered: "▲", playing: "♪", offline: "○",
  unknown: "?" };

/** A state code key of /overview's by_state ("1".."5", "unknown") → display class. */
export function codeClass(code) {
  return stateClass({ state: code === "unknown" ? null : Number(code), online: code === "2" ? false : null });
}

export function stateLabel(cls, testid = null) {
  return h("span", { class: ["state-label", `st-${cls}`], "data-testid": testid, "data-state": cls },
    h("span", { class: "sym", "aria-hidden": "true" }, SYMBOL[cls] || "?"), " ", t(`st.${cls}`));
}

export function statusBadge(status, testid = null) {
  const s = ["online", "offline"].includes(status) ? status : "unknown";
  return h("span", { class: ["gw-status", `gw-${s}`], "data-testid": testid, "data-status": s }, t(`gw.${s}`));
}

/** "11-28 03:15:07 起（3 分钟前）" for a since-when epoch. */
export function sinceText(ts) {
  if (ts === null || ts === undefined) return "—";
  return t("gw.sinceAgo", { time: fmtTime(ts), ago: fmtAgo(since(ts)) });
}

/** A fault's name in words: known codes translated, the gateway's own reason text otherwise. */
export function faultName(f) {
  const key = `fault.${f.fault}`;
  const text = t(key);
  if (text !== key) return text;
  return (lang() === "zh" ? f.reason_zh || f.reason : f.reason || f.reason_zh) || String(f.fault ?? "");
}

export function faultReason(f) {
  return (lang() === "zh" ? f.reason_zh || f.reason : f.reason || f.reason_zh) || "";
}

/** An error paragraph (the API's detail, naming the field when it did). */
export function errorBox(err) {
  const text = err instanceof ApiError && err.field ? t("err.field", { field: err.field, message: err.message })
    : t("common.error", { error: err?.message || String(err) });
  return h("p", { class: "notice error", role: "alert", "data-testid": "view-error" }, text);
}

/** Call fn() (debounced) when one of the SSE event kinds arrives (or "resync") and filter(data) allows
 * it; returns an unsubscribe fn. */
export function liveReload(kinds, fn, delayMs = 250, filter = null) {
  let timer = null;
  const fire = (data, kind) => {
    if (filter && kind !== "resync" && !filter(data || {})) return;
    clearTimeout(timer);
    timer = setTimeout(fn, delayMs);
  };
  const offs = [...kinds, "resync"].map((kind) => onEvent(kind, fire));
  return () => {
    clearTimeout(timer);
    for (const off of offs) off();
  };
}

/** "87 %" for a 0..1 fraction, "—" when absent. */
export function pct(value) {
  return typeof value === "number" ? `${Math.round(value * 1000) / 10} %` : "—";
}

/** A township's display name: its name from the birth, else its id. */
export function gwName(gw) {
  return gw?.name || gw?.township || gw?.id || gw?.gateway || "—";
}

/** A link to one gateway's board. */
export function gwLink(id, text) {
  return h("a", { href: `#/gateway/${encodeURIComponent(id)}`, "data-testid": `gwlink-${id}` }, text);
}

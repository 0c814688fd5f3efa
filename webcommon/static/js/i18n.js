// Strings in Chinese (default) and English: the mechanism both consoles share (served at
// /ui/common/js/i18n.js). Each console keeps its own tables: its js/i18n.js names the localStorage key
// that remembers the choice (useStorageKey) and adds the shell's strings; each view adds its own
// table at import with addStrings().
let storageKey = null; // set by the console's js/i18n.js before anything is shown
const tables = { zh: {}, en: {} };
const listeners = new Set();

function stored() {
  try {
    const v = storageKey ? localStorage.getItem(storageKey) : null;
    return v === "en" || v === "zh" ? v : "zh";
  } catch {
    return "zh";
  }
}

let current = "zh";

/** Remember the language under localStorage[name] ("ebc.lang", "ebc.county.lang") and take it up. */
export function useStorageKey(name) {
  storageKey = name;
  current = stored();
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
}

/** "zh" | "en" (default zh; remembered in localStorage under the console's key). */
export function lang() {
  return current;
}

/** Switch language, remember it and tell every listener (views re-render). */
export function setLang(value) {
  const next = value === "en" ? "en" : "zh";
  try {
    if (storageKey) localStorage.setItem(storageKey, next);
  } catch {
    // private mode: the choice lasts for this page only
  }
  if (next === current) return;
  current = next;
  document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
  for (const fn of [...listeners]) {
    try {
      fn(next);
    } catch (err) {
      console.error("language listener failed", err);
    }
  }
}

/** Call fn(lang) after every switch; returns an unsubscribe function. */
export function onLangChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Merge {zh: {key: text}, en: {key: text}} into the tables (later additions win). */
export function addStrings(table) {
  for (const code of Object.keys(tables)) Object.assign(tables[code], table?.[code] || {});
}

/** The text for key in the current language ("{name}" placeholders from vars); missing → zh → key. */
export function t(key, vars = {}) {
  let text = tables[current][key];
  if (text === undefined) text = tables.zh[key];
  if (text === undefined) return key;
  return text.replace(/\{(\w+)\}/g, (whole, name) =>
    vars[name] === undefined || vars[name] === null ? whole : String(vars[name]));
}

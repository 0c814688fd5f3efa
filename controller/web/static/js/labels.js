// Labels and formatting shared by the views: broadcast states and outcomes, classes, levels and tones
// in colour AND words, errors in words, numbers with units, fault reasons, and the device inventory.
// Each helper builds nodes with h() or returns plain text, so everything shown stays text.
import { ApiError } from "./api.js";
import { h } from "./dom.js";
import { addStrings, lang, t } from "./i18n.js";

addStrings({
  zh: {
    "v.class.emergency": "应急广播",
    "v.class.drill": "演练",
    "v.class.daily": "日常广播",
    "v.level.1": "一级 · 红色（特别重大）",
    "v.level.2": "二级 · 橙色（重大）",
    "v.level.3": "三级 · 黄色（较大）",
    "v.level.4": "四级 · 蓝色（一般）",
    "v.tone.auto": "按级别默认（{tone}）",
    "v.tone.siren": "警笛",
    "v.tone.chime": "双音提示音",
    "v.tone.air_defence_warning": "防空预先警报（鸣36秒停24秒，3遍）",
    "v.tone.air_raid": "防空空袭警报（鸣6秒停6秒，15遍）",
    "v.tone.all_clear": "防空解除警报（连续3分钟）",
    "v.tone.none": "无提示音",
    "v.state.0": "未处理",
    "v.state.1": "等待",
    "v.state.2": "正在播放",
    "v.state.3": "成功",
    "v.state.4": "失败",
    "v.state.5": "已取消",
    "v.outcome.pending": "等待确认",
    "v.outcome.succeeded": "成功",
    "v.outcome.partial": "部分播出",
    "v.outcome.failed": "失败",
    "v.outcome.unreachable": "无法连接",
    "v.error": "出错：{message}",
    "v.error.field": "出错（字段 {field}）：{message}",
    "v.loading": "正在加载……",
    "v.times": "{n} 次",
    "v.terminals": "{n} 个终端",
    "v.fm": "调频发射机",
  },
  en: {
    "v.class.emergency": "Emergency",
    "v.class.drill": "Drill",
    "v.class.daily": "Daily",
    "v.level.1": "Level 1 · Red (extremely serious)",
    "v.level.2": "Level 2 · Orange (serious)",
    "v.level.3": "Level 3 · Yellow (major)",
    "v.level.4": "Level 4 · Blue (general)",
    "v.tone.auto": "Default for the level ({tone})",
    "v.tone.siren": "Siren",
    "v.tone.chime": "Two-tone chime",
    "v.tone.air_defence_warning": "Air-defence advance warning (36 s on, 24 s off, ×3)",
    "v.tone.air_raid": "Air-raid warning (6 s on, 6 s off, ×15)",
    "v.tone.all_clear": "All clear (3 min continuous)",
    "v.tone.none": "No tone",
    "v.state.0": "Not processed",
    "v.state.1": "Waiting",
    "v.state.2": "Playing",
    "v.state.3": "Succeeded",
    "v.state.4": "Failed",
    "v.state.5": "Cancelled",
    "v.outcome.pending": "Pending",
    "v.outcome.succeeded": "Succeeded",
    "v.outcome.partial": "Partly played",
    "v.outcome.failed": "Failed",
    "v.outcome.unreachable": "Unreachable",
    "v.error": "Error: {message}",
    "v.error.field": "Error in {field}: {message}",
    "v.loading": "Loading…",
    "v.times": "{n}×",
    "v.terminals": "{n} terminals",
    "v.fm": "FM transmitter",
  },
});

// -- broadcasts: state, outcome, class, level, tone --------------------------------------------------

export const CLASSES = ["emergency", "drill", "daily"];
export const LEVELS = [1, 2, 3, 4];
export const TONES = ["siren", "chime", "air_defence_warning", "air_raid", "all_clear", "none"];
const STATE_NAMES = ["not_processed", "waiting", "playing", "succeeded", "failed", "cancelled"];

/** Broadcast state code (0–5) from a record's state_code, a state name or a number. */
export function stateCode(value) {
  if (typeof value === "number") return value;
  const byName = STATE_NAMES.indexOf(String(value));
  return byName >= 0 ? byName : Number(value);
}

/** A state badge: colour AND text, e.g. "正在播放". */
export function stateBadge(value, testid) {
  const code = stateCode(value);
  return h("span", { class: `v-badge v-state-${code}`, "data-state": String(code), "data-testid": testid },
    t(`v.state.${code}`));
}

/** A terminal's outcome of one broadcast as a badge: colour AND text, e.g. "部分播出". */
export function outcomeBadge(outcome) {
  return h("span", { class: `v-badge v-outcome v-outcome-${outcome}` }, t(`v.outcome.${outcome}`));
}

/** "应急广播" / "Drill" for a broadcast class. */
export function classText(cls) {
  return t(`v.class.${cls}`);
}

/** "一级 · 红色（特别重大）" for an emergency level 1–4. */
export function levelText(level) {
  return t(`v.level.${level}`);
}

/** Emergency level 1–4 as a badge with colour and words (一级 · 红色). */
export function levelBadge(level, testid) {
  return h("span", { class: `v-badge v-level-${level}`, "data-level": String(level), "data-testid": testid },
    levelText(level));
}

/** Class (and level for emergencies) of a request or record as a node: "应急广播 一级 · 红色". */
export function classNode(cls, severity) {
  return h("span", { class: "v-class" },
    h("span", { class: `v-badge v-class-${cls || "unknown"}` }, cls ? classText(cls) : "?"),
    cls === "emergency" && severity ? levelBadge(severity) : null);
}

/** The tone the engine plays when the request names none (controller/broadcast/model.py effective_tone). */
export function defaultTone(cls, severity) {
  return cls === "emergency" && (severity || 4) <= 2 ? "siren" : "chime";
}

export function toneText(tone) {
  return t(`v.tone.${tone}`);
}

// -- errors, numbers, faults -------------------------------------------------------------------------

/** An API error in words, with the field the server named. */
export function errorText(err) {
  const message = err?.message ? err.message : String(err);
  if (err instanceof ApiError && err.field) return t("v.error.field", { field: err.field, message });
  return t("v.error", { message });
}

/** A measured number with its unit: "12.5 W", "1.20", "—" when absent or not finite. */
export function fmtNumber(value, digits = 1, unit = "") {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  const text = value.toFixed(digits);
  return unit ? `${text} ${unit}` : text;
}

/** A device or gateway fault in words, in the console's language (the other one, then its code, if missing). */
export function faultText(fault) {
  const zh = fault.reason_zh || fault.reason || fault.fault || "";
  const en = fault.reason || fault.reason_zh || fault.fault || "";
  return lang() === "zh" ? zh : en;
}

// -- devices -----------------------------------------------------------------------------------------

/** A device list split by what it is: loudspeaker terminals, FM transmitters, villages. */
export function inventory(devices) {
  const terminals = devices.filter((d) => d.kind !== "fm_transmitter");
  const transmitters = devices.filter((d) => d.kind === "fm_transmitter");
  const villages = new Map();
  for (const d of terminals) {
    const name = d.village || d.name || d.id;
    if (!villages.has(name)) villages.set(name, []);
    villages.get(name).push(d.id);
  }
  return { terminals, transmitters, villages, byId: new Map(devices.map((d) => [d.id, d])) };
}

// Strings in Chinese (default) and English. Each view adds its own table at import with addStrings().
const KEY = "ebc.county.lang";
const tables = { zh: {}, en: {} };
const listeners = new Set();

function stored() {
  try {
    const v = localStorage.getItem(KEY);
    return v === "en" || v === "zh" ? v : "zh";
  } catch {
    return "zh";
  }
}

let current = stored();

/** "zh" | "en" (default zh; remembered in localStorage "ebc.county.lang"). */
export function lang() {
  return current;
}

/** Switch language, remember it and tell every listener (views re-render). */
export function setLang(value) {
  const next = value === "en" ? "en" : "zh";
  try {
    localStorage.setItem(KEY, next);
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

document.documentElement.lang = current === "zh" ? "zh-CN" : "en";

addStrings({
  zh: {
    "app.title": "县级应急广播监控中心",
    "login.title": "登录县级应急广播监控中心",
    "login.token": "访问令牌",
    "login.hint": "令牌由县中心管理员用 “ebc county token create” 创建；只保存在本标签页中，关闭即失效。",
    "login.submit": "登录",
    "login.checking": "正在验证…",
    "login.empty": "请输入令牌",
    "login.bad": "令牌无效或已被吊销",
    "login.expired": "登录已失效，请重新输入令牌",
    "login.loggedOut": "已退出登录",
    "login.unreachable": "无法连接县中心服务：{error}",
    "nav.overview": "全县概况",
    "nav.map": "终端地图",
    "nav.faults": "未消除故障",
    "nav.gateways": "乡镇网关",
    "nav.broadcasts": "广播记录",
    "nav.county": "全县广播",
    "nav.compose": "发布全县广播",
    "nav.menu": "菜单",
    "header.compose": "发布广播",
    "header.logout": "退出",
    "header.live": "实时连接",
    "header.reconnecting": "正在重连…",
    "header.langSwitch": "English",
    "header.langSwitchTitle": "Switch to English",
    "role.viewer": "查看员",
    "role.operator": "值班员",
    "role.admin": "管理员",
    "common.loading": "加载中…",
    "common.error": "出错：{error}",
    "common.none": "无",
    "common.ago": "{d}前",
    "common.forbidden": "您的角色无权使用此页面。",
    "common.notFound": "没有这个页面。",
  },
  en: {
    "app.title": "County emergency broadcast centre",
    "login.title": "Sign in to the county emergency broadcast centre",
    "login.token": "Access token",
    "login.hint": "The county admin creates tokens with “ebc county token create”. It is kept in this tab " +
      "only and forgotten when the tab closes.",
    "login.submit": "Sign in",
    "login.checking": "Checking…",
    "login.empty": "Enter a token",
    "login.bad": "Token is not valid or was revoked",
    "login.expired": "Your session ended; enter the token again",
    "login.loggedOut": "Signed out",
    "login.unreachable": "Cannot reach the county service: {error}",
    "nav.overview": "Overview",
    "nav.map": "Map",
    "nav.faults": "Open faults",
    "nav.gateways": "Townships",
    "nav.broadcasts": "Broadcasts",
    "nav.county": "County broadcasts",
    "nav.compose": "New county broadcast",
    "nav.menu": "Menu",
    "header.compose": "BROADCAST",
    "header.logout": "Sign out",
    "header.live": "Live",
    "header.reconnecting": "Reconnecting…",
    "header.langSwitch": "中文",
    "header.langSwitchTitle": "切换到中文",
    "role.viewer": "viewer",
    "role.operator": "operator",
    "role.admin": "admin",
    "common.loading": "Loading…",
    "common.error": "Error: {error}",
    "common.none": "none",
    "common.ago": "{d} ago",
    "common.forbidden": "Your role may not use this page.",
    "common.notFound": "No such page.",
  },
});

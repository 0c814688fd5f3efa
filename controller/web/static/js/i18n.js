// Strings in Chinese (default) and English. Each view adds its own table at import with addStrings().
const KEY = "ebc.lang";
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

/** "zh" | "en" (default zh; remembered in localStorage "ebc.lang"). */
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
    "app.title": "应急广播控制台",
    "login.title": "登录应急广播控制台",
    "login.token": "访问令牌",
    "login.hint": "令牌由网关管理员用 “ebc token create” 创建；只保存在本标签页中，关闭即失效。",
    "login.submit": "登录",
    "login.checking": "正在验证…",
    "login.empty": "请输入令牌",
    "login.bad": "令牌无效或已被吊销",
    "login.expired": "登录已失效，请重新输入令牌",
    "login.loggedOut": "已退出登录",
    "login.unreachable": "无法连接网关：{error}",
    "nav.board": "设备状态",
    "nav.broadcast": "紧急广播",
    "nav.history": "广播记录",
    "nav.alerts": "预警收件箱",
    "nav.audit": "审计日志",
    "nav.gateway": "网关健康",
    "nav.menu": "菜单",
    "header.emergency": "紧急广播",
    "header.logout": "退出",
    "header.live": "实时连接",
    "header.reconnecting": "正在重连…",
    "header.connecting": "连接中…",
    "header.langSwitch": "English",
    "header.langSwitchTitle": "Switch to English",
    "role.viewer": "查看员",
    "role.operator": "值班员",
    "role.admin": "管理员",
    "role.feed": "预警源",
    "common.loading": "加载中…",
    "common.error": "出错：{error}",
    "common.retry": "重试",
    "common.none": "无",
    "common.ago": "{d}前",
    "common.prev": "上一页",
    "common.next": "下一页",
    "common.page": "第 {n} 页",
    "common.forbidden": "您的角色无权使用此页面。",
    "common.notFound": "没有这个页面。",
  },
  en: {
    "app.title": "Emergency broadcast console",
    "login.title": "Sign in to the emergency broadcast console",
    "login.token": "Access token",
    "login.hint": "The gateway admin creates tokens with “ebc token create”. It is kept in this tab only and " +
      "forgotten when the tab closes.",
    "login.submit": "Sign in",
    "login.checking": "Checking…",
    "login.empty": "Enter a token",
    "login.bad": "Token is not valid or was revoked",
    "login.expired": "Your session ended; enter the token again",
    "login.loggedOut": "Signed out",
    "login.unreachable": "Cannot reach the gateway: {error}",
    "nav.board": "Devices",
    "nav.broadcast": "Emergency broadcast",
    "nav.history": "Broadcasts",
    "nav.alerts": "Alert inbox",
    "nav.audit": "Audit log",
    "nav.gateway": "Gateway health",
    "nav.menu": "Menu",
    "header.emergency": "EMERGENCY BROADCAST",
    "header.logout": "Sign out",
    "header.live": "Live",
    "header.reconnecting": "Reconnecting…",
    "header.connecting": "Connecting…",
    "header.langSwitch": "中文",
    "header.langSwitchTitle": "切换到中文",
    "role.viewer": "viewer",
    "role.operator": "operator",
    "role.admin": "admin",
    "role.feed": "feed",
    "common.loading": "Loading…",
    "common.error": "Error: {error}",
    "common.retry": "Retry",
    "common.none": "none",
    "common.ago": "{d} ago",
    "common.prev": "Previous",
    "common.next": "Next",
    "common.page": "Page {n}",
    "common.forbidden": "Your role may not use this page.",
    "common.notFound": "No such page.",
  },
});

// This console's own strings in Chinese (default) and English: its name, login hint, nav labels. The
// mechanism (t, lang, setLang, addStrings) and the shell's strings are shared with the gateway console
// (webcommon/static/js/i18n.js, shell.js).
import { addStrings, useStorageKey } from "/ui/common/js/i18n.js";

export * from "/ui/common/js/i18n.js";

useStorageKey("ebc.county.lang");

addStrings({
  zh: {
    "app.title": "县级应急广播监控中心",
    "login.title": "登录县级应急广播监控中心",
    "login.hint": "令牌由县中心管理员用 “ebc county token create” 创建；只保存在本标签页中，关闭即失效。",
    "login.unreachable": "无法连接县中心服务：{error}",
    "nav.overview": "全县概况",
    "nav.map": "终端地图",
    "nav.faults": "未消除故障",
    "nav.gateways": "乡镇网关",
    "nav.broadcasts": "广播记录",
    "nav.county": "全县广播",
    "nav.compose": "发布全县广播",
    "header.compose": "发布广播",
    "common.notFound": "没有这个页面。",
  },
  en: {
    "app.title": "County emergency broadcast centre",
    "login.title": "Sign in to the county emergency broadcast centre",
    "login.hint": "The county admin creates tokens with “ebc county token create”. It is kept in this tab " +
      "only and forgotten when the tab closes.",
    "login.unreachable": "Cannot reach the county service: {error}",
    "nav.overview": "Overview",
    "nav.map": "Map",
    "nav.faults": "Open faults",
    "nav.gateways": "Townships",
    "nav.broadcasts": "Broadcasts",
    "nav.county": "County broadcasts",
    "nav.compose": "New county broadcast",
    "header.compose": "BROADCAST",
    "common.notFound": "No such page.",
  },
});

// This console's own strings in Chinese (default) and English: its name, login hint, nav labels. The
// mechanism (t, lang, setLang, addStrings) and the shell's strings are shared with the county console
// (webcommon/static/js/i18n.js, shell.js).
import { addStrings, useStorageKey } from "/ui/common/js/i18n.js";

export * from "/ui/common/js/i18n.js";

useStorageKey("ebc.lang");

addStrings({
  zh: {
    "app.title": "应急广播控制台",
    "login.title": "登录应急广播控制台",
    "login.hint": "令牌由网关管理员用 “ebc token create” 创建；只保存在本标签页中，关闭即失效。",
    "login.unreachable": "无法连接网关：{error}",
    "nav.board": "设备状态",
    "nav.broadcast": "紧急广播",
    "nav.history": "广播记录",
    "nav.alerts": "预警收件箱",
    "nav.audit": "审计日志",
    "nav.gateway": "网关健康",
    "header.emergency": "紧急广播",
    "header.connecting": "连接中…",
    "role.feed": "预警源",
    "common.retry": "重试",
    "common.prev": "上一页",
    "common.next": "下一页",
    "common.page": "第 {n} 页",
    "common.notFound": "没有这个页面。",
  },
  en: {
    "app.title": "Emergency broadcast console",
    "login.title": "Sign in to the emergency broadcast console",
    "login.hint": "The gateway admin creates tokens with “ebc token create”. It is kept in this tab only and " +
      "forgotten when the tab closes.",
    "login.unreachable": "Cannot reach the gateway: {error}",
    "nav.board": "Devices",
    "nav.broadcast": "Emergency broadcast",
    "nav.history": "Broadcasts",
    "nav.alerts": "Alert inbox",
    "nav.audit": "Audit log",
    "nav.gateway": "Gateway health",
    "header.emergency": "EMERGENCY BROADCAST",
    "header.connecting": "Connecting…",
    "role.feed": "feed",
    "common.retry": "Retry",
    "common.prev": "Previous",
    "common.next": "Next",
    "common.page": "Page {n}",
    "common.notFound": "No such page.",
  },
});

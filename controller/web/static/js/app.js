// The gateway console: its views and header on the shell shared with the county console
// (webcommon/static/js/shell.js: login, header, nav, hash router, language switch).
import "./i18n.js";
import "./api.js";
import { setTimeZone } from "./dom.js";
import { startConsole } from "/ui/common/js/shell.js";

startConsole({
  views: ["board", "broadcast", "history", "alerts", "audit", "gateway"], // nav order
  importView: (name) => import(`./views/${name}.js`),
  defaultRoute: "board",
  infoPath: "/gateway",
  name: (info) => {
    const gw = info?.gateway;
    if (gw && typeof gw === "object") return gw.name || gw.id || "ebc";
    return typeof gw === "string" ? gw : "ebc";
  },
  nameTestid: "gateway-name",
  action: { route: "broadcast", testid: "emergency-button", key: "header.emergency" },
  onSession: (who) => setTimeZone(who?.timezone), // every time on every view in the gateway's zone
});

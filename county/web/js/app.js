// The county console: its views and header on the shell shared with the gateway console
// (webcommon/static/js/shell.js: login, header, nav, hash router, language switch).
import "./api.js";
import { t } from "./i18n.js";
import { startConsole } from "/ui/common/js/shell.js";

startConsole({
  views: ["overview", "map", "faults", "gateways", "broadcasts", "county", "compose", "gateway"], // nav order
  importView: (name) => import(`./views/${name}.js`),
  defaultRoute: "overview",
  infoPath: "/overview",
  name: (info) => {
    const c = info?.county;
    return c && typeof c === "object" ? c.name || c.id || t("app.title") : t("app.title");
  },
  nameTestid: "county-name",
  action: { route: "compose", testid: "compose-button", key: "header.compose" },
});

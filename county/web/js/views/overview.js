// County overview: terminals by state, gateways online/offline, open faults, unexplained gaps, and the
// offline townships with since when. Reloaded on every live change (debounced).
import { api } from "../api.js";
import { h, mount } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { STATE_CLASSES, codeClass, errorBox, gwLink, gwName, liveReload, sinceText, stateLabel } from "../labels.js";

addStrings({
  zh: {
    "ov.terminals": "终端总数",
    "ov.gateways": "乡镇网关",
    "ov.online": "在线网关",
    "ov.offline": "离线网关",
    "ov.faults": "未消除故障",
    "ov.gaps": "未解释的报告缺口",
    "ov.byState": "终端状态",
    "ov.offlineList": "离线网关",
    "ov.noneOffline": "所有网关均在线。",
    "ov.mqttDown": "县中心与消息服务器的连接已断开，画面可能不是最新的。",
  },
  en: {
    "ov.terminals": "Terminals",
    "ov.gateways": "Township gateways",
    "ov.online": "Gateways online",
    "ov.offline": "Gateways offline",
    "ov.faults": "Open faults",
    "ov.gaps": "Unexplained report gaps",
    "ov.byState": "Terminals by state",
    "ov.offlineList": "Offline gateways",
    "ov.noneOffline": "Every gateway is online.",
    "ov.mqttDown": "The county centre has lost its broker connection; the picture may be stale.",
  },
});

function tile(key, value, testid, bad = false) {
  return h("div", { class: ["tile", bad ? "bad" : null], "data-testid": testid, "data-n": value },
    h("div", { class: "tile-label" }, t(key)), h("div", { class: "tile-value" }, String(value)));
}

/** by_state {"1": n, "3": n, "unknown": n} → counts per display class. */
export function countByClass(byState) {
  const out = {};
  for (const [code, n] of Object.entries(byState || {})) {
    const cls = codeClass(code);
    out[cls] = (out[cls] || 0) + Number(n);
  }
  return out;
}

function render(root) {
  let alive = true;
  const load = async () => {
    try {
      const ov = await api("GET", "/overview");
      if (!alive) return;
      const gws = ov.gateways || {};
      const counts = countByClass(ov.terminals?.by_state);
      const offline = ov.offline_gateways || [];
      mount(root,
        ov.mqtt_connected === false ? h("p", { class: "notice error", role: "alert" }, t("ov.mqttDown")) : null,
        h("h1", {}, t("nav.overview")),
        h("div", { class: "tiles" },
          tile("ov.terminals", ov.terminals?.total ?? 0, "ov-terminals"),
          tile("ov.gateways", gws.total ?? 0, "ov-gateways"),
          tile("ov.online", gws.online ?? 0, "ov-online"),
          tile("ov.offline", gws.offline ?? 0, "ov-offline", (gws.offline ?? 0) > 0),
          tile("ov.faults", ov.open_faults ?? 0, "ov-faults", (ov.open_faults ?? 0) > 0),
          tile("ov.gaps", ov.unexplained_gaps ?? 0, "ov-gaps", (ov.unexplained_gaps ?? 0) > 0)),
        h("section", { class: "panel" }, h("h2", {}, t("ov.byState")),
          h("div", { class: "summary", "data-testid": "ov-by-state" },
            STATE_CLASSES.filter((cls) => counts[cls]).map((cls) =>
              h("span", { class: ["count", `st-${cls}`], "data-testid": `ov-count-${cls}`, "data-n": counts[cls] },
                stateLabel(cls), ` ${counts[cls]}`)))),
        h("section", { class: "panel" }, h("h2", {}, t("ov.offlineList")),
          offline.length === 0 ? h("p", { class: "muted" }, t("ov.noneOffline"))
            : h("ul", { class: "offline-list", "data-testid": "ov-offline-list" }, offline.map((g) =>
              h("li", { "data-testid": `ov-offline-${g.id}` }, gwLink(g.id, gwName(g)), " · ",
                h("span", { class: "muted" }, sinceText(g.since)))))));
    } catch (err) {
      if (alive) mount(root, errorBox(err));
    }
  };
  mount(root, h("p", { class: "notice" }, t("common.loading")));
  load();
  const off = liveReload(["gateway.status", "gateway.birth", "device.state", "gateway.gaps"], load);
  return () => {
    alive = false;
    off();
  };
}

export default { id: "overview", navKey: "nav.overview", minRole: "viewer", render };

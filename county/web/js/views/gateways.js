// The township gateways: the offline ones first with since when, then every gateway with its terminal
// counts, open faults and report gaps; each links to its board (#/gateway/<id>).
import { api } from "../api.js";
import { fmtTime, h, mount } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { errorBox, gwLink, gwName, liveReload, sinceText, stateLabel, statusBadge } from "../labels.js";
import { countByClass } from "./overview.js";

addStrings({
  zh: {
    "gws.offline": "离线网关",
    "gws.noneOffline": "所有网关均在线。",
    "gws.all": "全部网关",
    "gws.col.township": "乡镇",
    "gws.col.status": "状态",
    "gws.col.since": "自",
    "gws.col.terminals": "终端",
    "gws.col.faults": "故障",
    "gws.col.gaps": "缺口（未解释/已解释）",
    "gws.col.lastSeen": "最后消息",
  },
  en: {
    "gws.offline": "Offline gateways",
    "gws.noneOffline": "Every gateway is online.",
    "gws.all": "All gateways",
    "gws.col.township": "Township",
    "gws.col.status": "Status",
    "gws.col.since": "Since",
    "gws.col.terminals": "Terminals",
    "gws.col.faults": "Faults",
    "gws.col.gaps": "Gaps (unexplained/explained)",
    "gws.col.lastSeen": "Last message",
  },
});

function row(g) {
  const counts = countByClass(g.by_state);
  return h("tr", { "data-testid": `gw-row-${g.id}`, "data-status": g.status, class: g.status === "offline" ? "bad" : null },
    h("th", { scope: "row" }, gwLink(g.id, gwName(g)), " ", h("code", {}, g.id)),
    h("td", {}, statusBadge(g.status, `gw-status-${g.id}`)),
    h("td", {}, sinceText(g.since)),
    h("td", {}, `${g.devices ?? 0} `, Object.entries(counts).map(([cls, n]) =>
      h("span", { class: "mini" }, stateLabel(cls), ` ${n} `))),
    h("td", { class: "num" }, String(g.open_faults ?? 0)),
    h("td", { class: "num" }, `${g.gaps?.unexplained ?? 0} / ${g.gaps?.explained ?? 0}`),
    h("td", { class: "nowrap" }, fmtTime(g.last_seen)));
}

function table(list, testid) {
  return h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": testid },
    h("thead", {}, h("tr", {}, ["township", "status", "since", "terminals", "faults", "gaps", "lastSeen"].map((c) =>
      h("th", { scope: "col" }, t(`gws.col.${c}`))))),
    h("tbody", {}, list.map(row))));
}

function render(root) {
  let alive = true;
  const load = async () => {
    try {
      const { gateways = [] } = await api("GET", "/gateways");
      if (!alive) return;
      const offline = gateways.filter((g) => g.status === "offline").sort((a, b) => (a.since ?? 0) - (b.since ?? 0));
      mount(root, h("h1", {}, t("nav.gateways")),
        h("section", { class: "panel" }, h("h2", {}, t("gws.offline")),
          offline.length ? table(offline, "gws-offline") : h("p", { class: "muted", "data-testid": "gws-none-offline" },
            t("gws.noneOffline"))),
        h("section", { class: "panel" }, h("h2", {}, t("gws.all")), table(gateways, "gws-all")));
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

export default { id: "gateways", navKey: "nav.gateways", minRole: "viewer", render };

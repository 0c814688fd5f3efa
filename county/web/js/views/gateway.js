// One township gateway's board (#/gateway/<id>): its terminals with state and faults, its recent
// reports, the gaps in its report sequence, and its broadcasts; live when it changes.
import { api } from "../api.js";
import { fmtTime, h, mount } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { errorBox, faultName, faultReason, gwName, liveReload, pct, sinceText, stateClass, stateLabel,
  statusBadge } from "../labels.js";

addStrings({
  zh: {
    "gw.title": "乡镇网关",
    "gw.back": "← 全部网关",
    "gw.devices": "终端（{n}）",
    "gw.events": "最近报告",
    "gw.gaps": "报告序号缺口",
    "gw.broadcasts": "本乡镇广播",
    "gw.noEvents": "没有报告。",
    "gw.noGaps": "没有缺口。",
    "gw.noBroadcasts": "没有广播记录。",
    "gw.col.seq": "序号",
    "gw.col.kind": "类型",
    "gw.col.time": "时间",
    "gw.col.device": "终端",
    "gw.col.missing": "缺失序号",
    "gw.col.detected": "发现时间",
    "gw.col.explained": "原因",
    "gw.col.id": "广播编号",
    "gw.col.state": "状态",
    "gw.col.coverage": "覆盖率",
    "gw.unexplained": "未解释（可能丢失）",
    "gw.village": "{v}",
  },
  en: {
    "gw.title": "Township gateway",
    "gw.back": "← All gateways",
    "gw.devices": "Terminals ({n})",
    "gw.events": "Recent reports",
    "gw.gaps": "Gaps in the report sequence",
    "gw.broadcasts": "Broadcasts in this township",
    "gw.noEvents": "No reports.",
    "gw.noGaps": "No gaps.",
    "gw.noBroadcasts": "No broadcasts.",
    "gw.col.seq": "Seq",
    "gw.col.kind": "Kind",
    "gw.col.time": "Time",
    "gw.col.device": "Terminal",
    "gw.col.missing": "Missing seqs",
    "gw.col.detected": "Detected",
    "gw.col.explained": "Explained by",
    "gw.col.id": "Broadcast",
    "gw.col.state": "State",
    "gw.col.coverage": "Coverage",
    "gw.unexplained": "unexplained (possible loss)",
    "gw.village": "{v}",
  },
});

function deviceCard(dev) {
  const cls = stateClass(dev);
  return h("article", { class: ["card", `st-${cls}`], "data-testid": `device-${dev.id}`, "data-state": cls },
    h("div", { class: "card-head" }, h("strong", { "data-testid": `device-name-${dev.id}` }, dev.name || dev.id),
      " ", stateLabel(cls, `state-${dev.id}`)),
    h("div", { class: "muted" }, dev.village || "", " · ", h("code", {}, dev.id)),
    dev.faults?.length ? h("ul", { class: "faults" }, dev.faults.map((f) =>
      h("li", {}, faultName(f), f.zone ? ` (${f.zone})` : "", " — ", faultReason(f)))) : null);
}

function simpleTable(testid, cols, rows) {
  return h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": testid },
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, t(`gw.col.${c}`))))),
    h("tbody", {}, rows)));
}

function board(gw) {
  const events = gw.recent_events || [];
  const gaps = gw.gap_list || [];
  const broadcasts = gw.broadcasts || [];
  return [
    h("p", {}, h("a", { href: "#/gateways" }, t("gw.back"))),
    h("h1", { "data-testid": "gw-title" }, gwName(gw), " ", statusBadge(gw.status, "gw-board-status")),
    h("p", { class: "muted" }, h("code", {}, gw.id), gw.area_code ? ` · ${gw.area_code}` : "", " · ",
      sinceText(gw.since)),
    h("section", { class: "panel" }, h("h2", {}, t("gw.devices", { n: (gw.devices || []).length })),
      h("div", { class: "cards gw-cards", "data-testid": "gw-devices" }, (gw.devices || []).map(deviceCard))),
    h("section", { class: "panel" }, h("h2", {}, t("gw.gaps")),
      gaps.length ? simpleTable("gw-gaps", ["missing", "detected", "explained"], gaps.map((g) =>
        h("tr", { class: g.explained_by === "unexplained" ? "bad" : null },
          h("td", {}, `${g.first_missing} – ${g.last_missing}`), h("td", {}, fmtTime(g.detected_at)),
          h("td", {}, g.explained_by === "unexplained" ? t("gw.unexplained") : g.explained_by))))
        : h("p", { class: "muted" }, t("gw.noGaps"))),
    h("section", { class: "panel" }, h("h2", {}, t("gw.events")),
      events.length ? simpleTable("gw-events", ["seq", "kind", "time", "device"], events.map((e) =>
        h("tr", {}, h("td", { class: "num" }, String(e.seq)), h("td", {}, e.kind), h("td", {}, fmtTime(e.ts)),
          h("td", {}, e.data?.name || e.data?.device || "")))) : h("p", { class: "muted" }, t("gw.noEvents"))),
    h("section", { class: "panel" }, h("h2", {}, t("gw.broadcasts")),
      broadcasts.length ? simpleTable("gw-broadcasts", ["id", "state", "coverage", "time"], broadcasts.map((b) =>
        h("tr", {}, h("td", {}, h("code", {}, b.id)), h("td", {}, b.state_name || String(b.state ?? "—")),
          h("td", {}, pct(b.coverage)), h("td", {}, fmtTime(b.first_ts ?? b.updated_at)))))
        : h("p", { class: "muted" }, t("gw.noBroadcasts"))),
  ];
}

function render(root, params) {
  let alive = true;
  const id = params.id || "";
  const load = async () => {
    try {
      const gw = await api("GET", `/gateways/${encodeURIComponent(id)}`);
      if (alive) mount(root, board(gw));
    } catch (err) {
      if (alive) mount(root, h("p", {}, h("a", { href: "#/gateways" }, t("gw.back"))), errorBox(err));
    }
  };
  mount(root, h("p", { class: "notice" }, t("common.loading")));
  load();
  const off = liveReload(["gateway.status", "gateway.birth", "device.state", "event", "gateway.gaps"], load, 400,
    (d) => d.gateway === id);
  return () => {
    alive = false;
    off();
  };
}

export default { id: "gateway", navKey: "gw.title", minRole: "viewer", hidden: true, render };

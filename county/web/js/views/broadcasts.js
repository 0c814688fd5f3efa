// Broadcast history across gateways (GET /broadcasts): each township's broadcast with its state,
// coverage and per-terminal outcomes; newest first, refreshed when a broadcast report arrives.
import { api } from "../api.js";
import { fmtTime, h, mount } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { errorBox, gwLink, liveReload, pct } from "../labels.js";

addStrings({
  zh: {
    "bh.none": "还没有广播记录。",
    "bh.col.time": "开始时间",
    "bh.col.township": "乡镇",
    "bh.col.id": "广播编号",
    "bh.col.state": "状态",
    "bh.col.coverage": "覆盖率",
    "bh.col.outcomes": "终端结果",
    "bh.col.reason": "说明",
    "bh.outcome.succeeded": "成功",
    "bh.outcome.partial": "部分",
    "bh.outcome.failed": "失败",
    "bh.outcome.unreachable": "无法连接",
    "bh.outcome.pending": "等待",
  },
  en: {
    "bh.none": "No broadcast yet.",
    "bh.col.time": "Started",
    "bh.col.township": "Township",
    "bh.col.id": "Broadcast",
    "bh.col.state": "State",
    "bh.col.coverage": "Coverage",
    "bh.col.outcomes": "Terminal outcomes",
    "bh.col.reason": "Reason",
    "bh.outcome.succeeded": "succeeded",
    "bh.outcome.partial": "partial",
    "bh.outcome.failed": "failed",
    "bh.outcome.unreachable": "unreachable",
    "bh.outcome.pending": "pending",
  },
});

function outcomeSummary(outcomes) {
  const counts = {};
  for (const o of Object.values(outcomes || {})) {
    const key = ["succeeded", "partial", "failed", "unreachable"].includes(o?.outcome) ? o.outcome : "pending";
    counts[key] = (counts[key] || 0) + 1;
  }
  return Object.entries(counts).map(([k, n]) => h("span", { class: ["outcome", `oc-${k}`] }, `${t(`bh.outcome.${k}`)} ${n} `));
}

function render(root) {
  let alive = true;
  const load = async () => {
    try {
      const { broadcasts = [] } = await api("GET", "/broadcasts?limit=200");
      if (!alive) return;
      mount(root, h("h1", {}, t("nav.broadcasts")),
        broadcasts.length === 0 ? h("p", { class: "muted", "data-testid": "bh-none" }, t("bh.none"))
          : h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": "bh-table" },
            h("thead", {}, h("tr", {}, ["time", "township", "id", "state", "coverage", "outcomes", "reason"].map((c) =>
              h("th", { scope: "col" }, t(`bh.col.${c}`))))),
            h("tbody", {}, broadcasts.map((b) => h("tr", { "data-testid": `bh-${b.gateway}-${b.id}` },
              h("td", { class: "nowrap" }, fmtTime(b.first_ts ?? b.updated_at)),
              h("td", {}, gwLink(b.gateway, b.gateway)),
              h("td", {}, h("code", {}, b.id)),
              h("td", {}, b.state_name || String(b.state ?? "—")),
              h("td", { class: "num" }, pct(b.coverage)),
              h("td", {}, outcomeSummary(b.outcomes)),
              h("td", { class: "break" }, b.reason || "")))))));
    } catch (err) {
      if (alive) mount(root, errorBox(err));
    }
  };
  mount(root, h("p", { class: "notice" }, t("common.loading")));
  load();
  const off = liveReload(["event"], load, 500, (d) => String(d.kind || "").startsWith("broadcast"));
  return () => {
    alive = false;
    off();
  };
}

export default { id: "broadcasts", navKey: "nav.broadcasts", minRole: "viewer", render };

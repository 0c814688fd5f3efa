// County-wide broadcasts: the list (#/county) and one report (#/county/<id>): per township its state,
// command and terminals targeted/succeeded/failed/unreachable, and the one county coverage figure.
// Live through the SSE "county_broadcast" event, which carries the report whenever it changes.
// A CAP alert fanned out shows, per township, what its plan (预案) decided: played (then followed to its
// terminals), waiting for the duty officer, only recorded, not applicable.
import { ApiError, api, can } from "../api.js";
import { fmtTime, h, mount } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { errorBox, gwLink, liveReload, pct, statusBadge } from "../labels.js";

addStrings({
  zh: {
    "cb.none": "还没有全县广播。",
    "cb.new": "发布全县广播",
    "cb.missing": "本县中心服务尚未提供全县广播接口。",
    "cb.back": "← 全部全县广播",
    "cb.report": "全县广播报告",
    "cb.coverage": "全县覆盖率",
    "cb.state": "状态",
    "cb.created": "发布时间",
    "cb.by": "发布人",
    "cb.expires": "有效期至",
    "cb.expired": "已过期",
    "cb.text": "内容",
    "cb.townships": "乡镇",
    "cb.state.not_started": "尚未开始",
    "cb.state.in_progress": "进行中",
    "cb.state.done": "已完成",
    "cb.gws.offline": "离线（恢复后重发）",
    "cb.gws.sent": "已发送",
    "cb.gws.retrying": "重试中",
    "cb.gws.refused": "网关拒绝",
    "cb.gws.expired": "已过期",
    "cb.gws.undelivered": "未送达",
    "cb.gws.accepted": "网关已接收",
    "cb.gws.pending_approval": "等待值班员审批（未播放）",
    "cb.gws.pending_decision": "网关尚未处理",
    "cb.gws.recorded": "仅记录，不播放",
    "cb.gws.not_applicable": "不涉及本乡镇",
    "cb.gws.rejected": "值班员驳回",
    "cb.gws.approval_expired": "审批超时，未播放",
    "cb.gws.superseded": "已被更新的预警取代",
    "cb.gws.cancelled": "已取消",
    "cb.disp.broadcast": "按预案立即播放",
    "cb.disp.pending": "待审批",
    "cb.disp.recorded": "仅记录",
    "cb.disp.not_applicable": "不涉及",
    "cb.disp.failed": "处理失败",
    "cb.disp.rejected": "已驳回",
    "cb.disp.expired": "审批超时",
    "cb.disp.cancelled": "已取消",
    "cb.disp.superseded": "已被取代",
    "cb.duplicate": "网关此前已收到",
    "cb.alert": "CAP 预警",
    "cb.alertId": "预警标识",
    "cb.sender": "发布单位",
    "cb.cancelAsked": "已请求取消（{who}），由负责跟踪的县中心实例执行",
    "cb.col.not_played": "不播放",
    "cb.col.township": "乡镇",
    "cb.col.online": "网关",
    "cb.col.state": "状态",
    "cb.col.command": "指令",
    "cb.col.targeted": "目标终端",
    "cb.col.succeeded": "成功",
    "cb.col.partial": "部分",
    "cb.col.failed": "失败",
    "cb.col.unreachable": "无法连接",
    "cb.col.pending": "等待",
    "cb.col.coverage": "覆盖率",
    "cb.col.time": "发布时间",
    "cb.col.text": "内容",
    "cb.col.id": "编号",
    "cb.cmd": "发送 {n} 次",
    "cb.acked": "已确认",
    "cb.refusal": "拒绝：{r}",
    "cb.total": "全县合计",
  },
  en: {
    "cb.none": "No county broadcast yet.",
    "cb.new": "New county broadcast",
    "cb.missing": "This county service does not offer county broadcasts yet.",
    "cb.back": "← All county broadcasts",
    "cb.report": "County broadcast report",
    "cb.coverage": "County coverage",
    "cb.state": "State",
    "cb.created": "Sent at",
    "cb.by": "Sent by",
    "cb.expires": "Valid until",
    "cb.expired": "expired",
    "cb.text": "Text",
    "cb.townships": "Townships",
    "cb.state.not_started": "not started",
    "cb.state.in_progress": "in progress",
    "cb.state.done": "done",
    "cb.gws.offline": "offline (resent when back)",
    "cb.gws.sent": "sent",
    "cb.gws.retrying": "retrying",
    "cb.gws.refused": "refused by the gateway",
    "cb.gws.expired": "expired",
    "cb.gws.undelivered": "undelivered",
    "cb.gws.accepted": "accepted",
    "cb.gws.pending_approval": "waiting for the duty officer (not played)",
    "cb.gws.pending_decision": "not decided by the gateway yet",
    "cb.gws.recorded": "recorded only, not played",
    "cb.gws.not_applicable": "not applicable to this township",
    "cb.gws.rejected": "rejected by the duty officer",
    "cb.gws.approval_expired": "approval timed out, not played",
    "cb.gws.superseded": "superseded by a later alert",
    "cb.gws.cancelled": "cancelled",
    "cb.disp.broadcast": "played by the plan",
    "cb.disp.pending": "pending approval",
    "cb.disp.recorded": "recorded",
    "cb.disp.not_applicable": "not applicable",
    "cb.disp.failed": "failed",
    "cb.disp.rejected": "rejected",
    "cb.disp.expired": "approval timed out",
    "cb.disp.cancelled": "cancelled",
    "cb.disp.superseded": "superseded",
    "cb.duplicate": "already received by the gateway",
    "cb.alert": "CAP alert",
    "cb.alertId": "Alert identifier",
    "cb.sender": "Sender",
    "cb.cancelAsked": "Cancel asked ({who}); the county instance that follows it carries it out",
    "cb.col.not_played": "Not played",
    "cb.col.township": "Township",
    "cb.col.online": "Gateway",
    "cb.col.state": "State",
    "cb.col.command": "Command",
    "cb.col.targeted": "Targeted",
    "cb.col.succeeded": "Succeeded",
    "cb.col.partial": "Partial",
    "cb.col.failed": "Failed",
    "cb.col.unreachable": "Unreachable",
    "cb.col.pending": "Pending",
    "cb.col.coverage": "Coverage",
    "cb.col.time": "Sent at",
    "cb.col.text": "Text",
    "cb.col.id": "Id",
    "cb.cmd": "sent {n}×",
    "cb.acked": "acknowledged",
    "cb.refusal": "refused: {r}",
    "cb.total": "County total",
  },
});

const COUNTS = ["targeted", "succeeded", "partial", "failed", "unreachable", "pending", "not_played"];

/** A translated label for key, or the raw value when there is none. */
function label(prefix, value) {
  const key = `${prefix}.${value}`;
  const text = t(key);
  return text === key ? String(value ?? "—") : text;
}

function refusalText(refusal) {
  if (!refusal) return "";
  if (typeof refusal === "string") return refusal;
  return String(refusal.message || refusal.error || refusal.code || JSON.stringify(refusal));
}

function gatewayRow(g, names) {
  const cmd = g.command || {};
  return h("tr", { "data-testid": `cb-gw-${g.gateway}`, "data-state": g.state },
    h("th", { scope: "row" }, gwLink(g.gateway, names.get(g.gateway) || g.gateway)),
    h("td", {}, statusBadge(g.online ? "online" : "offline")),
    h("td", {}, label("cb.gws", g.state), g.broadcast_state ? ` · ${g.broadcast_state}` : "",
      g.alert ? h("div", { class: "muted", "data-testid": `cb-gw-${g.gateway}-disposition`,
        "data-disposition": g.alert.disposition ?? "" },
      label("cb.disp", g.alert.disposition), g.alert.duplicate ? ` · ${t("cb.duplicate")}` : "",
      g.alert.reason ? ` — ${g.alert.reason}` : "") : null),
    h("td", {}, t("cb.cmd", { n: cmd.attempts ?? 0 }), cmd.acked ? ` · ${t("cb.acked")}` : "",
      cmd.refusal ? h("div", { class: "bad" }, t("cb.refusal", { r: refusalText(cmd.refusal) })) : null),
    COUNTS.map((k) => h("td", { class: "num", "data-testid": `cb-gw-${g.gateway}-${k}` }, String(g.terminals?.[k] ?? 0))),
    h("td", { class: "num" }, pct(g.coverage)));
}

function report(r, names) {
  const req = r.request || {};
  const totals = r.terminals || {};
  return [
    h("p", {}, h("a", { href: "#/county" }, t("cb.back"))),
    h("h1", {}, t("cb.report"), " ", h("code", {}, r.id)),
    h("div", { class: "tiles" },
      h("div", { class: "tile", "data-testid": "cb-coverage" }, h("div", { class: "tile-label" }, t("cb.coverage")),
        h("div", { class: "tile-value" }, pct(r.coverage))),
      h("div", { class: "tile", "data-testid": "cb-state", "data-state": r.state },
        h("div", { class: "tile-label" }, t("cb.state")), h("div", { class: "tile-value" }, label("cb.state", r.state))),
      COUNTS.slice(0, 5).map((k) => h("div", { class: ["tile", k === "failed" || k === "unreachable" ? "warnish" : null],
        "data-testid": `cb-total-${k}`, "data-n": totals[k] ?? 0 },
      h("div", { class: "tile-label" }, t(`cb.col.${k}`)), h("div", { class: "tile-value" }, String(totals[k] ?? 0))))),
    h("dl", { class: "facts" },
      h("dt", {}, t("cb.created")), h("dd", {}, fmtTime(r.created_at)),
      r.created_by ? [h("dt", {}, t("cb.by")), h("dd", {}, r.created_by)] : null,
      h("dt", {}, t("cb.expires")), h("dd", {}, fmtTime(r.expires_at), r.expired ? ` (${t("cb.expired")})` : ""),
      req.alert ? [
        h("dt", {}, t("cb.alert")), h("dd", { class: "break", "data-testid": "cb-alert" },
          [req.alert.event, req.alert.severity, req.alert.headline].filter(Boolean).join(" · ")),
        h("dt", {}, t("cb.alertId")), h("dd", { class: "break" }, h("code", {}, req.alert.identifier || "")),
        h("dt", {}, t("cb.sender")), h("dd", { class: "break" }, req.alert.sender || "")]
        : [h("dt", {}, t("cb.text")), h("dd", { class: "break", "data-testid": "cb-text" },
          req.title ? `${req.title}：` : "", req.text || "")],
      r.cancel_requested_by ? [h("dt", {}, t("cb.state")),
        h("dd", { "data-testid": "cb-cancel-asked" }, t("cb.cancelAsked", { who: r.cancel_requested_by }))] : null),
    h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": "cb-gateways" },
      h("thead", {}, h("tr", {}, ["township", "online", "state", "command", ...COUNTS, "coverage"].map((c) =>
        h("th", { scope: "col" }, t(`cb.col.${c}`))))),
      h("tbody", {}, (r.gateways || []).map((g) => gatewayRow(g, names))),
      h("tfoot", {}, h("tr", {}, h("th", { scope: "row", colspan: "4" }, t("cb.total")),
        COUNTS.map((k) => h("td", { class: "num" }, String(totals[k] ?? 0))), h("td", { class: "num" }, pct(r.coverage)))))),
  ];
}

function list(broadcasts) {
  return [
    h("h1", {}, t("nav.county"), " ",
      can("operator") ? h("a", { href: "#/compose", class: "button primary", role: "button", "data-testid": "compose-open" },
        t("cb.new")) : null),
    broadcasts.length === 0 ? h("p", { class: "muted", "data-testid": "cb-none" }, t("cb.none"))
      : h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": "cb-list" },
        h("thead", {}, h("tr", {}, ["time", "id", "text", "state", "townships", "coverage"].map((c) =>
          h("th", { scope: "col" }, t(c === "townships" ? "cb.townships" : c === "state" ? "cb.state" : `cb.col.${c}`))))),
        h("tbody", {}, broadcasts.map((r) => h("tr", { "data-testid": `cb-row-${r.id}` },
          h("td", { class: "nowrap" }, fmtTime(r.created_at)),
          h("td", {}, h("a", { href: `#/county/${encodeURIComponent(r.id)}` }, r.id)),
          h("td", { class: "break" }, r.request?.alert ? `${t("cb.alert")}：${r.request.alert.headline || r.request.alert.event || ""}`
            : r.request?.text || ""),
          h("td", {}, label("cb.state", r.state)),
          h("td", { class: "num" }, String((r.gateways || []).length)),
          h("td", { class: "num" }, pct(r.coverage))))))),
  ];
}

async function gatewayNames() {
  try {
    const { gateways = [] } = await api("GET", "/gateways");
    return new Map(gateways.map((g) => [g.id, g.name || g.id]));
  } catch {
    return new Map();
  }
}

function render(root, params) {
  let alive = true;
  const id = params.id;
  const load = async () => {
    try {
      const names = await gatewayNames();
      if (id) {
        const r = await api("GET", `/county-broadcasts/${encodeURIComponent(id)}`);
        if (alive) mount(root, report(r, names));
      } else {
        const { broadcasts = [] } = await api("GET", "/county-broadcasts");
        if (alive) mount(root, list(broadcasts));
      }
    } catch (err) {
      if (!alive) return;
      const missing = err instanceof ApiError && err.status === 404 && !id;
      mount(root, id ? h("p", {}, h("a", { href: "#/county" }, t("cb.back"))) : h("h1", {}, t("nav.county")),
        missing ? h("p", { class: "notice", "data-testid": "cb-missing" }, t("cb.missing")) : errorBox(err));
    }
  };
  mount(root, h("p", { class: "notice" }, t("common.loading")));
  load();
  const off = liveReload(["county_broadcast"], load, 300, (d) => !id || d.id === id);
  return () => {
    alive = false;
    off();
  };
}

export default { id: "county", navKey: "nav.county", minRole: "viewer", render };

// Alert inbox (#/alerts): CAP alerts waiting for a duty officer's decision, first, each with what it
// would do (which villages, how many terminals, the exact announcement, class/level, tone) and the
// time left to decide; operators approve, edit the text then approve, or reject; viewers only see.
// Below, the recent decided alerts with their disposition and reason. Live via alert.received /
// alert.decided. CAP text comes from outside the gateway: it reaches the page as text only (h()).

import { h, mount, fmtTime } from "../dom.js";
import { t, addStrings, onLangChange } from "../i18n.js";
import { api, can, onEvent } from "../api.js";
import { classNode, defaultTone, errorText, inventory, toneText } from "../labels.js";

addStrings({
  zh: {
    "al.title": "预警收件箱",
    "al.pending": "待批准的预警",
    "al.none_pending": "没有待批准的预警。",
    "al.recent": "最近处理的预警",
    "al.none_recent": "还没有处理过的预警。",
    "al.sender": "发布单位",
    "al.received": "收到时间",
    "al.expires": "失效时间",
    "al.deadline": "批准期限",
    "al.left": "剩余 {time}",
    "al.overdue": "已到期",
    "al.on_timeout.play": "到期无人处理将自动播放",
    "al.on_timeout.expire": "到期无人处理将不播放",
    "al.would": "批准后将在{villages}的 {n} 个终端播放",
    "al.would_fm": "（含调频发射机）",
    "al.villages": "村",
    "al.terminals": "终端",
    "al.text": "播报内容",
    "al.no_plan": "本预警不涉及本网关的终端。",
    "al.approve": "批准播放",
    "al.edit": "修改内容后批准",
    "al.approve_edited": "按修改后的内容批准播放",
    "al.edit_cancel": "放弃修改",
    "al.reject": "拒绝",
    "al.reject_reason": "拒绝原因（可选）",
    "al.reject_confirm": "确认拒绝",
    "al.working": "正在提交……",
    "al.reason": "原因",
    "al.decided_by": "处理人",
    "al.broadcast": "查看广播 {id}",
    "al.rule": "规则",
    "al.areas": "预警区域",
    "al.status.Test": "测试",
    "al.status.Exercise": "演习",
    "al.status.Draft": "草稿",
    "al.status.System": "系统消息",
    "al.disp.broadcast": "已播发",
    "al.disp.pending": "待批准",
    "al.disp.rejected": "已拒绝",
    "al.disp.expired": "已过期",
    "al.disp.recorded": "仅记录",
    "al.disp.not_applicable": "不涉及本镇",
    "al.disp.cancelled": "已撤销",
    "al.disp.superseded": "已被更新",
    "al.disp.failed": "失败",
    "al.sev.Extreme": "特别严重",
    "al.sev.Severe": "严重",
    "al.sev.Moderate": "较重",
    "al.sev.Minor": "一般",
    "al.sev.Unknown": "严重程度未知",
    "al.colour.1": "红色预警",
    "al.colour.2": "橙色预警",
    "al.colour.3": "黄色预警",
    "al.colour.4": "蓝色预警",
  },
  en: {
    "al.title": "Alert inbox",
    "al.pending": "Waiting for approval",
    "al.none_pending": "No alerts waiting for approval.",
    "al.recent": "Recently decided",
    "al.none_recent": "No decided alerts yet.",
    "al.sender": "Sender",
    "al.received": "Received",
    "al.expires": "Expires",
    "al.deadline": "Decide by",
    "al.left": "{time} left",
    "al.overdue": "overdue",
    "al.on_timeout.play": "plays by itself if nobody decides",
    "al.on_timeout.expire": "will not play if nobody decides",
    "al.would": "If approved, plays on {n} terminals in {villages}",
    "al.would_fm": " (and the FM transmitter)",
    "al.villages": "Villages",
    "al.terminals": "Terminals",
    "al.text": "Announcement",
    "al.no_plan": "This alert touches none of this gateway’s terminals.",
    "al.approve": "Approve and play",
    "al.edit": "Edit text, then approve",
    "al.approve_edited": "Approve with this text",
    "al.edit_cancel": "Discard edit",
    "al.reject": "Reject",
    "al.reject_reason": "Reason (optional)",
    "al.reject_confirm": "Reject alert",
    "al.working": "Submitting…",
    "al.reason": "Reason",
    "al.decided_by": "Decided by",
    "al.broadcast": "Open broadcast {id}",
    "al.rule": "Rule",
    "al.areas": "Areas",
    "al.status.Test": "Test",
    "al.status.Exercise": "Exercise",
    "al.status.Draft": "Draft",
    "al.status.System": "System",
    "al.disp.broadcast": "Broadcast",
    "al.disp.pending": "Pending",
    "al.disp.rejected": "Rejected",
    "al.disp.expired": "Expired",
    "al.disp.recorded": "Recorded only",
    "al.disp.not_applicable": "Not for this township",
    "al.disp.cancelled": "Cancelled",
    "al.disp.superseded": "Superseded",
    "al.disp.failed": "Failed",
    "al.sev.Extreme": "Extreme",
    "al.sev.Severe": "Severe",
    "al.sev.Moderate": "Moderate",
    "al.sev.Minor": "Minor",
    "al.sev.Unknown": "Unknown severity",
    "al.colour.1": "Red warning",
    "al.colour.2": "Orange warning",
    "al.colour.3": "Yellow warning",
    "al.colour.4": "Blue warning",
  },
});

const LEVEL_BY_SEVERITY = { Extreme: 1, Severe: 2, Moderate: 3, Minor: 4 };
const LEVEL_BY_COLOUR = { red: 1, orange: 2, yellow: 3, blue: 4 };

/** A field of the alert record, or of its stored summary (older records keep details there). */
function field(alert, key) {
  const value = alert[key];
  if (value !== undefined && value !== null && value !== "") return value;
  return alert.summary && typeof alert.summary === "object" ? alert.summary[key] ?? null : null;
}

function levelOf(alert) {
  const level = Number(field(alert, "level"));
  if (level >= 1 && level <= 4) return level;
  const colour = String(field(alert, "colour") || "").toLowerCase();
  return LEVEL_BY_COLOUR[colour] || LEVEL_BY_SEVERITY[field(alert, "severity")] || null;
}

/** Severity in colour AND words: "红色预警 · 特别严重". */
function severityBadge(alert) {
  const level = levelOf(alert);
  const severity = field(alert, "severity") || "Unknown";
  const words = t(`al.sev.${severity}`) === `al.sev.${severity}` ? severity : t(`al.sev.${severity}`);
  return h("span", { class: ["v-badge", level ? `v-level-${level}` : "v-level-none"],
    "data-testid": `severity-${alert.id}`, "data-level": level ? String(level) : "" },
  level ? `${t(`al.colour.${level}`)} · ${words}` : words);
}

function dispositionBadge(alert) {
  const d = alert.disposition || "recorded";
  const label = t(`al.disp.${d}`) === `al.disp.${d}` ? d : t(`al.disp.${d}`);
  return h("span", { class: `v-badge v-disp v-disp-${d}`, "data-testid": `disposition-${alert.id}`,
    "data-disposition": d }, label);
}

function statusBadge(alert) {
  const status = field(alert, "status");
  if (!status || status === "Actual") return null;
  return h("span", { class: "v-badge v-class-drill" }, t(`al.status.${status}`));
}

/** Epoch seconds (number or numeric string) or ISO text → milliseconds, or NaN. */
function toMs(value) {
  if (value === null || value === undefined || value === "") return NaN;
  if (typeof value === "number" || /^\d+(\.\d+)?$/.test(String(value))) return Number(value) * 1000;
  return Date.parse(String(value));
}

function countdownText(deadlineMs) {
  const left = Math.round((deadlineMs - Date.now()) / 1000);
  if (left <= 0) return t("al.overdue");
  const hours = Math.floor(left / 3600);
  const minutes = Math.floor((left % 3600) / 60);
  const seconds = String(left % 60).padStart(2, "0");
  const time = hours ? `${hours}:${String(minutes).padStart(2, "0")}:${seconds}` : `${minutes}:${seconds}`;
  return t("al.left", { time });
}

function render(root) {
  let alive = true;
  let pending = [];
  let recent = [];
  let byId = new Map();
  let fm = [];
  let loadedOnce = false;
  const drafts = new Map(); // alert id → {mode: 'edit'|'reject', text}
  const busy = new Set();
  const status = h("p", { class: "v-error", role: "alert", "data-testid": "alerts-error" });
  status.hidden = true;
  const pendingBox = h("div", { class: "v-alerts", "data-testid": "pending-alerts" },
    h("p", { class: "v-muted" }, t("v.loading")));
  const recentBox = h("div", { class: "v-list", "data-testid": "recent-alerts" });
  const titles = {};

  function frame() {
    mount(root, h("div", { class: "v-inbox" },
      titles.main = h("h1", { class: "v-title" }, t("al.title")), status,
      h("section", { class: "v-step" },
        titles.pending = h("h2", { class: "v-step-title" }, t("al.pending")), pendingBox),
      h("section", { class: "v-step" },
        titles.recent = h("h2", { class: "v-step-title" }, t("al.recent")), recentBox)));
  }

  async function load() {
    try {
      const [waiting, all, devices] = await Promise.all([
        api("GET", "/alerts?disposition=pending&limit=100"),
        api("GET", "/alerts?limit=50"),
        byId.size ? null : api("GET", "/devices").catch(() => []),
      ]);
      if (!alive) return;
      if (devices) {
        const inv = inventory(devices);
        byId = inv.byId;
        fm = inv.transmitters.map((d) => d.id);
      }
      pending = waiting || [];
      recent = (all || []).filter((a) => a.disposition !== "pending");
      for (const id of [...drafts.keys()]) if (!pending.some((a) => a.id === id)) drafts.delete(id);
      loadedOnce = true;
      status.hidden = true;
      draw();
    } catch (err) {
      if (!alive) return;
      status.textContent = errorText(err);
      status.hidden = false;
    }
  }

  function draw() {
    // Keep what an officer is typing across redraws (live events arrive while editing).
    for (const [id, draft] of drafts) {
      const area = pendingBox.querySelector(`[data-alert-input="${CSS.escape(id)}"]`);
      if (area) draft.text = area.value;
    }
    mount(pendingBox, pending.length ? pending.map(pendingCard)
      : h("p", { class: "v-muted", "data-testid": "no-pending" }, t("al.none_pending")));
    mount(recentBox, recent.length ? recent.map(recentRow)
      : h("p", { class: "v-muted" }, t("al.none_recent")));
    tick();
  }

  function names(ids) {
    return ids.map((id) => byId.get(id)?.name || id);
  }

  function pendingCard(a) {
    const plan = a.plan || null;
    const terminals = plan ? (plan.terminals || []).filter((id) => !fm.includes(id)) : [];
    const villages = plan ? plan.villages || [] : [];
    const request = plan?.request ? plan.request : {};
    // The township FM transmitter plays only when the whole gateway area is named (alert_area.py).
    const tg = request.targets || {};
    const whole = plan ? plan.whole_gateway ?? (tg.all || (tg.area_codes || []).length > 0) : false;
    const withFm = fm.length > 0 && Boolean(whole);
    const deadline = toMs(a.approval_deadline);
    const headline = field(a, "headline");
    const event = field(a, "event");
    const sender = field(a, "sender_name") || a.sender;
    const level = levelOf(a);
    return h("article", { class: ["v-alert", level ? `v-alert-level-${level}` : null],
      "data-testid": `alert-${a.id}`, "data-alert": a.id },
      h("header", { class: "v-alert-head" },
        severityBadge(a), statusBadge(a),
        h("span", { class: "v-alert-event", "data-testid": `alert-event-${a.id}` }, event || "—"),
        Number.isFinite(deadline) ? h("span", { class: "v-countdown", "data-deadline": String(deadline),
          "data-testid": `countdown-${a.id}`, role: "timer" }, countdownText(deadline)) : null),
      headline ? h("h3", { class: "v-alert-headline", "data-testid": `alert-headline-${a.id}` },
        headline) : null,
      h("dl", { class: "v-facts v-facts-compact" },
        h("dt", {}, t("al.sender")), h("dd", { "data-testid": `alert-sender-${a.id}` }, sender || "—"),
        h("dt", {}, t("al.received")), h("dd", { "data-testid": `alert-received-${a.id}` }, fmtTime(a.received_at)),
        h("dt", {}, t("al.expires")), h("dd", { "data-testid": `alert-expires-${a.id}` },
          fmtTime(field(a, "expires"))),
        Number.isFinite(deadline) ? [h("dt", {}, t("al.deadline")), h("dd", {}, fmtTime(deadline / 1000),
          " · ", t(a.on_timeout === "play" ? "al.on_timeout.play" : "al.on_timeout.expire"))] : null,
        Array.isArray(field(a, "areas")) && field(a, "areas").length ? [h("dt", {}, t("al.areas")),
          h("dd", {}, field(a, "areas").join("；"))] : null),
      plan ? h("div", { class: "v-plan", "data-testid": `alert-plan-${a.id}` },
        h("p", { class: "v-plan-sentence" },
          t("al.would", { villages: villages.join("、") || "—", n: terminals.length }),
          withFm ? t("al.would_fm") : "", "：",
          classNode(request.class, request.severity), " ",
          request.class ? toneText(request.tone || defaultTone(request.class, request.severity)) : "",
          request.repeat ? ` · ${t("v.times", { n: request.repeat })}` : ""),
        h("dl", { class: "v-facts v-facts-compact" },
          h("dt", {}, t("al.villages")),
          h("dd", { "data-testid": `alert-villages-${a.id}` }, villages.join("、") || "—"),
          h("dt", {}, t("al.terminals")), h("dd", { "data-testid": `alert-terminals-${a.id}` },
            h("span", { class: "v-strong", "data-testid": `alert-terminal-count-${a.id}` },
              t("v.terminals", { n: terminals.length })), " ",
            h("span", { class: "v-muted v-names" }, names(terminals).join("、")))),
        h("p", { class: "v-label" }, t("al.text")),
        h("p", { class: "v-announcement", "data-testid": `alert-text-${a.id}` }, plan.text || "")) :
        h("p", { class: "v-muted" }, t("al.no_plan")),
      can("operator") ? actions(a, plan) : null);
  }

  function actions(a, plan) {
    const draft = drafts.get(a.id);
    const working = busy.has(a.id);
    const note = h("p", { class: "v-error", role: "alert", "data-testid": `alert-error-${a.id}` });
    note.hidden = true;
    const decide = async (verb, body) => {
      busy.add(a.id);
      draw();
      try {
        await api("POST", `/alerts/${encodeURIComponent(a.id)}/${verb}`, body);
        drafts.delete(a.id);
      } catch (err) {
        busy.delete(a.id);
        draw();
        const box = pendingBox.querySelector(`[data-testid="alert-error-${CSS.escape(a.id)}"]`);
        if (box) { box.textContent = errorText(err); box.hidden = false; }
        return;
      }
      busy.delete(a.id);
      await load();
    };
    let extra = null;
    if (draft && draft.mode === "edit") {
      const area = h("textarea", { class: "v-edit", "data-testid": `edit-text-${a.id}`,
        "data-alert-input": a.id, "aria-label": t("al.text") });
      area.value = draft.text;
      area.rows = 5;
      area.maxLength = 2000;
      extra = h("div", { class: "v-edit-box" }, area, h("div", { class: "v-actions" },
        h("button", { type: "button", class: "v-button v-primary", "data-testid": `approve-edited-${a.id}`,
          disabled: working, on: { click: () => decide("approve", { text: area.value }) } },
        t("al.approve_edited")),
        h("button", { type: "button", class: "v-button", "data-testid": `edit-cancel-${a.id}`,
          on: { click: () => { drafts.delete(a.id); draw(); } } }, t("al.edit_cancel"))));
    } else if (draft && draft.mode === "reject") {
      const reason = h("input", { type: "text", class: "v-reason-input",
        "data-testid": `reject-reason-${a.id}`, "data-alert-input": a.id, placeholder: t("al.reject_reason"),
        "aria-label": t("al.reject_reason") });
      reason.value = draft.text;
      reason.maxLength = 500;
      extra = h("div", { class: "v-edit-box" }, reason, h("div", { class: "v-actions" },
        h("button", { type: "button", class: "v-button v-danger-outline",
          "data-testid": `confirm-reject-${a.id}`, disabled: working, on: { click: () => {
            const why = reason.value.trim();
            decide("reject", why ? { reason: why } : {});
          } } }, t("al.reject_confirm")),
        h("button", { type: "button", class: "v-button", "data-testid": `reject-cancel-${a.id}`,
          on: { click: () => { drafts.delete(a.id); draw(); } } }, t("al.edit_cancel"))));
    }
    return h("div", { class: "v-alert-actions" },
      h("div", { class: "v-actions" },
        plan ? h("button", { type: "button", class: "v-button v-primary v-approve",
          "data-testid": `approve-${a.id}`, disabled: working, on: { click: () => decide("approve", {}) } },
        working ? t("al.working") : t("al.approve")) : null,
        plan ? h("button", { type: "button", class: "v-button", "data-testid": `edit-${a.id}`,
          disabled: working,
          on: { click: () => { drafts.set(a.id, { mode: "edit", text: plan.text || "" }); draw(); } } },
        t("al.edit")) : null,
        h("button", { type: "button", class: "v-button v-danger-outline", "data-testid": `reject-${a.id}`,
          disabled: working,
          on: { click: () => { drafts.set(a.id, { mode: "reject", text: "" }); draw(); } } },
        t("al.reject"))),
      extra, note);
  }

  function recentRow(a) {
    const bid = a.broadcast_id;
    return h("div", { class: "v-item v-recent", "data-testid": `recent-${a.id}`, "data-alert": a.id },
      h("span", { class: "v-cell" }, dispositionBadge(a)),
      h("span", { class: "v-cell" }, severityBadge(a), statusBadge(a)),
      h("span", { class: "v-cell v-strong" }, field(a, "event") || "—"),
      h("span", { class: "v-cell v-grow", "data-testid": `recent-headline-${a.id}` },
        field(a, "headline") || ""),
      h("span", { class: "v-cell v-time" }, fmtTime(a.decided_at || a.received_at)),
      a.reason ? h("span", { class: "v-cell v-reason", "data-testid": `reason-${a.id}` },
        `${t("al.reason")}：${a.reason}`) : null,
      a.decided_by ? h("span", { class: "v-cell v-muted" }, `${t("al.decided_by")}：${a.decided_by}`) : null,
      bid ? h("a", { class: "v-cell v-link", href: `#/history/${encodeURIComponent(bid)}`,
        "data-testid": `alert-broadcast-${a.id}` }, t("al.broadcast", { id: bid })) : null);
  }

  function tick() {
    for (const el of pendingBox.querySelectorAll("[data-deadline]")) {
      const text = countdownText(Number(el.dataset.deadline));
      if (el.textContent !== text) el.textContent = text;
      el.classList.toggle("v-overdue", Number(el.dataset.deadline) <= Date.now());
    }
  }

  let timer = null;
  const reload = () => {
    clearTimeout(timer);
    timer = setTimeout(load, 200);
  };
  const clock = setInterval(tick, 1000);
  const offs = [
    onEvent("alert.received", reload),
    onEvent("alert.decided", reload),
    onEvent("stream", (s) => { if (s?.connected) reload(); }),
    onLangChange(() => {
      if (!alive) return;
      titles.main.textContent = t("al.title");
      titles.pending.textContent = t("al.pending");
      titles.recent.textContent = t("al.recent");
      if (loadedOnce) draw();
    }),
  ];
  frame();
  load();
  return () => {
    alive = false;
    clearTimeout(timer);
    clearInterval(clock);
    for (const off of offs) off();
  };
}

export default { id: "alerts", navKey: "nav.alerts", minRole: "viewer", handlesLang: true, render };

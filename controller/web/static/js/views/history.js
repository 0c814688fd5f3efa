// Queue and history (#/history) and one broadcast in detail (#/history/<id>): state in colour and
// words, per-terminal outcomes, notes and the recorded audio, all kept live from the event stream
// (broadcast.state / broadcast.outcome). A reconnect of the stream re-reads, so nothing missed while
// the link was down stays stale. Operators may cancel what is waiting or playing.

import { h, mount, fmtTime } from "../dom.js";
import { t, addStrings } from "../i18n.js";
import { api, apiBlob, can, onEvent, ApiError } from "../api.js";
import {
  classNode, defaultTone, errorText, inventory, outcomeBadge, stateBadge, stateCode, toneText,
} from "../labels.js";

addStrings({
  zh: {
    "hist.title": "广播队列和记录",
    "hist.empty": "还没有广播。",
    "hist.col.state": "状态",
    "hist.col.created": "创建时间",
    "hist.col.class": "类别/级别",
    "hist.col.title": "标题",
    "hist.col.coverage": "覆盖率",
    "hist.col.by": "发起人",
    "hist.untitled": "（无标题）",
    "hist.cancel": "取消广播",
    "hist.cancelling": "正在取消……",
    "hist.cancel_confirm": "再点一次确认取消",
    "hist.detail": "广播详情",
    "hist.back": "← 返回列表",
    "hist.id": "编号",
    "hist.reason": "原因",
    "hist.text": "内容",
    "hist.tone": "提示音",
    "hist.repeat": "重复",
    "hist.targets": "范围",
    "hist.started": "开始时间",
    "hist.finished": "结束时间",
    "hist.outcomes": "各终端结果",
    "hist.no_outcomes": "还没有终端结果。",
    "hist.device": "终端",
    "hist.village": "村",
    "hist.outcome": "结果",
    "hist.late": "迟 {late} 秒加入，漏播 {missed} 秒",
    "hist.missed": "漏播 {missed} 秒",
    "hist.notes": "过程记录",
    "hist.audio": "播出录音",
    "hist.no_audio": "没有录音。",
    "hist.audio_later": "播放结束后可以收听录音。",
    "hist.audio_loading": "正在加载录音……",
    "hist.not_found": "没有这条广播：{id}",
    "hist.targets.all": "全部终端",
    "hist.targets.zones": "{zones} 号分区",
    "hist.targets.devices": "终端：{names}",
    "hist.targets.areas": "区划代码：{codes}",
    "hist.summary": "{ok}/{n} 个终端成功",
    "hist.via.api": "控制台/接口",
    "hist.via.schedule": "定时计划",
    "hist.via.county": "县级平台",
    "hist.via.cap": "预警信息",
    "hist.via.national": "应急广播平台接口",
    "hist.via.system": "系统",
  },
  en: {
    "hist.title": "Queue and history",
    "hist.empty": "No broadcasts yet.",
    "hist.col.state": "State",
    "hist.col.created": "Created",
    "hist.col.class": "Class/level",
    "hist.col.title": "Title",
    "hist.col.coverage": "Coverage",
    "hist.col.by": "By",
    "hist.untitled": "(untitled)",
    "hist.cancel": "Cancel broadcast",
    "hist.cancelling": "Cancelling…",
    "hist.cancel_confirm": "Click again to cancel",
    "hist.detail": "Broadcast",
    "hist.back": "← Back to the list",
    "hist.id": "Id",
    "hist.reason": "Reason",
    "hist.text": "Text",
    "hist.tone": "Tone",
    "hist.repeat": "Repeat",
    "hist.targets": "Targets",
    "hist.started": "Started",
    "hist.finished": "Finished",
    "hist.outcomes": "Per-terminal outcomes",
    "hist.no_outcomes": "No terminal outcomes yet.",
    "hist.device": "Terminal",
    "hist.village": "Village",
    "hist.outcome": "Outcome",
    "hist.late": "joined {late} s late, missed {missed} s",
    "hist.missed": "missed {missed} s",
    "hist.notes": "Notes",
    "hist.audio": "Recorded audio",
    "hist.no_audio": "No recording.",
    "hist.audio_later": "The recording can be heard once the broadcast has finished.",
    "hist.audio_loading": "Loading the recording…",
    "hist.not_found": "No broadcast {id}",
    "hist.targets.all": "All terminals",
    "hist.targets.zones": "zone(s) {zones}",
    "hist.targets.devices": "terminals: {names}",
    "hist.targets.areas": "area codes: {codes}",
    "hist.summary": "{ok} of {n} terminals succeeded",
    "hist.via.api": "console/API",
    "hist.via.schedule": "schedule",
    "hist.via.county": "county centre",
    "hist.via.cap": "alert feed",
    "hist.via.national": "platform interface",
    "hist.via.system": "system",
  },
});

const OPEN_STATES = new Set([0, 1, 2]);
const FINAL_STATES = new Set([3, 4, 5]);

/** Coverage 0–1 as "75 %", or "—". */
function percent(value) {
  return typeof value === "number" ? `${Math.round(value * 100)} %` : "—";
}

/** Re-run fn at most once per `ms`, trailing (bursts of events cause one read). */
function debounce(fn, ms) {
  let timer = null;
  const wrapped = () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

function targetsText(targets, byId) {
  if (!targets) return "—";
  const parts = [];
  if (targets.all) parts.push(t("hist.targets.all"));
  if (targets.zones?.length) {
    parts.push(t("hist.targets.zones", { zones: targets.zones.join("、") }));
  }
  if (targets.devices?.length) {
    parts.push(t("hist.targets.devices", {
      names: targets.devices.map((id) => byId.get(id)?.name || id).join("、"),
    }));
  }
  if (targets.area_codes?.length) {
    parts.push(t("hist.targets.areas", { codes: targets.area_codes.join("、") }));
  }
  return parts.join("；") || "—";
}

function actorText(actor) {
  if (!actor) return "—";
  const via = actor.via ? t(`hist.via.${actor.via}`) : "";
  return via ? `${actor.name} (${via})` : actor.name;
}

/** Cancel in two deliberate clicks (no blocking browser dialog): arm, then confirm within 6 s. */
function cancelButton(record, done, status) {
  let armed = null;
  const button = h("button", { type: "button", class: "v-button v-danger-outline",
    "data-testid": `cancel-${record.id}`, on: { click: async () => {
      if (!armed) {
        button.textContent = t("hist.cancel_confirm");
        button.classList.add("v-armed");
        armed = setTimeout(() => {
          armed = null;
          button.textContent = t("hist.cancel");
          button.classList.remove("v-armed");
        }, 6000);
        return;
      }
      clearTimeout(armed);
      button.disabled = true;
      button.textContent = t("hist.cancelling");
      try {
        await api("POST", `/broadcasts/${encodeURIComponent(record.id)}/cancel`);
      } catch (err) {
        if (status) { status.textContent = errorText(err); status.hidden = false; }
      }
      done();
    } } }, t("hist.cancel"));
  return button;
}

// -- list -------------------------------------------------------------------------------------------

function renderList(root) {
  let alive = true;
  const status = h("p", { class: "v-error", role: "alert", "data-testid": "history-error" });
  status.hidden = true;
  const list = h("div", { class: "v-list", "data-testid": "history-list" },
    h("p", { class: "v-muted" }, t("v.loading")));
  mount(root, h("div", { class: "v-history" }, h("h1", { class: "v-title" }, t("hist.title")), status, list));

  async function load() {
    try {
      const records = await api("GET", "/broadcasts?limit=100");
      if (!alive) return;
      status.hidden = true;
      mount(list, records.length ? [header(), records.map(row)]
        : h("p", { class: "v-muted" }, t("hist.empty")));
    } catch (err) {
      if (!alive) return;
      status.textContent = errorText(err);
      status.hidden = false;
    }
  }

  function header() {
    return h("div", { class: "v-row-head", "aria-hidden": "true" },
      h("span", {}, t("hist.col.state")), h("span", {}, t("hist.col.created")),
      h("span", {}, t("hist.col.class")), h("span", {}, t("hist.col.title")),
      h("span", {}, t("hist.col.coverage")), h("span", {}, ""));
  }

  function row(b) {
    const code = b.state_code ?? stateCode(b.state);
    const request = b.request || {};
    return h("div", { class: `v-item v-item-state-${code}`, "data-testid": `history-row-${b.id}`,
      "data-state": String(code) },
    h("span", { class: "v-cell" }, stateBadge(code, `state-${b.id}`)),
    h("span", { class: "v-cell v-time" }, fmtTime(b.created_at)),
    h("span", { class: "v-cell" }, classNode(b.class || request.class, request.severity)),
    h("span", { class: "v-cell v-title-cell" },
      h("a", { class: "v-link", href: `#/history/${encodeURIComponent(b.id)}`,
        "data-testid": `open-${b.id}` }, b.title || request.title || t("hist.untitled")),
      h("span", { class: "v-by" }, actorText(b.actor))),
    h("span", { class: "v-cell v-coverage" }, percent(b.coverage)),
    h("span", { class: "v-cell v-actions-cell" },
      can("operator") && OPEN_STATES.has(code) ? cancelButton(b, load, status) : null));
  }

  const reload = debounce(load, 250);
  const offs = [
    onEvent("broadcast.state", reload),
    onEvent("stream", (s) => { if (s?.connected) reload(); }),
  ];
  load();
  return () => {
    alive = false;
    reload.cancel();
    for (const off of offs) off();
  };
}

// -- detail -----------------------------------------------------------------------------------------

function renderDetail(root, id) {
  let alive = true;
  let record = null;
  let byId = new Map();
  let audioState = "none"; // none | loading | done
  let retry = null;
  const urls = [];
  const status = h("p", { class: "v-error", role: "alert", "data-testid": "detail-error" });
  status.hidden = true;
  const body = h("div", { class: "v-detail-body" }, h("p", { class: "v-muted" }, t("v.loading")));
  const audio = h("div", { class: "v-audio", "data-testid": "broadcast-audio" });
  mount(root, h("div", { class: "v-detail", "data-testid": "broadcast-detail" },
    h("a", { class: "v-link", href: "#/history", "data-testid": "back-to-history" }, t("hist.back")),
    h("h1", { class: "v-title" }, t("hist.detail")), status, body,
    h("section", { class: "v-step" }, h("h2", { class: "v-step-title" }, t("hist.audio")), audio)));

  async function load() {
    try {
      const [b, devices] = await Promise.all([
        api("GET", `/broadcasts/${encodeURIComponent(id)}`),
        byId.size ? null : api("GET", "/devices").catch(() => []),
      ]);
      if (!alive) return;
      if (devices) byId = inventory(devices).byId;
      record = b;
      status.hidden = true;
      draw();
    } catch (err) {
      if (!alive) return;
      const missing = err instanceof ApiError && err.status === 404;
      status.textContent = missing ? t("hist.not_found", { id }) : errorText(err);
      status.hidden = false;
    }
  }

  function draw() {
    const b = record;
    const request = b.request || {};
    const code = b.state_code ?? stateCode(b.state);
    const outcomes = b.outcomes || [];
    const ok = outcomes.filter((o) => o.outcome === "succeeded").length;
    const tone = request.tone || defaultTone(request.class, request.severity);
    mount(body,
      h("div", { class: "v-detail-head" },
        stateBadge(code, "broadcast-state"),
        h("span", { class: "v-detail-title", "data-testid": "broadcast-title" },
          b.title || request.title || t("hist.untitled")),
        can("operator") && OPEN_STATES.has(code) ? cancelButton(b, load, status) : null),
      h("dl", { class: "v-facts", "data-testid": "broadcast-summary" },
        h("dt", {}, t("hist.id")), h("dd", { class: "v-mono" }, b.id),
        h("dt", {}, t("hist.col.class")), h("dd", {}, classNode(b.class || request.class, request.severity)),
        b.reason ? [h("dt", {}, t("hist.reason")),
          h("dd", { "data-testid": "broadcast-reason" }, b.reason)] : null,
        h("dt", {}, t("hist.text")), h("dd", { class: "v-announcement", "data-testid": "broadcast-text" },
          request.text || (request.audio_id ? `🎙 ${request.audio_id}` : "—")),
        h("dt", {}, t("hist.tone")), h("dd", {}, toneText(tone)),
        h("dt", {}, t("hist.repeat")), h("dd", {}, t("v.times", { n: request.repeat || 1 })),
        h("dt", {}, t("hist.targets")), h("dd", {}, targetsText(request.targets, byId)),
        h("dt", {}, t("hist.col.by")), h("dd", {}, actorText(b.actor)),
        h("dt", {}, t("hist.col.created")), h("dd", {}, fmtTime(b.created_at)),
        h("dt", {}, t("hist.started")), h("dd", {}, fmtTime(b.started_at)),
        h("dt", {}, t("hist.finished")), h("dd", {}, fmtTime(b.finished_at)),
        h("dt", {}, t("hist.col.coverage")), h("dd", { "data-testid": "broadcast-coverage" },
          percent(b.coverage),
          outcomes.length ? ` · ${t("hist.summary", { ok, n: outcomes.length })}` : "")),
      h("section", { class: "v-step" }, h("h2", { class: "v-step-title" }, t("hist.outcomes")),
        outcomes.length ? h("div", { class: "v-list v-outcomes", "data-testid": "outcomes" },
          outcomes.map(outcomeRow))
          : h("p", { class: "v-muted", "data-testid": "outcomes-empty" }, t("hist.no_outcomes"))),
      b.notes?.length ? h("section", { class: "v-step" },
        h("h2", { class: "v-step-title" }, t("hist.notes")),
        h("ul", { class: "v-notes", "data-testid": "notes" },
          b.notes.map((n) => h("li", {}, h("span", { class: "v-time" }, fmtTime(n.ts)), " ", n.text))))
        : null);
    drawAudio(code);
  }

  function outcomeRow(o) {
    const dev = byId.get(o.device_id) || {};
    return h("div", { class: `v-item v-outcome-${o.outcome}`, "data-testid": `outcome-${o.device_id}`,
      "data-outcome": o.outcome },
    h("span", { class: "v-cell" }, outcomeBadge(o.outcome)),
    h("span", { class: "v-cell v-strong" }, dev.name || o.device_id),
    h("span", { class: "v-cell v-muted" }, dev.village || ""),
    h("span", { class: "v-cell v-mono v-muted" }, o.device_id),
    h("span", { class: "v-cell v-reason" }, lateNote(o), o.reason || ""));
  }

  // What the evidence says the terminal missed (controller/broadcast/evidence.py): said before the reason.
  function lateNote(o) {
    const missed = Number(o.missed_s || 0);
    if (o.outcome === "pending" || o.outcome === "unreachable" || (!o.joined_late && missed < 0.5)) return null;
    const text = o.joined_late && o.joined_at_s != null
      ? t("hist.late", { late: Number(o.joined_at_s).toFixed(1), missed: missed.toFixed(1) })
      : t("hist.missed", { missed: missed.toFixed(1) });
    return h("span", { class: "v-late", "data-testid": `late-${o.device_id}` }, text, " ");
  }

  function drawAudio(code) {
    if (!FINAL_STATES.has(code)) {
      mount(audio, h("p", { class: "v-muted" }, t("hist.audio_later")));
      return;
    }
    if (audioState !== "none") return;
    audioState = "loading";
    mount(audio, h("p", { class: "v-muted" }, t("hist.audio_loading")));
    fetchAudio(0);
  }

  // The evidence file is closed as the broadcast ends; a 404 right at that moment is retried twice.
  function fetchAudio(attempt) {
    apiBlob("GET", `/broadcasts/${encodeURIComponent(id)}/audio`).then((blob) => {
      if (!alive) return;
      const url = URL.createObjectURL(blob);
      urls.push(url);
      const player = h("audio", { src: url, controls: true, "data-testid": "recording" });
      player.preload = "metadata";
      mount(audio, player);
      audioState = "done";
    }).catch((err) => {
      if (!alive) return;
      const missing = err instanceof ApiError && err.status === 404;
      if (missing && attempt < 2) {
        retry = setTimeout(() => fetchAudio(attempt + 1), 1500);
        return;
      }
      audioState = "done";
      mount(audio, h("p", { class: "v-muted", "data-testid": "no-recording" },
        missing ? t("hist.no_audio") : errorText(err)));
    });
  }

  // Outcomes change the record in place at once; a state change re-reads it (coverage, times, notes).
  const reload = debounce(load, 200);
  const offs = [
    onEvent("broadcast.state", (ev) => {
      if (!ev || ev.id !== id || !record) return;
      record = { ...record, state_code: ev.state, state: ev.name || record.state,
        reason: ev.reason ?? record.reason };
      draw();
      reload();
    }),
    onEvent("broadcast.outcome", (ev) => {
      if (!ev || ev.id !== id || !record) return;
      const outcomes = (record.outcomes || []).filter((o) => o.device_id !== ev.device);
      const old = (record.outcomes || []).findIndex((o) => o.device_id === ev.device);
      const next = { device_id: ev.device, outcome: ev.outcome, reason: ev.reason || "",
        joined_late: ev.joined_late, missed_s: ev.missed_s, audible_s: ev.audible_s, joined_at_s: ev.joined_at_s };
      if (old >= 0) outcomes.splice(old, 0, next); else outcomes.push(next);
      record = { ...record, outcomes };
      draw();
    }),
    onEvent("stream", (s) => { if (s?.connected) reload(); }),
  ];
  load();
  return () => {
    alive = false;
    reload.cancel();
    clearTimeout(retry);
    for (const off of offs) off();
    for (const url of urls) URL.revokeObjectURL(url);
  };
}

function render(root, params) {
  const id = params?.id;
  return id ? renderDetail(root, id) : renderList(root);
}

export default { id: "history", navKey: "nav.history", minRole: "viewer", render };

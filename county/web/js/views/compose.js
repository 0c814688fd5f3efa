// Compose a county-wide broadcast (operators): pick townships and/or type area codes, class, level,
// tone, repeat and text; then a confirm step that says exactly what will be sent to whom; only then
// POST /county-broadcasts with confirm: true, and open its report. The draft survives a language
// switch and going back from the confirm step. Or paste a CAP alert: it goes to the townships its area
// codes concern (and those picked) as a signed `alert` command, and each township's plan (预案) decides
// whether it plays at once, waits for the duty officer or is only recorded.
import { api } from "../api.js";
import { h, mount } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { errorBox, gwName, statusBadge } from "../labels.js";

addStrings({
  zh: {
    "cp.townships": "选择乡镇",
    "cp.noGateways": "还没有已知的乡镇网关。",
    "cp.areas": "或输入行政区划代码（每行一个或用逗号分隔）",
    "cp.areasShort": "区划代码",
    "cp.areasNote": "区划代码所属的乡镇网关由县中心确定，一并发送。",
    "cp.class": "类别",
    "cp.class.emergency": "应急广播",
    "cp.class.drill": "演练",
    "cp.class.daily": "日常广播",
    "cp.severity": "预警级别",
    "cp.severity.none": "不指定",
    "cp.severity.1": "一级 · 红色（特别重大）",
    "cp.severity.2": "二级 · 橙色（重大）",
    "cp.severity.3": "三级 · 黄色（较大）",
    "cp.severity.4": "四级 · 蓝色（一般）",
    "cp.tone": "提示音",
    "cp.tone.auto": "由网关按级别选择",
    "cp.tone.siren": "警笛",
    "cp.tone.chime": "双音提示音",
    "cp.tone.air_defence_warning": "防空预先警报",
    "cp.tone.air_raid": "防空空袭警报",
    "cp.tone.all_clear": "防空解除警报",
    "cp.tone.none": "无提示音",
    "cp.repeat": "播放遍数（1–10）",
    "cp.title": "标题（可选）",
    "cp.text": "播报内容",
    "cp.review": "检查并确认…",
    "cp.confirmTitle": "请确认将要发送的全县广播",
    "cp.sentence": "将向 {n} 个乡镇网关发送签名的广播指令：",
    "cp.offlineNote": "其中 {n} 个网关当前离线，将在其恢复后重发（广播有效期内）。",
    "cp.send": "确认发送",
    "cp.back": "返回修改",
    "cp.sending": "正在发送…",
    "cp.err.targets": "请至少选择一个乡镇或输入一个区划代码。",
    "cp.err.text": "请输入播报内容。",
    "cp.err.area": "区划代码必须是 6 到 12 位数字：{code}",
    "cp.err.repeat": "播放遍数必须是 1 到 10。",
    "cp.mode": "发布方式",
    "cp.mode.text": "文字广播",
    "cp.mode.cap": "转发 CAP 预警",
    "cp.cap": "CAP 预警文档（粘贴 XML）",
    "cp.capNote": "县中心按预警中的行政区划代码确定涉及的乡镇（也可另行勾选）。各乡镇网关按本乡镇预案决定：立即播放、等待值班员审批或仅记录；报告中逐乡镇显示。",
    "cp.capSentence": "将向 {n} 个乡镇网关（所选乡镇及预警区划代码涉及的乡镇）发送签名的 CAP 预警指令，由各乡镇预案决定是否播放：",
    "cp.capAreas": "预警区划代码",
    "cp.capHeadline": "预警标题",
    "cp.capId": "预警标识",
    "cp.capSeverity": "严重程度",
    "cp.capDoc": "预警文档",
    "cp.err.cap": "请粘贴 CAP 预警文档（XML）。",
    "cp.checking": "县中心正在检查预警文档…",
  },
  en: {
    "cp.townships": "Townships",
    "cp.noGateways": "No township gateway is known yet.",
    "cp.areas": "Or area codes (one per line or comma-separated)",
    "cp.areasShort": "Area codes",
    "cp.areasNote": "The county centre finds the gateways of these area codes and sends to them too.",
    "cp.class": "Class",
    "cp.class.emergency": "Emergency",
    "cp.class.drill": "Drill",
    "cp.class.daily": "Daily",
    "cp.severity": "Level",
    "cp.severity.none": "Not set",
    "cp.severity.1": "Level 1 · Red (extremely serious)",
    "cp.severity.2": "Level 2 · Orange (serious)",
    "cp.severity.3": "Level 3 · Yellow (major)",
    "cp.severity.4": "Level 4 · Blue (general)",
    "cp.tone": "Tone",
    "cp.tone.auto": "Gateway's default for the level",
    "cp.tone.siren": "Siren",
    "cp.tone.chime": "Two-tone chime",
    "cp.tone.air_defence_warning": "Air-defence advance warning",
    "cp.tone.air_raid": "Air-raid warning",
    "cp.tone.all_clear": "All clear",
    "cp.tone.none": "No tone",
    "cp.repeat": "Repeat (1–10)",
    "cp.title": "Title (optional)",
    "cp.text": "Text to speak",
    "cp.review": "Review and confirm…",
    "cp.confirmTitle": "Confirm the county broadcast",
    "cp.sentence": "A signed broadcast command goes to {n} township gateways:",
    "cp.offlineNote": "{n} of them are offline now; they get it when they come back (while it is valid).",
    "cp.send": "Send now",
    "cp.back": "Back to edit",
    "cp.sending": "Sending…",
    "cp.err.targets": "Pick at least one township or type one area code.",
    "cp.err.text": "Enter the text to speak.",
    "cp.err.area": "An area code is 6 to 12 digits: {code}",
    "cp.err.repeat": "Repeat must be 1 to 10.",
    "cp.mode": "What to send",
    "cp.mode.text": "Text broadcast",
    "cp.mode.cap": "Relay a CAP alert",
    "cp.cap": "CAP alert document (paste the XML)",
    "cp.capNote": "The county centre finds the townships the alert's area codes concern (you may pick more). Each township's plan decides: play at once, wait for the duty officer, or record only; the report shows it per township.",
    "cp.capSentence": "A signed CAP alert command goes to {n} township gateways (those picked and those the alert's area codes concern); each township's plan decides whether it plays:",
    "cp.capAreas": "Alert area codes",
    "cp.capHeadline": "Headline",
    "cp.capId": "Alert identifier",
    "cp.capSeverity": "Severity",
    "cp.capDoc": "Document",
    "cp.err.cap": "Paste the CAP alert document (XML).",
    "cp.checking": "The county centre is checking the document…",
  },
});

const CLASSES = ["emergency", "drill", "daily"];
const TONES = ["auto", "siren", "chime", "air_defence_warning", "air_raid", "all_clear", "none"];

// The draft outlives a re-render (language switch, back from confirm); cleared after a send.
let draft = freshDraft();

function freshDraft() {
  return { mode: "text", cap: "", gateways: [], areas: "", cls: "emergency", severity: "none", tone: "auto", repeat: "2",
    title: "", text: "" };
}

/** "340621105000, 340621106000\n…" → ["340621105000", "340621106000"]. */
export function parseAreas(text) {
  return String(text || "").split(/[\s,，;；]+/).map((s) => s.trim()).filter(Boolean);
}

/** The request body from the draft, or throws Error(message) naming what is wrong. */
function requestBody() {
  const areas = parseAreas(draft.areas);
  const bad = areas.find((a) => !/^\d{6,12}$/.test(a));
  if (bad) throw new Error(t("cp.err.area", { code: bad }));
  if (draft.mode === "cap") {
    if (!draft.cap.trim()) throw new Error(t("cp.err.cap"));
    return { alert: draft.cap, targets: { gateways: [...draft.gateways], area_codes: areas }, confirm: true };
  }
  if (!draft.gateways.length && !areas.length) throw new Error(t("cp.err.targets"));
  if (!draft.text.trim()) throw new Error(t("cp.err.text"));
  const repeat = Number(draft.repeat);
  if (!Number.isInteger(repeat) || repeat < 1 || repeat > 10) throw new Error(t("cp.err.repeat"));
  return {
    targets: { gateways: [...draft.gateways], area_codes: areas },
    class: draft.cls,
    // a level belongs to emergencies only (the gateways refuse it on a drill or a daily broadcast)
    severity: draft.cls !== "emergency" || draft.severity === "none" ? null : Number(draft.severity),
    title: draft.title.trim(),
    text: draft.text.trim(),
    tone: draft.tone === "auto" ? null : draft.tone,
    repeat,
    expires_at: null,
    confirm: true,
  };
}

function field(labelKey, control, testid) {
  return h("label", { class: "field", "data-testid": testid }, h("span", { class: "field-label" }, t(labelKey)), control);
}

function select(name, options, value, prefix) {
  return h("select", { name, "data-testid": `compose-${name}`, on: { change: (e) => { draft[name] = e.target.value; } } },
    options.map((o) => h("option", { value: o, selected: String(value) === String(o) }, t(`${prefix}.${o}`))));
}

function form(root, gateways, problem) {
  const picks = gateways.length ? h("div", { class: "checks", "data-testid": "compose-townships" }, gateways.map((g) =>
    h("label", { class: "check", "data-testid": `pick-${g.id}` },
      h("input", { type: "checkbox", value: g.id, checked: draft.gateways.includes(g.id), on: { change: (e) => {
        draft.gateways = e.target.checked ? [...new Set([...draft.gateways, g.id])]
          : draft.gateways.filter((x) => x !== g.id);
      } } }),
      " ", gwName(g), " ", h("code", {}, g.id), " ", statusBadge(g.status))))
    : h("p", { class: "muted" }, t("cp.noGateways"));
  const input = (name, attrs = {}) => h("input", { name, value: draft[name], "data-testid": `compose-${name}`, ...attrs,
    on: { input: (e) => { draft[name] = e.target.value; } } });
  const textarea = (name, rows) => h("textarea", { name, rows, "data-testid": `compose-${name}`, value: draft[name],
    on: { input: (e) => { draft[name] = e.target.value; } } });
  const error = h("p", { class: "notice error", role: "alert", "data-testid": "compose-error", hidden: !problem }, problem || "");
  const modes = h("fieldset", { class: "row", "data-testid": "compose-mode" }, h("legend", {}, t("cp.mode")),
    ["text", "cap"].map((m) => h("label", { class: "check" },
      h("input", { type: "radio", name: "mode", value: m, checked: draft.mode === m, "data-testid": `compose-mode-${m}`,
        on: { change: () => { draft.mode = m; form(root, gateways); } } }), " ", t(`cp.mode.${m}`))));
  const what = draft.mode === "cap" ? [
    field("cp.cap", h("textarea", { name: "cap", rows: 12, spellcheck: "false", class: "mono", "data-testid": "compose-cap",
      value: draft.cap, on: { input: (e) => { draft.cap = e.target.value; } } })),
    h("p", { class: "muted" }, t("cp.capNote")),
  ] : [
    h("div", { class: "row" },
      field("cp.class", select("cls", CLASSES, draft.cls, "cp.class")),
      field("cp.severity", select("severity", ["none", "1", "2", "3", "4"], draft.severity, "cp.severity")),
      field("cp.tone", select("tone", TONES, draft.tone, "cp.tone")),
      field("cp.repeat", input("repeat", { type: "number", min: "1", max: "10" }))),
    field("cp.title", input("title", { maxlength: "200" })),
    field("cp.text", textarea("text", 5)),
  ];
  mount(root,
    h("h1", {}, t("nav.compose")),
    h("form", { class: "compose", "data-testid": "compose-form", novalidate: "", on: { submit: (e) => {
      e.preventDefault();
      let body;
      try {
        body = requestBody();
      } catch (err) {
        mount(error, err.message);
        error.hidden = false;
        return;
      }
      if (!body.alert) {
        confirmStep(root, gateways, body);
        return;
      }
      // a CAP document is read by the county centre itself: it says which townships it concerns
      mount(error, t("cp.checking"));
      error.hidden = false;
      api("POST", "/county-broadcasts/preview", body).then((plan) => confirmStep(root, gateways, body, plan))
        .catch((err) => {
          mount(error, err.message);
          error.hidden = false;
        });
    } } },
    modes,
    h("fieldset", {}, h("legend", {}, t("cp.townships")), picks),
    field("cp.areas", textarea("areas", 2)),
    what,
    error,
    h("button", { type: "submit", class: "primary big", "data-testid": "compose-review" }, t("cp.review"))));
}

function confirmStep(root, gateways, body, plan) {
  const byId = new Map(gateways.map((g) => [g.id, g]));
  // for a CAP alert: every township the county will send it to (picked, or concerned by its area codes)
  const picked = (plan ? plan.gateways.map((p) => p.gateway) : body.targets.gateways).map((id) => byId.get(id) || { id });
  const offline = picked.filter((g) => g.status === "offline");
  const status = h("div", { "data-testid": "compose-status" });
  const send = h("button", { type: "button", class: "primary big", "data-testid": "compose-send", on: { click: async () => {
    send.disabled = true;
    mount(status, h("p", { class: "notice" }, t("cp.sending")));
    try {
      const report = await api("POST", "/county-broadcasts", body);
      draft = freshDraft();
      location.hash = `#/county/${encodeURIComponent(report.id)}`;
    } catch (err) {
      mount(status, errorBox(err));
      send.disabled = false;
    }
  } } }, t("cp.send"));
  const cap = plan ? plan.request.alert : null;
  const sentence = cap ? t("cp.capSentence", { n: picked.length }) : t("cp.sentence", { n: picked.length });
  const details = cap ? [
    h("dt", {}, t("cp.capHeadline")), h("dd", { class: "break", "data-testid": "confirm-cap-headline" },
      [cap.event, cap.severity, cap.headline].filter(Boolean).join(" · ")),
    h("dt", {}, t("cp.capId")), h("dd", { class: "break" }, h("code", { "data-testid": "confirm-cap-id" }, cap.identifier)),
    h("dt", {}, t("cp.capAreas")), h("dd", { "data-testid": "confirm-cap-areas" }, (cap.area_codes || []).join(", ") || "—"),
    h("dt", {}, t("cp.capDoc")), h("dd", {}, h("pre", { class: "break mono", "data-testid": "confirm-cap-doc" },
      body.alert.length > 4000 ? `${body.alert.slice(0, 4000)}…` : body.alert)),
  ] : [
    h("dt", {}, t("cp.class")), h("dd", { "data-testid": "confirm-class" }, t(`cp.class.${body.class}`)),
    h("dt", {}, t("cp.severity")), h("dd", {}, t(`cp.severity.${body.severity ?? "none"}`)),
    h("dt", {}, t("cp.tone")), h("dd", {}, t(`cp.tone.${body.tone ?? "auto"}`)),
    h("dt", {}, t("cp.repeat")), h("dd", { "data-testid": "confirm-repeat" }, String(body.repeat)),
    body.title ? [h("dt", {}, t("cp.title")), h("dd", { "data-testid": "confirm-title" }, body.title)] : null,
    h("dt", {}, t("cp.text")), h("dd", { class: "break", "data-testid": "confirm-text" }, body.text),
  ];
  mount(root,
    h("h1", {}, t("cp.confirmTitle")),
    h("section", { class: "confirm", "data-testid": "compose-confirm" },
      h("p", { class: "confirm-sentence" }, sentence),
      picked.length ? h("ul", { "data-testid": "confirm-townships" }, picked.map((g) =>
        h("li", { "data-testid": `confirm-gw-${g.id}` }, gwName(g), " ", h("code", {}, g.id), " ",
          statusBadge(g.status)))) : null,
      offline.length ? h("p", { class: "notice", "data-testid": "confirm-offline" }, t("cp.offlineNote", { n: offline.length }))
        : null,
      h("dl", { class: "facts" },
        body.targets.area_codes.length ? [h("dt", {}, t("cp.areasShort")),
          h("dd", {}, h("span", { "data-testid": "confirm-areas" }, body.targets.area_codes.join(", ")),
            h("div", { class: "muted" }, t("cp.areasNote")))] : null,
        details),
      h("div", { class: "actions" },
        h("button", { type: "button", "data-testid": "compose-back", on: { click: () => form(root, gateways) } },
          t("cp.back")),
        send),
      status));
  root.focus();
}

function render(root) {
  let alive = true;
  mount(root, h("p", { class: "notice" }, t("common.loading")));
  api("GET", "/gateways").then(({ gateways = [] }) => {
    if (!alive) return;
    draft.gateways = draft.gateways.filter((id) => gateways.some((g) => g.id === id));
    form(root, gateways);
  }).catch((err) => {
    if (alive) mount(root, errorBox(err));
  });
  return () => {
    alive = false;
  };
}

export default { id: "compose", navKey: "nav.compose", minRole: "operator", render };

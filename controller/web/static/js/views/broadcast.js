// One-key emergency broadcast (#/broadcast, operator+): template or free text, class and level,
// tone, repeat, targets, speech preview, then a confirmation that says in plain words what will play
// where before anything is sent. Few clicks on the emergency path: template → (all terminals) →
// 检查并播放 → 确认播放.
//
// Everything shown goes through h()/textContent: template texts, device and village names are data.
// The labels it shares with the other views (states, levels, tones, classes) live in ../labels.js.

import { h, mount } from "../dom.js";
import { t, addStrings, onLangChange } from "../i18n.js";
import { api, apiBlob } from "../api.js";
import {
  CLASSES, LEVELS, TONES, classNode, classText, defaultTone, errorText, inventory, levelText, toneText,
} from "../labels.js";

addStrings({
  zh: {
    "bc.title": "紧急广播",
    "bc.step.template": "1. 选择模板",
    "bc.step.content": "2. 播放内容",
    "bc.step.targets": "3. 播放范围",
    "bc.free": "自由输入",
    "bc.no_templates": "没有可用的模板，请直接输入文字。",
    "bc.templates_failed": "模板无法加载：{message}",
    "bc.class": "类别",
    "bc.level": "级别",
    "bc.tone": "提示音",
    "bc.repeat": "重复次数",
    "bc.title_field": "标题（可选）",
    "bc.text": "播放文字",
    "bc.text_placeholder": "请输入要播放的内容",
    "bc.language": "朗读语言",
    "bc.lang.zh": "普通话",
    "bc.lang.en": "英语",
    "bc.preview": "试听",
    "bc.previewing": "正在合成……",
    "bc.preview_ready": "试听音频已生成",
    "bc.target.all": "全部终端",
    "bc.target.villages": "按村",
    "bc.target.zones": "按分区",
    "bc.target.devices": "指定终端",
    "bc.zone": "{n} 号分区",
    "bc.map": "终端位置图（点按选择）",
    "bc.review": "检查并播放",
    "bc.confirm.title": "请确认：将要播放的内容",
    "bc.confirm.sentence":
      "将在{where}的 {n} 个终端{fm}播放{what}，先放{tone}，重复 {repeat} 次。",
    "bc.confirm.with_fm": "和调频发射机",
    "bc.confirm.where_all": "全镇",
    "bc.confirm.class": "类别和级别",
    "bc.confirm.tone": "提示音",
    "bc.confirm.repeat": "重复",
    "bc.confirm.text": "内容",
    "bc.confirm.targets": "范围",
    "bc.confirm.terminals": "终端",
    "bc.confirm.play": "确认播放",
    "bc.confirm.back": "返回修改",
    "bc.sending": "正在提交……",
    "bc.need_text": "请输入播放文字或选择模板。",
    "bc.need_targets": "请至少选择一个播放范围。",
    "bc.zones_reach": "{zones} 号分区",
  },
  en: {
    "bc.title": "Emergency broadcast",
    "bc.step.template": "1. Template",
    "bc.step.content": "2. What to play",
    "bc.step.targets": "3. Where",
    "bc.free": "Free text",
    "bc.no_templates": "No templates configured; type the text.",
    "bc.templates_failed": "Templates could not be loaded: {message}",
    "bc.class": "Class",
    "bc.level": "Level",
    "bc.tone": "Attention tone",
    "bc.repeat": "Repeat",
    "bc.title_field": "Title (optional)",
    "bc.text": "Text to speak",
    "bc.text_placeholder": "Type the announcement",
    "bc.language": "Speech language",
    "bc.lang.zh": "Mandarin",
    "bc.lang.en": "English",
    "bc.preview": "Preview",
    "bc.previewing": "Synthesising…",
    "bc.preview_ready": "Preview ready",
    "bc.target.all": "All terminals",
    "bc.target.villages": "Villages",
    "bc.target.zones": "Zones",
    "bc.target.devices": "Terminals",
    "bc.zone": "Zone {n}",
    "bc.map": "Terminal map (tap to select)",
    "bc.review": "Review and play",
    "bc.confirm.title": "Please confirm what will play",
    "bc.confirm.sentence":
      "{what} will play on {n} terminals{fm} in {where}: {tone} first, repeated {repeat}×.",
    "bc.confirm.with_fm": " and the FM transmitter",
    "bc.confirm.where_all": "the whole township",
    "bc.confirm.class": "Class and level",
    "bc.confirm.tone": "Tone",
    "bc.confirm.repeat": "Repeat",
    "bc.confirm.text": "Text",
    "bc.confirm.targets": "Targets",
    "bc.confirm.terminals": "Terminals",
    "bc.confirm.play": "Play now",
    "bc.confirm.back": "Back",
    "bc.sending": "Submitting…",
    "bc.need_text": "Type the text to speak or pick a template.",
    "bc.need_targets": "Choose at least one target.",
    "bc.zones_reach": "zone(s) {zones}",
  },
});

// -- the view -----------------------------------------------------------------------------------------

function set(el, props) {
  Object.assign(el, props);
  return el;
}

function section(titleKey, ...body) {
  return h("section", { class: "v-step" }, h("h2", { class: "v-step-title" }, t(titleKey)), ...body);
}

function render(root) {
  const urls = [];
  let alive = true;
  const form = {
    template: null, cls: "emergency", severity: 1, tone: "", repeat: 2, title: "", text: "", language: "zh",
    mode: "all", villages: new Set(), zones: new Set(), devices: new Set(),
  };
  let templates = [];
  let templatesError = null;
  let inv = inventory([]);
  let loaded = false;
  let previewUrl = null; // the last preview, kept across a redraw (language switch)
  let confirming = false;

  mount(root, h("p", { class: "v-muted" }, t("v.loading")));

  Promise.all([
    api("GET", "/templates").catch((err) => { templatesError = err; return []; }),
    api("GET", "/devices"),
  ]).then(([tpls, devices]) => {
    if (!alive) return;
    templates = Array.isArray(tpls) ? tpls : [];
    inv = inventory(devices || []);
    loaded = true;
    draw();
  }).catch((err) => {
    if (alive) mount(root, h("p", { class: "v-error", role: "alert" }, errorText(err)));
  });

  // Nodes that are rebuilt on change (the rest of the form keeps focus and caret).
  const slots = {};

  function draw() {
    const formPane = h("div", { class: "v-broadcast-form", "data-testid": "broadcast-form" },
      h("h1", { class: "v-title" }, t("bc.title")),
      section("bc.step.template", templateList()),
      section("bc.step.content", contentFields()),
      section("bc.step.targets", targetFields()),
      slots.error = h("p", { class: "v-error", role: "alert", "data-testid": "broadcast-error" }),
      h("div", { class: "v-actions v-actions-sticky" },
        h("button", { type: "button", class: "v-big-button", "data-testid": "broadcast-review",
          on: { click: review } }, t("bc.review"))));
    slots.error.hidden = true;
    slots.confirm = h("div", { class: "v-confirm-pane" });
    slots.confirm.hidden = true;
    slots.form = formPane;
    mount(root, h("div", { class: "v-broadcast" }, formPane, slots.confirm));
    syncTemplates();
    syncContent();
    syncTargets();
    if (confirming) review();
  }

  function templateList() {
    if (templatesError) {
      return h("p", { class: "v-muted" }, t("bc.templates_failed", { message: templatesError.message }));
    }
    const buttons = templates.map((tpl) => h("button", {
      type: "button", class: "v-template", "data-testid": `template-${tpl.id}`, "data-template": tpl.id,
      on: { click: () => pickTemplate(tpl) },
    }, h("span", { class: "v-template-title" }, tpl.title || tpl.id),
    classNode(tpl.class, tpl.severity)));
    buttons.push(h("button", {
      type: "button", class: "v-template v-template-free", "data-testid": "template-free",
      "data-template": "",
      on: { click: () => pickTemplate(null) },
    }, h("span", { class: "v-template-title" }, t("bc.free"))));
    slots.templates = h("div", { class: "v-templates" }, buttons);
    return [templates.length ? null : h("p", { class: "v-muted" }, t("bc.no_templates")), slots.templates];
  }

  function pickTemplate(tpl) {
    form.template = tpl ? tpl.id : null;
    if (tpl) {
      form.cls = tpl.class || "emergency";
      form.severity = tpl.severity || (form.cls === "emergency" ? 1 : null);
      form.tone = tpl.tone || "";
      form.repeat = tpl.repeat || 1;
      form.title = tpl.title || "";
      form.text = tpl.text || "";
      form.language = tpl.language || "zh";
    } else {
      form.title = "";
      form.text = "";
      form.tone = "";
    }
    syncTemplates();
    syncContent();
    if (!tpl) slots.text.focus();
  }

  function syncTemplates() {
    for (const b of slots.templates.children) {
      b.setAttribute("aria-pressed", String(b.dataset.template === (form.template ?? "")));
    }
  }

  function contentFields() {
    slots.classes = h("div", { class: "v-choices", role: "radiogroup", "aria-label": t("bc.class") },
      CLASSES.map((cls) => h("button", {
        type: "button", class: `v-choice v-class-${cls}`, "data-testid": `class-${cls}`, role: "radio",
        on: { click: () => {
          form.cls = cls;
          if (cls === "emergency" && !form.severity) form.severity = 1;
          syncContent();
        } },
      }, classText(cls))));
    slots.levels = h("div", { class: "v-choices v-levels", role: "radiogroup", "aria-label": t("bc.level") },
      LEVELS.map((level) => h("button", {
        type: "button", class: `v-choice v-level-${level}`, "data-testid": `level-${level}`, role: "radio",
        on: { click: () => { form.severity = level; syncContent(); } },
      }, levelText(level))));
    slots.tone = h("select", { id: "bc-tone", "data-testid": "tone-select",
      on: { change: (e) => { form.tone = e.target.value; } } });
    slots.repeat = set(h("input", { id: "bc-repeat", type: "number", "data-testid": "repeat-input",
      on: { input: (e) => { form.repeat = Number(e.target.value) || 1; } } }), { min: 1, max: 10, step: 1 });
    slots.title = set(h("input", { id: "bc-title", type: "text", "data-testid": "title-input",
      on: { input: (e) => { form.title = e.target.value; } } }), { maxLength: 200 });
    slots.text = set(h("textarea", { id: "bc-text", "data-testid": "broadcast-text",
      placeholder: t("bc.text_placeholder"), on: { input: (e) => { form.text = e.target.value; } } }),
    { maxLength: 2000, rows: 5 });
    slots.language = h("select", { id: "bc-language", "data-testid": "language-select",
      on: { change: (e) => { form.language = e.target.value; } } },
    h("option", { value: "zh" }, t("bc.lang.zh")), h("option", { value: "en" }, t("bc.lang.en")));
    slots.preview = h("div", { class: "v-preview", "data-testid": "preview-slot", "aria-live": "polite" },
      previewUrl ? previewPlayer(previewUrl) : null);
    slots.levelRow = h("div", { class: "v-field" },
      h("span", { class: "v-label" }, t("bc.level")), slots.levels);
    return [
      h("div", { class: "v-field" }, h("span", { class: "v-label" }, t("bc.class")), slots.classes),
      slots.levelRow,
      h("div", { class: "v-row" },
        h("label", { class: "v-field", for: "bc-tone" },
          h("span", { class: "v-label" }, t("bc.tone")), slots.tone),
        h("label", { class: "v-field v-narrow", for: "bc-repeat" },
          h("span", { class: "v-label" }, t("bc.repeat")), slots.repeat),
        h("label", { class: "v-field v-narrow", for: "bc-language" },
          h("span", { class: "v-label" }, t("bc.language")), slots.language)),
      h("label", { class: "v-field", for: "bc-title" }, h("span", { class: "v-label" }, t("bc.title_field")),
        slots.title),
      h("label", { class: "v-field", for: "bc-text" },
        h("span", { class: "v-label" }, t("bc.text")), slots.text),
      h("div", { class: "v-row" },
        h("button", { type: "button", class: "v-button", "data-testid": "preview-button",
          on: { click: preview } }, t("bc.preview")),
        slots.preview),
    ];
  }

  function syncContent() {
    for (const b of slots.classes.children) {
      b.setAttribute("aria-checked", String(b.dataset.testid === `class-${form.cls}`));
    }
    slots.levelRow.hidden = form.cls !== "emergency";
    for (const b of slots.levels.children) {
      b.setAttribute("aria-checked", String(b.dataset.testid === `level-${form.severity}`));
    }
    const auto = defaultTone(form.cls, form.severity);
    mount(slots.tone,
      h("option", { value: "" }, t("v.tone.auto", { tone: toneText(auto) })),
      TONES.map((tone) => h("option", { value: tone }, toneText(tone))));
    slots.tone.value = form.tone;
    slots.repeat.value = String(form.repeat);
    slots.title.value = form.title;
    slots.text.value = form.text;
    slots.language.value = form.language;
  }

  async function preview() {
    const text = form.text.trim();
    if (!text) { showError(t("bc.need_text")); return; }
    hideError();
    mount(slots.preview, h("span", { class: "v-muted" }, t("bc.previewing")));
    try {
      const blob = await apiBlob("POST", "/speech/preview", { text, language: form.language });
      if (!alive) return;
      const url = URL.createObjectURL(blob);
      urls.push(url);
      previewUrl = url;
      const audio = previewPlayer(url);
      mount(slots.preview, audio, h("span", { class: "v-muted v-sr" }, t("bc.preview_ready")));
      audio.play().catch(() => {}); // autoplay may be refused; the controls stay
    } catch (err) {
      mount(slots.preview);
      showError(errorText(err));
    }
  }

  function previewPlayer(url) {
    return h("audio", { src: url, controls: true, "data-testid": "preview-audio" });
  }

  function targetFields() {
    const modes = ["all", "villages", "zones", "devices"];
    slots.modes = h("div", { class: "v-choices", role: "radiogroup", "aria-label": t("bc.step.targets") },
      modes.map((mode) => h("button", {
        type: "button", class: "v-choice", "data-testid": `target-${mode}`, role: "radio",
        on: { click: () => { form.mode = mode; syncTargets(); } },
      }, t(`bc.target.${mode}`))));
    slots.villages = h("div", { class: "v-checks", "data-testid": "village-list" },
      [...inv.villages.entries()].map(([name, ids], i) => check(
        `village-${i}`, name, t("v.terminals", { n: ids.length }), form.villages, name)));
    for (const box of slots.villages.querySelectorAll("input")) {
      box.dataset.village = [...inv.villages.keys()][Number(box.dataset.testid.replace("village-", ""))];
    }
    const zones = new Set();
    for (const d of inv.terminals) for (const z of (d.zones || [1])) zones.add(z);
    slots.zones = h("div", { class: "v-checks", "data-testid": "zone-list" },
      [...zones].sort((a, b) => a - b)
        .map((z) => check(`zone-${z}`, t("bc.zone", { n: z }), "", form.zones, z)));
    slots.deviceList = h("div", { class: "v-checks", "data-testid": "device-list" },
      inv.terminals.map((d) => check(`target-device-${d.id}`, d.name || d.id, d.village || "",
        form.devices, d.id)));
    slots.map = terminalMap();
    slots.deviceBox = h("div", { class: "v-device-pick" }, slots.deviceList, slots.map);
    slots.reach = h("p", { class: "v-reach", "data-testid": "target-reach", "aria-live": "polite" });
    return [slots.modes, slots.villages, slots.zones, slots.deviceBox, slots.reach];
  }

  function check(testid, label, note, bag, key) {
    const box = h("input", { type: "checkbox", "data-testid": testid, on: { change: (e) => {
      if (e.target.checked) bag.add(key); else bag.delete(key);
      syncTargets();
    } } });
    box.checked = bag.has(key);
    return h("label", { class: "v-check" }, box, h("span", { class: "v-check-label" }, label),
      note ? h("span", { class: "v-muted" }, note) : null);
  }

  // A small position map from each terminal's location; a bonus beside the list, hidden when no
  // terminal has a location. Positions are set through the CSSOM (allowed by the CSP).
  function terminalMap() {
    const placed = inv.terminals.filter((d) => d.location && Number.isFinite(d.location.lat)
      && Number.isFinite(d.location.lon));
    if (placed.length < 2) return null;
    const lats = placed.map((d) => d.location.lat);
    const lons = placed.map((d) => d.location.lon);
    const [minLat, maxLat, minLon, maxLon] = [Math.min(...lats), Math.max(...lats), Math.min(...lons),
      Math.max(...lons)];
    if (maxLat - minLat < 1e-6 && maxLon - minLon < 1e-6) return null;
    const dots = placed.map((d) => {
      const x = maxLon > minLon ? (d.location.lon - minLon) / (maxLon - minLon) : 0.5;
      const y = maxLat > minLat ? (maxLat - d.location.lat) / (maxLat - minLat) : 0.5;
      const dot = h("button", { type: "button", class: "v-map-dot", title: d.name || d.id,
        "data-testid": `map-${d.id}`, "aria-label": d.name || d.id, on: { click: () => {
          if (form.devices.has(d.id)) form.devices.delete(d.id); else form.devices.add(d.id);
          syncTargets();
        } } }, h("span", { class: "v-map-label" }, d.name || d.id));
      dot.style.left = `${(4 + x * 92).toFixed(2)}%`;
      dot.style.top = `${(6 + y * 88).toFixed(2)}%`;
      dot.dataset.device = d.id;
      return dot;
    });
    return h("figure", { class: "v-map" }, h("figcaption", { class: "v-muted" }, t("bc.map")),
      h("div", { class: "v-map-area" }, dots));
  }

  function syncTargets() {
    for (const b of slots.modes.children) {
      b.setAttribute("aria-checked", String(b.dataset.testid === `target-${form.mode}`));
    }
    slots.villages.hidden = form.mode !== "villages";
    slots.zones.hidden = form.mode !== "zones";
    slots.deviceBox.hidden = form.mode !== "devices";
    for (const box of slots.deviceList.querySelectorAll("input")) {
      box.checked = form.devices.has(box.dataset.testid.replace(/^target-device-/, ""));
    }
    if (slots.map) {
      for (const dot of slots.map.querySelectorAll(".v-map-dot")) {
        dot.setAttribute("aria-pressed", String(form.devices.has(dot.dataset.device)));
      }
    }
    const reach = reached();
    slots.reach.textContent = reach ? describeWhere(reach) : t("bc.need_targets");
  }

  function targets() {
    if (form.mode === "all") return { all: true };
    if (form.mode === "villages") {
      const ids = [];
      for (const name of form.villages) ids.push(...(inv.villages.get(name) || []));
      return ids.length ? { devices: ids } : null;
    }
    if (form.mode === "zones") {
      return form.zones.size ? { zones: [...form.zones].sort((a, b) => a - b) } : null;
    }
    return form.devices.size ? { devices: [...form.devices] } : null;
  }

  // What the targets reach, resolved the way controller/broadcast/targets.py does (all → every terminal and
  // the FM transmitter; zones → terminals wired with one of them).
  function reached() {
    const tg = targets();
    if (!tg) return null;
    let ids;
    let fm = [];
    if (tg.all) {
      ids = inv.terminals.map((d) => d.id);
      fm = inv.transmitters.map((d) => d.id);
    } else if (tg.zones) {
      ids = inv.terminals.filter((d) => (d.zones || [1]).some((z) => tg.zones.includes(z))).map((d) => d.id);
    } else {
      ids = tg.devices;
    }
    const villages = [];
    for (const id of ids) {
      const d = inv.byId.get(id);
      const name = d ? d.village || d.name || d.id : id;
      if (!villages.includes(name)) villages.push(name);
    }
    return { targets: tg, ids, fm, villages };
  }

  function describeWhere(reach) {
    const n = reach.ids.length;
    const where = reach.targets.all ? t("bc.confirm.where_all") : reach.villages.join("、");
    return `${where} · ${t("v.terminals", { n })}${reach.fm.length ? ` + ${t("v.fm")}` : ""}`;
  }

  function showError(message) {
    slots.error.textContent = message;
    slots.error.hidden = false;
  }

  function hideError() {
    slots.error.hidden = true;
    slots.error.textContent = "";
  }

  function request(reach) {
    const body = { class: form.cls, targets: reach.targets, text: form.text.trim(), language: form.language,
      repeat: Math.round(form.repeat) || 1 }; // out of range → the server's 422 names the field
    if (form.cls === "emergency") body.severity = form.severity || 1;
    if (form.tone) body.tone = form.tone;
    if (form.title.trim()) body.title = form.title.trim();
    return body;
  }

  function review() {
    hideError();
    if (!form.text.trim()) { showError(t("bc.need_text")); slots.text.focus(); return; }
    const reach = reached();
    if (!reach) { showError(t("bc.need_targets")); return; }
    const body = request(reach);
    const tone = body.tone || defaultTone(body.class, body.severity);
    const what = body.class === "emergency"
      ? `${classText("emergency")}（${levelText(body.severity)}）` : classText(body.class);
    const where = reach.targets.all ? t("bc.confirm.where_all") : reach.villages.join("、");
    const names = reach.ids.map((id) => inv.byId.get(id)?.name || id);
    let targetText = where;
    if (reach.targets.zones) targetText = t("bc.zones_reach", { zones: reach.targets.zones.join("、") });
    const status = h("p", { class: "v-error", role: "alert", "data-testid": "confirm-error" });
    status.hidden = true;
    const play = h("button", { type: "button", class: "v-big-button v-danger", "data-testid": "confirm-play",
      on: { click: () => submit(body, play, status) } }, t("bc.confirm.play"));
    mount(slots.confirm, h("section", { class: "v-confirm", "data-testid": "broadcast-confirm",
      "aria-labelledby": "bc-confirm-title" },
    h("h1", { class: "v-title", id: "bc-confirm-title" }, t("bc.confirm.title")),
    h("p", { class: "v-confirm-sentence", "data-testid": "confirm-summary" }, t("bc.confirm.sentence", {
      where, n: reach.ids.length, fm: reach.fm.length ? t("bc.confirm.with_fm") : "", what,
      tone: toneText(tone), repeat: body.repeat,
    })),
    h("dl", { class: "v-facts" },
      h("dt", {}, t("bc.confirm.class")), h("dd", { "data-testid": "confirm-class" },
        classNode(body.class, body.severity)),
      h("dt", {}, t("bc.confirm.tone")), h("dd", { "data-testid": "confirm-tone" }, toneText(tone)),
      h("dt", {}, t("bc.confirm.repeat")), h("dd", { "data-testid": "confirm-repeat" },
        t("v.times", { n: body.repeat })),
      h("dt", {}, t("bc.confirm.targets")), h("dd", { "data-testid": "confirm-villages" }, targetText),
      h("dt", {}, t("bc.confirm.terminals")), h("dd", { "data-testid": "confirm-terminals" },
        h("span", { "data-testid": "confirm-terminal-count", class: "v-strong" },
          t("v.terminals", { n: reach.ids.length })),
        reach.fm.length ? ` + ${t("v.fm")}` : "",
        h("span", { class: "v-muted v-names" }, names.join("、"))),
      h("dt", {}, t("bc.confirm.text")), h("dd", { class: "v-announcement", "data-testid": "confirm-text" },
        body.text)),
    status,
    h("div", { class: "v-actions" }, play,
      h("button", { type: "button", class: "v-button", "data-testid": "confirm-back", on: { click: back } },
        t("bc.confirm.back")))));
    slots.form.hidden = true;
    slots.confirm.hidden = false;
    confirming = true;
    play.focus();
    window.scrollTo(0, 0);
  }

  function back() {
    confirming = false;
    slots.confirm.hidden = true;
    slots.form.hidden = false;
  }

  async function submit(body, button, status) {
    button.disabled = true;
    button.textContent = t("bc.sending");
    try {
      const res = await api("POST", "/broadcasts", body);
      if (alive) window.location.hash = `#/history/${encodeURIComponent(res.id)}`;
    } catch (err) {
      if (!alive) return;
      status.textContent = errorText(err);
      status.hidden = false;
      button.disabled = false;
      button.textContent = t("bc.confirm.play");
    }
  }

  // The app leaves re-labelling to this view (handlesLang), so a language switch keeps the draft.
  const offLang = onLangChange(() => { if (loaded && alive) draw(); });

  return () => {
    alive = false;
    offLang();
    for (const url of urls) URL.revokeObjectURL(url);
  };
}

export default { id: "broadcast", navKey: "nav.broadcast", minRole: "operator", handlesLang: true, render };

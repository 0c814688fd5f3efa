// Device board: every terminal by village with state colour AND text, faults, last seen, audible
// now; the FM transmitter apart; filters; live from device.state events (refetch on reconnect).
import { fmtAgo, fmtTime, h, mount } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { api, onEvent } from "../api.js";
import { errorText, faultText, fmtNumber } from "../labels.js";
import { stateClass } from "/ui/common/js/terminal.js";

addStrings({
  zh: {
    "board.state.normal": "正常",
    "board.state.stopped": "停止",
    "board.state.fault": "故障",
    "board.state.recovered": "故障恢复",
    "board.state.playing": "正在播放",
    "board.state.offline": "离线",
    "board.state.unknown": "等待数据",
    "board.count.normal": "正常 {n}",
    "board.count.playing": "播放中 {n}",
    "board.count.fault": "故障 {n}",
    "board.count.offline": "离线 {n}",
    "board.count.unknown": "等待数据 {n}",
    "board.count.total": "共 {n} 台终端",
    "board.filter.village": "村",
    "board.filter.allVillages": "全部村",
    "board.filter.state": "状态",
    "board.filter.all": "全部",
    "board.filter.fault": "故障",
    "board.filter.offline": "离线",
    "board.filter.playing": "正在播放",
    "board.filter.search": "搜索",
    "board.filter.searchPlaceholder": "名称、编号或故障",
    "board.noVillage": "未分村",
    "board.audible": "正在播音",
    "board.lastSeen": "最后通信：{ago}",
    "board.neverSeen": "尚未通信",
    "board.alsoOffline": "且已离线",
    "board.fm.title": "调频发射机",
    "board.fm.power": "发射功率",
    "board.fm.reflected": "反射功率",
    "board.fm.vswr": "驻波比",
    "board.fm.temp": "温度",
    "board.fm.alarms": "告警",
    "board.fm.onAir": "正在发射",
    "board.empty": "没有符合条件的终端",
    "board.heading": "终端状态",
    "board.updated": "更新于 {time}",
    "board.terminals": "{n} 台",
  },
  en: {
    "board.state.normal": "Normal",
    "board.state.stopped": "Stopped",
    "board.state.fault": "FAULT",
    "board.state.recovered": "Fault recovered",
    "board.state.playing": "Playing",
    "board.state.offline": "OFFLINE",
    "board.state.unknown": "Waiting for data",
    "board.count.normal": "Normal {n}",
    "board.count.playing": "Playing {n}",
    "board.count.fault": "Fault {n}",
    "board.count.offline": "Offline {n}",
    "board.count.unknown": "No data yet {n}",
    "board.count.total": "{n} terminals",
    "board.filter.village": "Village",
    "board.filter.allVillages": "All villages",
    "board.filter.state": "State",
    "board.filter.all": "All",
    "board.filter.fault": "Fault",
    "board.filter.offline": "Offline",
    "board.filter.playing": "Playing",
    "board.filter.search": "Search",
    "board.filter.searchPlaceholder": "name, id or fault",
    "board.noVillage": "No village",
    "board.audible": "Audible now",
    "board.lastSeen": "Last seen {ago}",
    "board.neverSeen": "Never answered",
    "board.alsoOffline": "and offline",
    "board.fm.title": "FM transmitter",
    "board.fm.power": "Forward power",
    "board.fm.reflected": "Reflected power",
    "board.fm.vswr": "VSWR",
    "board.fm.temp": "Temperature",
    "board.fm.alarms": "Alarms",
    "board.fm.onAir": "On air",
    "board.empty": "No terminal matches",
    "board.heading": "Terminals",
    "board.updated": "Updated {time}",
    "board.terminals": "{n}",
  },
});

const SYMBOL = { normal: "✓", stopped: "■", fault: "✖", recovered: "↺", playing: "▶", offline: "⊘",
  unknown: "…" };
const REFRESH_MS = 15000; // last-seen and measured values are not in every event; refresh them quietly

// Filters survive re-renders (language switch, coming back to the board).
const filters = { village: "", state: "all", q: "" };

function audible(dev) {
  const v = dev.values || {};
  return dev.online !== false && (dev.state === 5 || v.audio_present === true || v.audio_at_output === true);
}

function lastSeen(dev) {
  if (!dev.last_seen) return t("board.neverSeen");
  const ago = t("common.ago", { d: fmtAgo(Date.now() / 1000 - dev.last_seen) });
  return t("board.lastSeen", { ago });
}

function stateLabel(dev, cls) {
  return h("span", { class: ["state-label", `st-${cls}`], "data-testid": `state-${dev.id}`, "data-state": cls },
    h("span", { class: "sym", "aria-hidden": "true" }, SYMBOL[cls]), " ", t(`board.state.${cls}`));
}

function faultList(dev) {
  if (!dev.faults?.length) return null;
  return h("ul", { class: "faults", "data-testid": `faults-${dev.id}` },
    dev.faults.map((f) => h("li", { title: fmtTime(f.since) }, faultText(f))));
}

function terminalCard(dev) {
  const cls = stateClass(dev);
  return h("article", { class: ["card", `st-${cls}`], "data-testid": `device-${dev.id}`, "data-state": cls,
    "data-state-code": dev.state ?? "", "aria-label": `${dev.name} ${t(`board.state.${cls}`)}` },
  h("div", { class: "card-head" },
    h("h3", { class: "dev-name" }, dev.name || dev.id),
    h("span", { class: "dev-id" }, dev.id)),
  stateLabel(dev, cls),
  cls === "fault" && dev.online === false ? h("span", { class: "badge offline" }, t("board.alsoOffline")) : null,
  audible(dev) ? h("p", { class: "audible", "data-testid": `audible-${dev.id}` },
    h("span", { class: "sym", "aria-hidden": "true" }, "♫ "), t("board.audible")) : null,
  faultList(dev),
  h("p", { class: "seen", "data-seen": dev.last_seen ?? "" }, lastSeen(dev)));
}

function fmCard(dev) {
  const cls = stateClass(dev);
  const v = dev.values || {};
  const alarms = Array.isArray(v.alarms) ? v.alarms : [];
  return h("article", { class: ["card", "fm", `st-${cls}`], "data-testid": `device-${dev.id}`,
    "data-state": cls, "data-state-code": dev.state ?? "" },
  h("div", { class: "card-head" },
    h("h3", { class: "dev-name" }, dev.name || dev.id),
    h("span", { class: "dev-id" }, dev.id)),
  stateLabel(dev, cls),
  dev.state === 5 && dev.online !== false ? h("p", { class: "audible", "data-testid": `audible-${dev.id}` },
    h("span", { class: "sym", "aria-hidden": "true" }, "♫ "), t("board.fm.onAir")) : null,
  h("dl", { class: "fm-values" },
    h("dt", {}, t("board.fm.power")),
    h("dd", { "data-testid": `fm-power-${dev.id}` }, fmtNumber(v.forward_w, 1, "W")),
    h("dt", {}, t("board.fm.reflected")), h("dd", {}, fmtNumber(v.reflected_w, 1, "W")),
    h("dt", {}, t("board.fm.vswr")), h("dd", { "data-testid": `fm-vswr-${dev.id}` }, fmtNumber(v.vswr, 2)),
    v.temperature_c !== undefined
      ? [h("dt", {}, t("board.fm.temp")), h("dd", {}, fmtNumber(v.temperature_c, 1, "°C"))] : null,
    alarms.length ? [h("dt", {}, t("board.fm.alarms")), h("dd", { class: "alarm" }, alarms.join(", "))] : null),
  faultList(dev),
  h("p", { class: "seen", "data-seen": dev.last_seen ?? "" }, lastSeen(dev)));
}

/** What a card shows (not when it was last seen): cards are rebuilt only when this changes. */
function signature(dev) {
  const v = dev.values || {};
  return JSON.stringify([dev.name, dev.village, dev.state, dev.online, audible(dev),
    (dev.faults || []).map((f) => [f.fault, f.zone, f.reason, f.reason_zh]),
    dev.kind === "fm_transmitter" ? [v.forward_w, v.reflected_w, v.vswr, v.temperature_c, v.alarms] : null]);
}

function matches(dev) {
  const cls = stateClass(dev);
  if (filters.village && (dev.village || "") !== filters.village) return false;
  if (filters.state === "fault" && cls !== "fault") return false;
  if (filters.state === "offline" && dev.online !== false) return false;
  if (filters.state === "playing" && !(cls === "playing" || audible(dev))) return false;
  const q = filters.q.trim().toLowerCase();
  if (q) {
    const hay = [dev.name, dev.id, dev.village, ...(dev.faults || []).flatMap((f) => [f.reason, f.reason_zh])]
      .filter(Boolean).join(" ").toLowerCase();
    if (!hay.includes(q)) return false;
  }
  return true;
}

function counts(devices) {
  const c = { normal: 0, playing: 0, fault: 0, offline: 0, unknown: 0 };
  for (const dev of devices) {
    if (dev.kind === "fm_transmitter") continue;
    const cls = stateClass(dev);
    if (cls === "normal" || cls === "recovered") c.normal += 1;
    else if (cls === "playing") c.playing += 1;
    else if (cls === "fault") c.fault += 1;
    else if (cls === "offline" || cls === "stopped") c.offline += 1;
    else c.unknown += 1;
  }
  return c;
}

export default {
  id: "board",
  navKey: "nav.board",
  minRole: "viewer",
  render(root) {
    const devices = new Map(); // id → record, in config order
    const cards = new Map(); // id → card element
    const summary = h("div", { class: "summary", "data-testid": "board-summary" });
    const fmArea = h("section", { class: "fm-area", "data-testid": "fm-area" });
    const groups = h("div", { class: "villages" });
    const empty = h("p", { class: "notice", hidden: true, "data-testid": "board-empty" }, t("board.empty"));
    const updated = h("span", { class: "updated" });
    let villageSelect = null;
    let stopped = false;

    function renderSummary() {
      const c = counts(devices.values());
      const total = [...devices.values()].filter((d) => d.kind !== "fm_transmitter").length;
      mount(summary,
        h("span", { class: "count st-normal", "data-testid": "count-normal", "data-n": c.normal },
          t("board.count.normal", { n: c.normal })),
        h("span", { class: "count st-playing", "data-testid": "count-playing", "data-n": c.playing },
          t("board.count.playing", { n: c.playing })),
        h("span", { class: "count st-fault", "data-testid": "count-fault", "data-n": c.fault },
          t("board.count.fault", { n: c.fault })),
        h("span", { class: "count st-offline", "data-testid": "count-offline", "data-n": c.offline },
          t("board.count.offline", { n: c.offline })),
        c.unknown ? h("span", { class: "count st-unknown", "data-n": c.unknown },
          t("board.count.unknown", { n: c.unknown })) : null,
        h("span", { class: "count total", "data-testid": "count-total", "data-n": total },
          t("board.count.total", { n: total })));
    }

    function applyFilters() {
      let shown = 0;
      for (const [id, card] of cards) {
        const ok = matches(devices.get(id));
        card.hidden = !ok;
        if (ok && devices.get(id).kind !== "fm_transmitter") shown += 1;
      }
      for (const group of groups.children) {
        group.hidden = ![...group.querySelectorAll(".card")].some((c) => !c.hidden);
      }
      fmArea.hidden = ![...fmArea.querySelectorAll(".card")].some((c) => !c.hidden);
      empty.hidden = shown > 0 || !devices.size;
    }

    function cardFor(dev) {
      return dev.kind === "fm_transmitter" ? fmCard(dev) : terminalCard(dev);
    }

    function buildAll(list) {
      devices.clear();
      cards.clear();
      const byVillage = new Map();
      const fms = [];
      for (const dev of list) {
        devices.set(dev.id, dev);
        const card = cardFor(dev);
        cards.set(dev.id, card);
        if (dev.kind === "fm_transmitter") {
          fms.push(card);
          continue;
        }
        const village = dev.village || "";
        if (!byVillage.has(village)) byVillage.set(village, []);
        byVillage.get(village).push(card);
      }
      mount(fmArea, fms.length ? h("h2", {}, t("board.fm.title")) : null,
        h("div", { class: "cards" }, fms));
      mount(groups, [...byVillage].map(([village, list2]) =>
        h("section", { class: "village", "data-village": village },
          h("h2", {}, village || t("board.noVillage"), " ",
            h("span", { class: "muted" }, t("board.terminals", { n: list2.length }))),
          h("div", { class: "cards" }, list2))));
      if (villageSelect) {
        const keep = filters.village;
        mount(villageSelect, h("option", { value: "" }, t("board.filter.allVillages")),
          [...byVillage.keys()].map((v) => h("option", { value: v }, v || t("board.noVillage"))));
        villageSelect.value = byVillage.has(keep) ? keep : "";
        filters.village = villageSelect.value;
      }
      renderSummary();
      applyFilters();
      mount(updated, t("board.updated", { time: fmtTime(Date.now() / 1000) }));
    }

    /** Quiet refresh: keep the new records, rebuild only the cards whose shown content changed. */
    function merge(list) {
      const known = list.every((d) => devices.has(d.id)) && list.length === devices.size;
      if (!known) {
        buildAll(list);
        return;
      }
      for (const dev of list) {
        const changed = signature(devices.get(dev.id)) !== signature(dev);
        devices.set(dev.id, dev);
        if (changed) {
          replaceCard(dev.id);
        } else {
          const seen = cards.get(dev.id).querySelector(".seen");
          if (seen) mount(seen, lastSeen(dev));
        }
      }
      renderSummary();
      applyFilters();
      mount(updated, t("board.updated", { time: fmtTime(Date.now() / 1000) }));
    }

    function replaceCard(id) {
      const old = cards.get(id);
      const card = cardFor(devices.get(id));
      card.hidden = !matches(devices.get(id));
      if (old) old.replaceWith(card);
      cards.set(id, card);
    }

    async function load(quiet) {
      try {
        const list = await api("GET", "/devices");
        if (stopped) return;
        if (quiet && devices.size) merge(list);
        else buildAll(list);
      } catch (err) {
        if (stopped || quiet) return;
        mount(groups, h("p", { class: "notice error", "data-testid": "board-error" },
          errorText(err), " ",
          h("button", { type: "button", on: { click: () => load(false) } }, t("common.retry"))));
      }
    }

    villageSelect = h("select", { id: "f-village", "data-testid": "filter-village",
      on: { change: () => { filters.village = villageSelect.value; applyFilters(); } } },
    h("option", { value: "" }, t("board.filter.allVillages")));
    const stateSelect = h("select", { id: "f-state", "data-testid": "filter-state",
      on: { change: () => { filters.state = stateSelect.value; applyFilters(); } } },
    ["all", "fault", "offline", "playing"].map((s) => h("option", { value: s }, t(`board.filter.${s}`))));
    stateSelect.value = filters.state;
    const search = h("input", { id: "f-search", type: "search", value: filters.q, "data-testid": "filter-search",
      placeholder: t("board.filter.searchPlaceholder"),
      on: { input: () => { filters.q = search.value; applyFilters(); } } });

    mount(root, h("div", { class: "board" },
      h("div", { class: "board-head" }, h("h1", {}, t("board.heading")), updated),
      summary,
      h("div", { class: "filters", role: "search" },
        h("label", { for: "f-village" }, t("board.filter.village")), villageSelect,
        h("label", { for: "f-state" }, t("board.filter.state")), stateSelect,
        h("label", { for: "f-search" }, t("board.filter.search")), search),
      empty,
      groups,
      fmArea));
    mount(groups, h("p", { class: "notice" }, t("common.loading")));
    load(false);

    const offState = onEvent("device.state", (data) => {
      const id = data.device || data.id;
      const dev = devices.get(id);
      if (!dev) return;
      const next = { ...dev };
      for (const key of ["state", "state_name", "online", "last_seen", "faults", "values", "failure",
        "broadcasting"]) {
        if (key in data && !(key === "values" && data.values === null)) next[key] = data[key];
      }
      devices.set(id, next);
      replaceCard(id);
      renderSummary();
      applyFilters();
    });
    const offStream = onEvent("stream", ({ connected }) => {
      if (connected) load(true); // events may have been missed while disconnected
    });
    const refresh = setInterval(() => load(true), REFRESH_MS);
    const tick = setInterval(() => {
      for (const [id, card] of cards) {
        const seen = card.querySelector(".seen");
        if (seen) mount(seen, lastSeen(devices.get(id)));
      }
    }, 5000);
    return () => {
      stopped = true;
      offState();
      offStream();
      clearInterval(refresh);
      clearInterval(tick);
    };
  },
};

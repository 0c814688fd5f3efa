// Gateway health: the box itself (uptime, CPU, memory, disk), its queue, lines, uplink and feeds.
// Every part is optional: a daemon without MQTT or CAP feeds simply shows fewer tiles.
import { fmtAgo, fmtTime, h, mount, zoneLabel } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { ApiError, api, onEvent } from "../api.js";
import { errorText, faultText, fmtNumber } from "../labels.js";

addStrings({
  zh: {
    "gw.heading": "网关健康",
    "gw.uptime": "运行时间",
    "gw.timezone": "时区（页面时间均按此显示）",
    "gw.cpu": "CPU（本进程 / 整机）",
    "gw.memory": "内存（本进程 / 整机已用）",
    "gw.disk": "磁盘可用",
    "gw.diskReadonly": "状态目录不可写！",
    "gw.queue": "广播队列",
    "gw.queueValue": "等待 {n}",
    "gw.current": "正在处理：{id}",
    "gw.mqtt": "县级平台连接（MQTT）",
    "gw.mqttOn": "已连接",
    "gw.mqttOff": "未连接",
    "gw.mqttNone": "未配置",
    "gw.outbox": "待上报消息",
    "gw.alerts": "待审批预警",
    "gw.devices": "设备在线",
    "gw.devicesValue": "{online} / {total}（故障 {faults}）",
    "gw.lines": "通信线路",
    "gw.line": "线路",
    "gw.kind": "类型",
    "gw.up": "状态",
    "gw.lineUp": "正常",
    "gw.lineDown": "断开",
    "gw.requests": "请求",
    "gw.timeouts": "超时",
    "gw.crc": "校验错误",
    "gw.retries": "重试",
    "gw.latency": "时延（平均/最大）",
    "gw.cycle": "轮询周期",
    "gw.feeds": "预警数据源",
    "gw.feed": "数据源",
    "gw.lastOk": "最近成功",
    "gw.lastError": "最近错误",
    "gw.failures": "连续失败",
    "gw.nextPoll": "下次拉取",
    "gw.documents": "文档数",
    "gw.faults": "网关自身故障",
    "gw.noFaults": "网关自身无故障",
    "gw.updated": "更新于 {time}",
  },
  en: {
    "gw.heading": "Gateway health",
    "gw.uptime": "Uptime",
    "gw.timezone": "Time zone (all times shown in it)",
    "gw.cpu": "CPU (daemon / system)",
    "gw.memory": "Memory (daemon / system used)",
    "gw.disk": "Disk free",
    "gw.diskReadonly": "State directory not writable!",
    "gw.queue": "Broadcast queue",
    "gw.queueValue": "{n} waiting",
    "gw.current": "Active: {id}",
    "gw.mqtt": "County uplink (MQTT)",
    "gw.mqttOn": "Connected",
    "gw.mqttOff": "Disconnected",
    "gw.mqttNone": "Not configured",
    "gw.outbox": "Reports waiting to send",
    "gw.alerts": "Alerts awaiting approval",
    "gw.devices": "Devices online",
    "gw.devicesValue": "{online} / {total} ({faults} with faults)",
    "gw.lines": "Lines",
    "gw.line": "Line",
    "gw.kind": "Kind",
    "gw.up": "Status",
    "gw.lineUp": "up",
    "gw.lineDown": "DOWN",
    "gw.requests": "Requests",
    "gw.timeouts": "Timeouts",
    "gw.crc": "CRC errors",
    "gw.retries": "Retries",
    "gw.latency": "Latency (avg/max)",
    "gw.cycle": "Poll cycle",
    "gw.feeds": "Alert feeds",
    "gw.feed": "Feed",
    "gw.lastOk": "Last OK",
    "gw.lastError": "Last error",
    "gw.failures": "Failures",
    "gw.nextPoll": "Next poll",
    "gw.documents": "Documents",
    "gw.faults": "Gateway faults",
    "gw.noFaults": "No gateway faults",
    "gw.updated": "Updated {time}",
  },
});

const REFRESH_MS = 10000;
const num = (v) => typeof v === "number" && Number.isFinite(v);

function tile(key, value, testid, bad = false) {
  return h("div", { class: ["tile", bad ? "bad" : null], "data-testid": testid },
    h("div", { class: "tile-label" }, t(key)),
    h("div", { class: "tile-value" }, value));
}

function pendingCount(data, pending) {
  if (data.alerts && num(data.alerts.pending)) return data.alerts.pending;
  if (num(data.pending_alerts)) return data.pending_alerts;
  return pending;
}

function tiles(data, pending) {
  const out = [];
  if (num(data.uptime_s)) out.push(tile("gw.uptime", fmtAgo(data.uptime_s), "gw-uptime"));
  if (data.gateway?.timezone) out.push(tile("gw.timezone", zoneLabel(), "gw-timezone"));
  const p = data.process || {};
  const s = data.system || {};
  if (data.process || data.system) {
    out.push(tile("gw.cpu", `${fmtNumber(p.cpu_percent, 1, "%")} / ${fmtNumber(s.cpu_percent, 1, "%")}`, "gw-cpu"));
    out.push(tile("gw.memory", `${fmtNumber(p.rss_mb, 0, "MB")} / ${fmtNumber(s.memory_percent, 0, "%")}`,
      "gw-memory"));
  }
  if (data.disk) {
    const d = data.disk;
    const value = [`${fmtNumber(d.free_mb, 0, "MB")}${num(d.total_mb) ? ` / ${d.total_mb.toFixed(0)} MB` : ""}`,
      d.writable === false ? h("div", { class: "warn" }, t("gw.diskReadonly")) : null];
    out.push(tile("gw.disk", value, "gw-disk", d.writable === false));
  }
  if (data.engine) {
    out.push(tile("gw.queue", [t("gw.queueValue", { n: data.engine.queue_depth ?? 0 }),
      data.engine.current ? h("div", { class: "muted" }, t("gw.current", { id: data.engine.current })) : null],
    "gw-queue"));
  }
  if (data.devices && num(data.devices.total)) {
    const dv = data.devices;
    out.push(tile("gw.devices", t("gw.devicesValue", { online: dv.online, total: dv.total,
      faults: dv.with_faults ?? 0 }), "gw-devices", dv.online < dv.total));
  }
  if ("mqtt" in data) {
    const m = data.mqtt;
    const configured = Boolean(m) && m.enabled !== false;
    const text = !configured ? t("gw.mqttNone") : m.connected ? t("gw.mqttOn") : t("gw.mqttOff");
    out.push(tile("gw.mqtt", [configured && m.connected ? "✓ " : configured ? "✖ " : "", text,
      m?.broker ? h("div", { class: "muted" }, String(m.broker)) : null],
    "gw-mqtt", configured && !m.connected));
  }
  if (num(data.outbox_depth)) out.push(tile("gw.outbox", String(data.outbox_depth), "gw-outbox"));
  const alerts = pendingCount(data, pending);
  if (num(alerts)) out.push(tile("gw.alerts", String(alerts), "gw-alerts", alerts > 0));
  return out;
}

function linesTable(lines) {
  const rows = Object.entries(lines || {});
  if (!rows.length) return null;
  return h("section", { class: "panel" }, h("h2", {}, t("gw.lines")),
    h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": "gw-lines" },
      h("thead", {}, h("tr", {}, ["gw.line", "gw.kind", "gw.up", "gw.requests", "gw.timeouts", "gw.crc",
        "gw.retries", "gw.latency", "gw.cycle"].map((k) => h("th", { scope: "col" }, t(k))))),
      h("tbody", {}, rows.map(([id, l]) => h("tr", { "data-line": id, class: l.up === false ? "bad" : null },
        h("th", { scope: "row" }, id),
        h("td", {}, l.kind || ""),
        h("td", { class: l.up === false ? "bad" : "ok" },
          l.up === false ? `✖ ${t("gw.lineDown")}${l.down_reason ? `: ${l.down_reason}` : ""}` : `✓ ${t("gw.lineUp")}`),
        h("td", { class: "num" }, String(l.requests ?? l.commands ?? "—")),
        h("td", { class: "num" }, String(l.timeouts ?? "—")),
        h("td", { class: "num" }, String(l.crc_errors ?? l.garbled ?? "—")),
        h("td", { class: "num" }, String(l.retries ?? "—")),
        h("td", { class: "num" },
          `${fmtNumber(l.latency_avg_ms ?? l.latency_last_ms, 1)} / ${fmtNumber(l.latency_max_ms, 1)} ms`),
        h("td", { class: "num" }, l.poll ? `${fmtNumber(l.poll.last_cycle_s, 2, "s")}` : "—")))))));
}

function feedsTable(feeds) {
  const list = Array.isArray(feeds) ? feeds : feeds && Array.isArray(feeds.feeds) ? feeds.feeds : null;
  if (!list?.length) return null;
  return h("section", { class: "panel" }, h("h2", {}, t("gw.feeds")),
    h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": "gw-feeds" },
      h("thead", {}, h("tr", {}, ["gw.feed", "gw.kind", "gw.lastOk", "gw.lastError", "gw.failures",
        "gw.nextPoll", "gw.documents"].map((k) => h("th", { scope: "col" }, t(k))))),
      h("tbody", {}, list.map((f) => h("tr", { class: f.failures ? "bad" : null },
        h("th", { scope: "row" }, String(f.id ?? "")),
        h("td", {}, String(f.type ?? "")),
        h("td", {}, fmtTime(f.last_ok)),
        h("td", { class: f.last_error ? "bad" : null }, f.last_error ? String(f.last_error) : "—"),
        h("td", { class: "num" }, String(f.failures ?? 0)),
        h("td", { class: "num" }, num(f.next_poll_in_s) ? fmtAgo(f.next_poll_in_s) : "—"),
        h("td", { class: "num" }, String(f.documents ?? "—"))))))));
}

function faultsPanel(faults) {
  if (!Array.isArray(faults)) return null;
  return h("section", { class: "panel", "data-testid": "gw-faults" }, h("h2", {}, t("gw.faults")),
    faults.length ? h("ul", { class: "faults" }, faults.map((f) => h("li", {},
      faultText(f)))) : h("p", { class: "ok" }, `✓ ${t("gw.noFaults")}`));
}

export default {
  id: "gateway",
  navKey: "nav.gateway",
  minRole: "viewer",
  render(root) {
    let stopped = false;
    let pending = null;
    let timer = null;
    let inflight = false;
    const body = h("div", { class: "gw-body" }, h("p", { class: "notice" }, t("common.loading")));
    const updated = h("span", { class: "updated", "data-testid": "gw-updated" });
    mount(root, h("div", { class: "gateway" },
      h("div", { class: "board-head" }, h("h1", {}, t("gw.heading")), updated), body));

    async function pendingAlerts(data) {
      if (pendingCount(data, null) !== null) return null;
      try {
        const list = await api("GET", "/alerts?disposition=pending&limit=500");
        return Array.isArray(list) ? list.length : null;
      } catch {
        return null; // no alert inbox on this daemon (or not allowed): leave the tile out
      }
    }

    async function load() {
      if (inflight || stopped) return;
      inflight = true;
      try {
        const data = await api("GET", "/gateway");
        pending = await pendingAlerts(data);
        if (stopped) return;
        mount(body,
          h("div", { class: "tiles" }, tiles(data, pending)),
          faultsPanel(data.faults),
          linesTable(data.lines),
          feedsTable(data.feeds));
        mount(updated, t("gw.updated", { time: fmtTime(Date.now() / 1000) }));
      } catch (err) {
        if (stopped) return;
        const missing = err instanceof ApiError && err.status === 404;
        mount(body, h("p", { class: "notice error", "data-testid": "gw-error" },
          errorText(missing ? "GET /api/v1/gateway" : err)));
      } finally {
        inflight = false;
      }
    }

    load();
    timer = setInterval(load, REFRESH_MS);
    let lastEventLoad = 0;
    const soon = () => { // events can come in bursts (a broadcast's progress): at most one load a second
      if (Date.now() - lastEventLoad < 1000) return;
      lastEventLoad = Date.now();
      load();
    };
    const offs = ["gateway.health", "alert.received", "alert.decided", "broadcast.state"].map((kind) =>
      onEvent(kind, soon));
    offs.push(onEvent("stream", ({ connected }) => connected && load()));
    return () => {
      stopped = true;
      clearInterval(timer);
      for (const off of offs) off();
    };
  },
};

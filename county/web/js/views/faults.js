// Open faults across the county, most severe first, then oldest (the API's order), with the township
// and village; updated live when a device state changes.
import { api } from "../api.js";
import { fmtAgo, fmtTime, h, mount, since } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { errorBox, faultName, faultReason, gwLink, liveReload, statusBadge } from "../labels.js";

addStrings({
  zh: {
    "faults.none": "全县没有未消除的故障。",
    "faults.count": "共 {n} 条",
    "faults.col.fault": "故障",
    "faults.col.township": "乡镇",
    "faults.col.village": "村",
    "faults.col.device": "终端",
    "faults.col.since": "发生时间",
    "faults.col.age": "持续",
    "faults.col.detail": "说明",
  },
  en: {
    "faults.none": "No open fault in the county.",
    "faults.count": "{n} in all",
    "faults.col.fault": "Fault",
    "faults.col.township": "Township",
    "faults.col.village": "Village",
    "faults.col.device": "Terminal",
    "faults.col.since": "Since",
    "faults.col.age": "For",
    "faults.col.detail": "Details",
  },
});

function row(f) {
  const key = `${f.gateway}-${f.device}-${f.fault}`;
  return h("tr", { "data-testid": `fault-${key}`, "data-severity": f.severity, class: f.severity >= 80 ? "bad" : null },
    h("th", { scope: "row" }, h("span", { class: "sev", "data-sev": f.severity }, faultName(f))),
    h("td", {}, gwLink(f.gateway, f.township || f.gateway), " ",
      f.gateway_status === "offline" ? statusBadge("offline") : null),
    h("td", {}, f.village || "—"),
    h("td", {}, h("span", { "data-testid": `fault-device-${f.gateway}-${f.device}` }, f.device_name || f.device),
      " ", h("code", {}, f.device)),
    h("td", { class: "nowrap" }, fmtTime(f.since)),
    h("td", { class: "nowrap" }, fmtAgo(since(f.since))),
    h("td", { class: "break" }, faultReason(f)));
}

function render(root) {
  let alive = true;
  const load = async () => {
    try {
      const { faults = [] } = await api("GET", "/faults");
      if (!alive) return;
      mount(root, h("h1", {}, t("nav.faults"), " ",
        h("span", { class: "muted", "data-testid": "faults-count", "data-n": faults.length },
          t("faults.count", { n: faults.length }))),
      faults.length === 0 ? h("p", { class: "muted", "data-testid": "faults-none" }, t("faults.none"))
        : h("div", { class: "table-wrap" }, h("table", { class: "grid", "data-testid": "faults-table" },
          h("thead", {}, h("tr", {}, ["fault", "township", "village", "device", "since", "age", "detail"].map((c) =>
            h("th", { scope: "col" }, t(`faults.col.${c}`))))),
          h("tbody", {}, faults.map(row)))));
    } catch (err) {
      if (alive) mount(root, errorBox(err));
    }
  };
  mount(root, h("p", { class: "notice" }, t("common.loading")));
  load();
  const off = liveReload(["device.state", "gateway.status", "gateway.birth"], load);
  return () => {
    alive = false;
    off();
  };
}

export default { id: "faults", navKey: "nav.faults", minRole: "viewer", render };

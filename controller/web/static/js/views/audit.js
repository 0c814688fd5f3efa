// Audit log (admin): who did what, when, from where — newest first, paged. Details are JSON shown
// as text (they can carry broadcast text and CAP fields, so they are never markup).
import { fmtTime, h, mount } from "../dom.js";
import { addStrings, t } from "../i18n.js";
import { api, onEvent } from "../api.js";
import { errorText } from "../labels.js";

addStrings({
  zh: {
    "audit.heading": "审计日志",
    "audit.ts": "时间",
    "audit.actor": "操作者",
    "audit.role": "角色",
    "audit.via": "渠道",
    "audit.action": "操作",
    "audit.target": "对象",
    "audit.details": "详情",
    "audit.remote": "来源地址",
    "audit.empty": "没有记录",
    "audit.refresh": "刷新",
    "audit.newEntries": "有新记录，点击刷新",
  },
  en: {
    "audit.heading": "Audit log",
    "audit.ts": "Time",
    "audit.actor": "Actor",
    "audit.role": "Role",
    "audit.via": "Via",
    "audit.action": "Action",
    "audit.target": "Target",
    "audit.details": "Details",
    "audit.remote": "From",
    "audit.empty": "No entries",
    "audit.refresh": "Refresh",
    "audit.newEntries": "New entries — refresh",
  },
});

const PAGE = 50;
let page = 0; // kept across re-renders

function details(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  const text = JSON.stringify(value);
  return text === "{}" ? "" : text;
}

export default {
  id: "audit",
  navKey: "nav.audit",
  minRole: "admin",
  render(root) {
    let stopped = false;
    const body = h("div", { class: "table-wrap" });
    const pager = h("div", { class: "pager" });
    const fresh = h("button", { type: "button", class: "link", hidden: true, "data-testid": "audit-new",
      on: { click: () => { page = 0; load(); } } }, t("audit.newEntries"));
    mount(root, h("div", { class: "audit" },
      h("div", { class: "board-head" }, h("h1", {}, t("audit.heading")), fresh,
        h("button", { type: "button", "data-testid": "audit-refresh", on: { click: () => load() } },
          t("audit.refresh"))),
      body, pager));

    async function load() {
      mount(body, h("p", { class: "notice" }, t("common.loading")));
      try {
        // one extra row tells whether there is a next page
        const rows = await api("GET", `/audit?limit=${PAGE + 1}&offset=${page * PAGE}`);
        if (stopped) return;
        fresh.hidden = true;
        const more = rows.length > PAGE;
        const shown = rows.slice(0, PAGE);
        mount(body, shown.length ? h("table", { class: "grid audit-table", "data-testid": "audit-table" },
          h("thead", {}, h("tr", {}, ["audit.ts", "audit.actor", "audit.role", "audit.via", "audit.action",
            "audit.target", "audit.details"].map((k) => h("th", { scope: "col" }, t(k))))),
          h("tbody", {}, shown.map((r) => h("tr", { "data-seq": r.seq ?? "", "data-action": r.action },
            h("td", { class: "nowrap" }, fmtTime(r.ts)),
            h("td", { title: r.remote ? `${t("audit.remote")}: ${r.remote}` : null }, r.actor ?? ""),
            h("td", {}, r.role ?? ""),
            h("td", {}, r.via ?? ""),
            h("td", { class: "nowrap" }, r.action ?? ""),
            h("td", { class: "break" }, r.target ?? ""),
            h("td", { class: "details" }, h("code", {}, details(r.details)))))))
          : h("p", { class: "notice" }, t("audit.empty")));
        mount(pager,
          h("button", { type: "button", disabled: page === 0, "data-testid": "audit-prev",
            on: { click: () => { page = Math.max(0, page - 1); load(); } } }, t("common.prev")),
          h("span", { "data-testid": "audit-page" }, t("common.page", { n: page + 1 })),
          h("button", { type: "button", disabled: !more, "data-testid": "audit-next",
            on: { click: () => { page += 1; load(); } } }, t("common.next")));
      } catch (err) {
        if (!stopped) mount(body, h("p", { class: "notice error" }, errorText(err)));
      }
    }

    load();
    // The audit trail itself is not an SSE kind; broadcasts and alert decisions are audited, so show
    // that there is something new rather than moving rows under the reader's eyes.
    const offs = ["broadcast.state", "alert.decided", "alert.received"].map((kind) => onEvent(kind, () => {
      fresh.hidden = false;
    }));
    return () => {
      stopped = true;
      for (const off of offs) off();
    };
  },
};

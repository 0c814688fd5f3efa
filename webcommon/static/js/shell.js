// The console shell both consoles share (served at /ui/common/js/shell.js): login, header, nav, hash
// router and language switch. Each console's js/app.js calls startConsole() with its views and header.
// Views are modules whose default export is {id, navKey, minRole, hidden?, handlesLang?,
// render(root, params) → optional cleanup fn}.
import { ApiError, api, can, hasToken, loadSession, login, logout, onEvent, onUnauthorized, session,
  startEvents, stopEvents, streamConnected } from "./api.js";
import { h, mount } from "./dom.js";
import { addStrings, lang, onLangChange, setLang, t } from "./i18n.js";

// The shell's own strings; each console adds its name, login hint and nav labels (its js/i18n.js).
addStrings({
  zh: {
    "login.token": "访问令牌",
    "login.submit": "登录",
    "login.checking": "正在验证…",
    "login.empty": "请输入令牌",
    "login.bad": "令牌无效或已被吊销",
    "login.expired": "登录已失效，请重新输入令牌",
    "login.loggedOut": "已退出登录",
    "nav.menu": "菜单",
    "header.logout": "退出",
    "header.live": "实时连接",
    "header.reconnecting": "正在重连…",
    "header.langSwitch": "English",
    "header.langSwitchTitle": "Switch to English",
    "role.viewer": "查看员",
    "role.operator": "值班员",
    "role.admin": "管理员",
    "common.loading": "加载中…",
    "common.error": "出错：{error}",
    "common.none": "无",
    "common.ago": "{d}前",
    "common.forbidden": "您的角色无权使用此页面。",
  },
  en: {
    "login.token": "Access token",
    "login.submit": "Sign in",
    "login.checking": "Checking…",
    "login.empty": "Enter a token",
    "login.bad": "Token is not valid or was revoked",
    "login.expired": "Your session ended; enter the token again",
    "login.loggedOut": "Signed out",
    "nav.menu": "Menu",
    "header.logout": "Sign out",
    "header.live": "Live",
    "header.reconnecting": "Reconnecting…",
    "header.langSwitch": "中文",
    "header.langSwitchTitle": "切换到中文",
    "role.viewer": "viewer",
    "role.operator": "operator",
    "role.admin": "admin",
    "common.loading": "Loading…",
    "common.error": "Error: {error}",
    "common.none": "none",
    "common.ago": "{d} ago",
    "common.forbidden": "Your role may not use this page.",
  },
});

const app = document.getElementById("app");
const views = new Map(); // id → view object
let cleanup = null;
let shell = null; // {header, nav, main}
let site = null; // the console's startConsole() options
let siteInfo = null; // what site.infoPath answered (the gateway's or the county's name)
let unsubscribers = [];

function roleAllows(view) {
  return can(view.minRole || "viewer");
}

async function loadViews() {
  const results = await Promise.allSettled(site.views.map((name) => site.importView(name)));
  results.forEach((result, i) => {
    if (result.status === "fulfilled" && result.value.default && result.value.default.id) {
      const view = result.value.default;
      views.set(view.id, view);
    } else {
      console.error(`view ${site.views[i]} failed to load`, result.reason);
    }
  });
}

/** "#/history/bc-1" → {id: "history", params: {id: "bc-1", args: ["bc-1"]}}. */
function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const parts = raw.split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const id = parts[0] || site.defaultRoute;
  const args = parts.slice(1);
  return { id, params: { id: args[0], args } };
}

// -- login -----------------------------------------------------------------------------------------

function showLogin(message = "", kind = "info") {
  teardown();
  const input = h("input", { id: "token", type: "password", autocomplete: "off", spellcheck: "false",
    "data-testid": "login-token", "aria-describedby": "login-hint", required: true });
  const status = h("p", { class: ["login-message", kind], role: "alert", "data-testid": "login-message" },
    message);
  const button = h("button", { type: "submit", class: "primary big", "data-testid": "login-submit" },
    t("login.submit"));
  const form = h("form", { class: "login-form", "data-testid": "login-form", novalidate: "",
    on: { submit: async (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) {
        mount(status, t("login.empty"));
        status.className = "login-message error";
        return;
      }
      button.disabled = true;
      mount(status, t("login.checking"));
      status.className = "login-message info";
      try {
        await login(value);
        input.value = "";
        await startShell();
      } catch (err) {
        const text = err instanceof ApiError && err.status === 401 ? t("login.bad")
          : t("login.unreachable", { error: err.message || String(err) });
        mount(status, text);
        status.className = "login-message error";
        button.disabled = false;
        input.select();
      }
    } } },
  h("label", { for: "token" }, t("login.token")),
  input,
  h("p", { id: "login-hint", class: "hint" }, t("login.hint")),
  button,
  status);
  const langButton = h("button", { type: "button", class: "lang-switch", "data-testid": "lang-switch",
    title: t("header.langSwitchTitle"), on: { click: () => {
      setLang(lang() === "zh" ? "en" : "zh");
      showLogin();
    } } }, t("header.langSwitch"));
  mount(app, h("main", { class: "login-page", "data-testid": "login-page" },
    h("section", { class: "login-card" },
      h("div", { class: "login-top" }, h("h1", {}, t("login.title")), langButton), form)));
  document.title = t("app.title");
  input.focus();
}

// -- shell -------------------------------------------------------------------------------------------

/** Let the current view go (its cleanup function, if it returned one). */
function leaveView() {
  if (typeof cleanup === "function") {
    try {
      cleanup();
    } catch (err) {
      console.error("view cleanup failed", err);
    }
  }
  cleanup = null;
}

function teardown() {
  leaveView();
  for (const off of unsubscribers) off();
  unsubscribers = [];
  shell = null;
}

function liveIndicator() {
  const on = streamConnected();
  return h("span", { class: ["live", on ? "on" : "off"], "data-testid": "live-indicator",
    "data-state": on ? "connected" : "reconnecting", role: "status", "aria-live": "polite" },
  h("span", { class: "dot", "aria-hidden": "true" }),
  on ? t("header.live") : t("header.reconnecting"));
}

function siteName() {
  return site.name(siteInfo);
}

function renderHeader() {
  const who = session() || { name: "", role: "" };
  const header = h("header", { class: "topbar" },
    h("div", { class: "brand" },
      h("span", { class: "gw-name", "data-testid": site.nameTestid }, siteName()),
      liveIndicator()),
    can("operator") ? h("a", { href: `#/${site.action.route}`, class: "emergency",
      "data-testid": site.action.testid, role: "button" },
    h("span", { class: "sym", "aria-hidden": "true" }, "⚠ "), t(site.action.key)) : null,
    h("div", { class: "user" },
      h("span", { class: "who", "data-testid": "user-info", "data-role": who.role },
        who.name ? `${who.name} · ` : "", t(`role.${who.role}`)),
      h("button", { type: "button", class: "lang-switch", "data-testid": "lang-switch",
        title: t("header.langSwitchTitle"), on: { click: () => setLang(lang() === "zh" ? "en" : "zh") } },
      t("header.langSwitch")),
      h("button", { type: "button", class: "logout", "data-testid": "logout",
        on: { click: () => {
          logout();
          showLogin(t("login.loggedOut"));
        } } }, t("header.logout"))));
  return header;
}

function renderNav(activeId) {
  const items = [];
  for (const name of site.views) {
    const view = views.get(name);
    if (!view || view.hidden || !roleAllows(view)) continue;
    items.push(h("li", {}, h("a", { href: `#/${view.id}`, "data-testid": `nav-${view.id}`,
      class: view.id === activeId ? "active" : null, "aria-current": view.id === activeId ? "page" : null },
    t(view.navKey))));
  }
  return h("nav", { class: "mainnav", "aria-label": t("nav.menu") }, h("ul", {}, items));
}

function refreshChrome(activeId) {
  if (!shell) return;
  const header = renderHeader();
  shell.header.replaceWith(header);
  shell.header = header;
  const nav = renderNav(activeId);
  shell.nav.replaceWith(nav);
  shell.nav = nav;
}

function route() {
  if (!shell) return;
  leaveView();
  const { id, params } = parseRoute();
  const view = views.get(id);
  refreshChrome(view ? id : null);
  const main = h("main", { class: "view", id: "view", "data-testid": `view-${id}`, tabindex: "-1" });
  shell.main.replaceWith(main);
  shell.main = main;
  if (!view) {
    mount(main, h("p", { class: "notice" }, t("common.notFound")));
    return;
  }
  if (!roleAllows(view)) {
    mount(main, h("p", { class: "notice", "data-testid": "forbidden" }, t("common.forbidden")));
    return;
  }
  document.title = `${t(view.navKey)} · ${siteName()}`;
  try {
    const result = view.render(main, params);
    cleanup = typeof result === "function" ? result : null;
  } catch (err) {
    console.error(`view ${id} failed`, err);
    mount(main, h("p", { class: "notice error" }, t("common.error", { error: err.message || String(err) })));
  }
}

async function loadSiteInfo() {
  try {
    siteInfo = await api("GET", site.infoPath);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    siteInfo = null;
  }
  if (shell) {
    const name = shell.header.querySelector(`[data-testid="${site.nameTestid}"]`);
    if (name) mount(name, siteName());
  }
}

async function startShell() {
  teardown();
  if (site.onSession) site.onSession(session());
  if (!views.size) await loadViews();
  const header = renderHeader();
  const nav = renderNav(null);
  const main = h("main", { class: "view", id: "view" });
  shell = { header, nav, main };
  mount(app, header, nav, main);
  unsubscribers.push(onEvent("stream", () => {
    if (!shell) return;
    const old = shell.header.querySelector('[data-testid="live-indicator"]');
    if (old) old.replaceWith(liveIndicator());
  }));
  startEvents();
  route();
  loadSiteInfo();
}

function onLang() {
  if (!shell) return;
  const { id } = parseRoute();
  const view = views.get(id);
  if (view?.handlesLang) {
    refreshChrome(id); // the view re-labels itself (it keeps what the user typed)
  } else {
    route();
  }
}

async function boot() {
  if (!hasToken()) {
    showLogin();
    return;
  }
  try {
    await loadSession();
    await startShell();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) showLogin(t("login.expired"), "error");
    else showLogin(t("login.unreachable", { error: err.message || String(err) }), "error");
  }
}

/**
 * Start the console. options: views (module names in nav order), importView(name) → import() of the
 * console's own module (each is imported on its own so one broken view cannot take the whole console
 * down), defaultRoute, infoPath (GET for the header's name), name(info) → that name, nameTestid,
 * action {route, testid, key} (the operator's red button), onSession(session) (optional, before the
 * header and the first view are drawn).
 */
export function startConsole(options) {
  site = options;
  onUnauthorized(() => {
    stopEvents();
    showLogin(t("login.expired"), "error");
  });
  window.addEventListener("hashchange", () => route());
  onLangChange(onLang);
  boot();
}

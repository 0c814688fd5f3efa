// The DOM helpers are shared with the gateway console: webcommon/static/js/dom.js.
export * from "/ui/common/js/dom.js";

// The DOM helpers are shared with the county console: webcommon/static/js/dom.js.
export * from "/ui/common/js/dom.js";

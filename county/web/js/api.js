// The county API: the client (token, JSON, the event stream, GET /session) is shared with the gateway
// console (webcommon/static/js/api.js). Refusals carry their text in "detail".
import { configureApi } from "/ui/common/js/api.js";

export * from "/ui/common/js/api.js";

configureApi({ tokenKey: "ebc.county.token", errorKey: "detail" });

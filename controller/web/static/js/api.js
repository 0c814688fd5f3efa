// The gateway API: the client (token, JSON, the event stream) is shared with the county console
// (webcommon/static/js/api.js); here only what is the gateway's own.
import { ApiError, api, configureApi } from "/ui/common/js/api.js";

export * from "/ui/common/js/api.js";

/** GET /session (name, role, token id, the gateway's time zone); before that endpoint existed, probe the role. */
async function readSession() {
  try {
    const who = await api("GET", "/session");
    return { name: who.name, role: who.role, token_id: who.token_id ?? null, timezone: who.timezone ?? null };
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
  }
  await api("GET", "/devices"); // 401 for a bad token
  let role = "viewer";
  try {
    await api("GET", "/audit?limit=1");
    role = "admin";
  } catch (err) {
    if (err.status !== 403) throw err;
    try {
      await api("POST", "/broadcasts", {}); // an empty body is refused: 422 for operators, 403 below
    } catch (probe) {
      if (probe.status === 422) role = "operator";
    }
  }
  return { name: "", role, token_id: null };
}

// Refusals carry their text in "error" (with "field" and "details").
configureApi({ tokenKey: "ebc.token", errorKey: "error", readSession });

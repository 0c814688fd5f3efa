// The API client both consoles share (served at /ui/common/js/api.js): bearer token from sessionStorage
// (never a URL, cookie or log), JSON in and out, and one shared Server-Sent Events connection read with
// fetch() (EventSource cannot send headers). Each console's js/api.js configures it (configureApi):
// under which key the token is kept, which field of a refusal carries its text, how to learn the session.
const BASE = "/api/v1";
const RANK = { viewer: 1, operator: 2, admin: 3 };
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000];
const SILENCE_MS = 45000; // the server sends a keep-alive every 15 s: a silent link is a dead link

/** A refused request: message is the server's text ("error" or "detail"); status, field and details as sent. */
export class ApiError extends Error {
  constructor(message, status = 0, field = null, details = []) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.field = field;
    this.details = details;
  }
}

const config = {
  tokenKey: "ebc.token",
  errorKey: "error",
  readSession: async () => {
    const who = await api("GET", "/session");
    return { name: String(who.name ?? ""), role: String(who.role ?? "viewer") };
  },
};

/**
 * Set up the client for one console: tokenKey (sessionStorage), errorKey (the refusal's text field:
 * "error" for the gateway, "detail" for the county centre), readSession() → {name, role, …} (a 401
 * for a bad token; by default GET /session's name and role). Called by the console's js/api.js before anything is requested.
 */
export function configureApi(options) {
  Object.assign(config, options);
}

let currentSession = null;
let unauthorizedHandler = null;
let verifying = false; // during login() a 401 means "wrong token", not "session ended"

function token() {
  try {
    return sessionStorage.getItem(config.tokenKey);
  } catch {
    return null;
  }
}

/** Keep the token for this tab only (sessionStorage). */
export function setToken(value) {
  sessionStorage.setItem(config.tokenKey, value);
}

/** Forget the token and the session (logout, 401). */
export function clearToken() {
  try {
    sessionStorage.removeItem(config.tokenKey);
  } catch {
    // nothing stored
  }
  currentSession = null;
}

export function hasToken() {
  return Boolean(token());
}

/** fn(message) is called once per 401 (token revoked or wrong): the app goes back to login. */
export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}

function url(path) {
  return path.startsWith("/api/") || path === "/metrics" ? path : BASE + (path.startsWith("/") ? path : `/${path}`);
}

async function request(method, path, body, accept) {
  const headers = { Accept: accept };
  const tok = token();
  if (tok) headers.Authorization = `Bearer ${tok}`;
  let payload;
  if (body !== undefined && body !== null) {
    if (typeof body === "string") {
      payload = body;
      headers["Content-Type"] = "application/xml";
    } else if (body instanceof Blob || body instanceof ArrayBuffer || ArrayBuffer.isView(body)) {
      payload = body;
      headers["Content-Type"] = body.type || "application/octet-stream";
    } else {
      payload = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
  }
  let response;
  try {
    response = await fetch(url(path), { method, headers, body: payload, cache: "no-store",
      credentials: "omit", referrerPolicy: "no-referrer" });
  } catch (err) {
    throw new ApiError(String(err?.message ? err.message : err), 0);
  }
  if (!response.ok) {
    let info = {};
    try {
      info = await response.json();
    } catch {
      info = {};
    }
    const text = info[config.errorKey];
    const message = typeof text === "string" ? text : `HTTP ${response.status}`;
    const error = new ApiError(message, response.status, info.field ?? null, info.details ?? []);
    if (response.status === 401 && tok && !verifying) {
      clearToken();
      stopEvents();
      if (unauthorizedHandler) unauthorizedHandler(message);
    }
    throw error;
  }
  return response;
}

/** method + path ("/broadcasts") → parsed JSON (text for non-JSON answers; null on 204). Object bodies
 * are sent as JSON, strings as XML (CAP), Blobs as they are (WAV). Throws ApiError. */
export async function api(method, path, body) {
  const response = await request(method, path, body, "application/json");
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) return response.json();
  const text = await response.text();
  return text === "" ? null : text;
}

/** Like api() but the answer is a Blob (audio). */
export async function apiBlob(method, path, body) {
  const response = await request(method, path, body, "*/*");
  return response.blob();
}

// -- session -------------------------------------------------------------------------------------

/** {name, role} of the logged-in token, or null. */
export function session() {
  return currentSession;
}

/** True if the session's role is at least role ("viewer" < "operator" < "admin"). */
export function can(role) {
  if (!currentSession) return false;
  return (RANK[currentSession.role] || 0) >= (RANK[role] || 99);
}

/** Learn who the stored token is (the console's readSession; a 401 for a bad token). */
export async function loadSession() {
  currentSession = await config.readSession();
  return currentSession;
}

/** Store token and verify it; on failure nothing stays stored. */
export async function login(value) {
  setToken(value);
  verifying = true;
  try {
    return await loadSession();
  } catch (err) {
    clearToken();
    throw err;
  } finally {
    verifying = false;
  }
}

export function logout() {
  stopEvents();
  clearToken();
}

// -- events ----------------------------------------------------------------------------------------

const handlers = new Map();
let stream = null; // {controller, stopped}
let connected = false;

/** fn(data) for each SSE event of kind (device.state, broadcast.state, gateway.status, …, or "*" for
 * all, called as fn(data, kind)); kind "stream" → {connected: bool}. Returns an unsubscribe fn. */
export function onEvent(kind, fn) {
  if (!handlers.has(kind)) handlers.set(kind, new Set());
  handlers.get(kind).add(fn);
  return () => {
    const set = handlers.get(kind);
    if (set) set.delete(fn);
  };
}

function dispatch(kind, data) {
  for (const key of [kind, "*"]) {
    for (const fn of [...(handlers.get(key) || [])]) {
      try {
        fn(data, kind);
      } catch (err) {
        console.error(`event handler for ${kind} failed`, err);
      }
    }
  }
}

function setConnected(value) {
  if (value === connected) return;
  connected = value;
  dispatch("stream", { connected: value });
}

/** Whether the shared event stream is connected now. */
export function streamConnected() {
  return connected;
}

function parseBlock(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let parsed;
  try {
    parsed = JSON.parse(data.join("\n"));
  } catch {
    parsed = data.join("\n");
  }
  dispatch(kind, parsed);
}

async function readStream(state) {
  let attempt = 0;
  while (!state.stopped) {
    const controller = new AbortController();
    state.controller = controller;
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(), SILENCE_MS);
    };
    try {
      const tok = token();
      if (!tok) break;
      arm();
      const response = await fetch(url("/events"), { headers: { Authorization: `Bearer ${tok}`,
        Accept: "text/event-stream" }, cache: "no-store", credentials: "omit", signal: controller.signal });
      if (response.status === 401) {
        clearTimeout(watchdog);
        clearToken();
        state.stopped = true;
        setConnected(false);
        if (unauthorizedHandler) unauthorizedHandler("401");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      attempt = 0;
      setConnected(true);
      for (;;) {
        const { value, done } = await reader.read();
        if (done || state.stopped) break;
        arm();
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          parseBlock(block);
        }
      }
    } catch {
      // network error, abort or server restart: reconnect below
    } finally {
      clearTimeout(watchdog);
    }
    if (state.stopped) break;
    setConnected(false);
    const wait = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    attempt += 1;
    await new Promise((resolve) => {
      state.wake = resolve;
      setTimeout(resolve, wait);
    });
  }
  setConnected(false);
}

/** Open the shared event stream (after login); reconnects with back-off until stopEvents(). */
export function startEvents() {
  if (stream && !stream.stopped) return;
  stream = { controller: null, stopped: false, wake: null };
  readStream(stream);
}

/** Close the event stream (logout). */
export function stopEvents() {
  if (!stream) return;
  stream.stopped = true;
  if (stream.controller) stream.controller.abort();
  if (stream.wake) stream.wake();
  stream = null;
  setConnected(false);
}

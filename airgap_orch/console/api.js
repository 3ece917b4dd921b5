// The console's only door to the server: the JSON API and the event streams, with the token in memory.
//
// The token lives in the `token` variable of this module and nowhere else: not in the URL, a cookie, localStorage
// or sessionStorage. Reloading the page forgets it. Streams are read with fetch() (EventSource cannot send an
// Authorization header) and parsed here.

let token = null;

export function setToken(value) {
  token = value || null;
}

export class ApiError extends Error {
  constructor(status, detail, type) {
    super(detail);
    this.status = status;
    this.type = type || "";
  }
}

function headers(extra) {
  const sent = { Accept: "application/json", ...extra };
  if (token) sent.Authorization = "Bearer " + token;
  return sent;
}

async function problem(response) {
  let detail = `HTTP ${response.status}`;
  let type = "";
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : detail;
    type = typeof body.type === "string" ? body.type : "";
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, detail, type);
}

function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

// GET path?query -> the JSON answer; an error answer throws ApiError with the server's one-line detail.
export async function get(path, query) {
  const response = await fetch(withQuery(path, query), { headers: headers(), cache: "no-store" });
  if (!response.ok) throw await problem(response);
  return response.json();
}

// POST a JSON body (or none); reason and ticket travel in X-Orch-Reason / X-Orch-Ticket (DESIGN invariant 8).
export async function post(path, body, { reason, ticket } = {}) {
  const extra = {};
  if (body !== undefined) extra["Content-Type"] = "application/json";
  if (reason) extra["X-Orch-Reason"] = reason;
  if (ticket) extra["X-Orch-Ticket"] = ticket;
  const response = await fetch(path, {
    method: "POST",
    headers: headers(extra),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!response.ok) throw await problem(response);
  return response.json();
}

// Read a text/event-stream at `path` until `signal` aborts or the server ends it; onEvent({id, event, data}) for
// each message (comments skipped). Returns the last event id seen, to resume with Last-Event-ID. With `idleMs`, a
// stream that sends nothing (not even a keep-alive comment) for that long is taken as dead: it is aborted and this
// throws, so the caller reconnects instead of waiting forever on a connection that silently went away.
export async function stream(path, onEvent, { signal, lastEventId, idleMs } = {}) {
  const own = new AbortController();
  const abort = () => own.abort();
  if (signal) signal.addEventListener("abort", abort, { once: true });
  if (signal && signal.aborted) own.abort();
  let idle = null;
  const watch = () => {
    if (!idleMs) return;
    clearTimeout(idle);
    idle = setTimeout(() => own.abort(), idleMs);
  };
  try {
    const extra = { Accept: "text/event-stream" };
    if (lastEventId) extra["Last-Event-ID"] = lastEventId;
    watch();
    const response = await fetch(path, { headers: headers(extra), signal: own.signal, cache: "no-store" });
    if (!response.ok) throw await problem(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    let message = { data: [] };
    let last = lastEventId || null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return last;
      watch();
      buffered += value;
      let end;
      while ((end = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, end).replace(/\r$/, "");
        buffered = buffered.slice(end + 1);
        if (line === "") {
          if (message.data.length) {
            if (message.id !== undefined) last = message.id;
            onEvent({ id: message.id, event: message.event || "message", data: message.data.join("\n") });
          }
          message = { data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") message.data.push(text);
        else if (field === "event") message.event = text;
        else if (field === "id") message.id = text;
      }
    }
  } finally {
    clearTimeout(idle);
    if (signal) signal.removeEventListener("abort", abort);
  }
}

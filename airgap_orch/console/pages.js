// The console's pages. Each page is {title, scope, render(context)}; render reads the JSON API and returns
// {node, onEvent?, stop?}. An action button appears only when the token carries the scope its route needs, and
// asks for the reason (and ticket) the route records in the audit log.

import { ApiError, get, post, stream } from "./api.js";
import { age, button, el, form, jobLink, pre, safeLink, section, table, text } from "./dom.js";

const READ = "orch:read";
const OPERATE = "orch:operate";
const QUOTA = "orch:quota";
const BACKFILL = "orch:backfill";
const AIRGAP = "orch:airgap";
const ACTIVE_STATES = ["waiting", "queued", "leased", "running"];
const REPLAYABLE = ["dead_letter", "failed", "timed_out"];
const JOB_STATES = ["waiting", "queued", "leased", "running", "succeeded", "failed", "timed_out", "canceled",
  "dead_letter"];

const enc = encodeURIComponent;

// Refresh at most every `ms` however many events arrive (a burst of events is one reload).
function debounced(action, ms = 400) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      action();
    }, ms);
  };
}

// Run an operator action; show what happened (or the server's one-line refusal) and refresh the page.
async function act(context, description, action) {
  try {
    const result = await action();
    context.setStatus("");
    context.refresh();
    return result;
  } catch (error) {
    context.setStatus(`${description} refused: ${error.message}`);
    return null;
  }
}

function keyValues(object, { skip = [] } = {}) {
  const rows = Object.entries(object || {}).filter(([key]) => !skip.includes(key));
  return el("table", { class: "kv" }, el("tbody", {}, rows.map(([key, value]) => el("tr", {},
    el("th", { scope: "row" }, key),
    el("td", {}, value !== null && typeof value === "object" ? pre(value) : text(value))))));
}

// Rows of objects whose fields are not known in advance (air-gap records): one column per field.
function objectTable(rows, empty) {
  const names = [];
  for (const row of rows) for (const name of Object.keys(row)) if (!names.includes(name)) names.push(name);
  return table(names.map((name) => ({ title: name, value: (row) => text(row[name]) })), rows, { empty });
}

function counts(jobs) {
  return Object.entries(jobs || {}).map(([state, count]) => `${state} ${count}`).join(", ") || "—";
}

function pauseText(paused) {
  if (!paused) return "no";
  return `since ${paused.paused_at} by ${paused.paused_by}: ${paused.reason}` + (paused.ticket ? ` (${paused.ticket})` : "");
}

// -- overview --------------------------------------------------------------------------------------------------
async function overview(context) {
  // GET /v1/throttled: the queued jobs a limit holds back now, each with what holds it (one request, a page).
  const [queues, info, leased, running, dead, sources, breakers, throttled] = await Promise.all([
    get("/v1/queues"), get("/v1/ledger"), get("/v1/jobs", { state: "leased", limit: 200 }),
    get("/v1/jobs", { state: "running", limit: 200 }), get("/v1/deadletter", { limit: 10 }),
    get("/v1/sources"), get("/v1/breakers"), get("/v1/throttled", { limit: 50 }),
  ]);
  const workers = new Map();
  for (const job of [...leased.jobs, ...running.jobs]) {
    const worker = workers.get(job.worker_id) || { worker: job.worker_id, jobs: [], expires: null };
    worker.jobs.push(job);
    if (!worker.expires || job.lease_expires_at < worker.expires) worker.expires = job.lease_expires_at;
    workers.set(job.worker_id, worker);
  }
  const pausedQueues = queues.queues.filter((queue) => queue.paused);
  const pausedSources = sources.sources.filter((source) => source.paused);
  const openBreakers = breakers.breakers.filter((breaker) => breaker.state !== "closed");
  const node = el("div", { class: "page overview" },
    el("h1", {}, "Overview"),
    el("p", { class: "summary" }, `Jobs: ${counts(info.jobs)}`),
    section("Queues", table([
      { title: "queue", value: (q) => q.queue },
      { title: "depth (queued)", value: (q) => q.jobs.queued || 0 },
      { title: "waiting on parents", value: (q) => q.jobs.waiting || 0 },
      { title: "leased / running", value: (q) => (q.jobs.leased || 0) + (q.jobs.running || 0) },
      { title: "finished, last hour", value: (q) => q.finished_last_hour },
      { title: "oldest ready", value: (q) => age(q.oldest_ready_seconds) },
      { title: "paused", value: (q) => pauseText(q.paused) },
    ], queues.queues, { empty: "no queue has jobs" })),
    section("Workers and their leases", table([
      { title: "worker", value: (w) => w.worker },
      { title: "jobs", value: (w) => el("span", {}, w.jobs.map((job) => el("span", { class: "job-ref" },
        jobLink(job.job_id), ` ${job.type} ${job.state}` + (job.progress !== null ? ` ${Math.round(job.progress * 100)}%` : "")))) },
      { title: "first lease expires", value: (w) => w.expires },
    ], [...workers.values()], { empty: "no job is leased" })),
    section("Dead letters", el("p", {}, `${info.jobs.dead_letter || 0} dead-lettered jobs. `,
      el("a", { href: "#/deadletters" }, "Replay them")), table([
      { title: "job", value: (job) => jobLink(job.job_id) },
      { title: "tenant", value: (job) => job.tenant },
      { title: "type", value: (job) => job.type },
      { title: "error", value: (job) => job.last_error },
      { title: "died", value: (job) => job.finished_at },
    ], dead.jobs, { empty: "no dead letters" })),
    section("Throttled jobs", table([
      { title: "job", value: (job) => jobLink(job.job_id) },
      { title: "tenant", value: (job) => job.tenant },
      { title: "type", value: (job) => job.type },
      { title: "queue", value: (job) => job.queue },
      { title: "held back by", value: (job) => job.throttled.throttled_by },
      { title: "eligible", value: (job) => job.throttled.eligible_at
        ? `at ${job.throttled.eligible_at}` : `once ${job.throttled.waits_for}` },
    ], throttled.jobs, { empty: "no queued job is held back" }),
    throttled.next_cursor ? el("p", { class: "hint" }, "The 50 oldest held-back jobs; `airgap-orch jobs throttled` "
      + "lists them all.") : null),
    section("Paused queues and sources", table([
      { title: "kind", value: (row) => row.kind },
      { title: "name", value: (row) => row.name },
      { title: "paused", value: (row) => pauseText(row.paused) },
    ], [...pausedQueues.map((q) => ({ kind: "queue", name: q.queue, paused: q.paused })),
      ...pausedSources.map((s) => ({ kind: "source", name: s.name, paused: s.paused }))], { empty: "nothing is paused" })),
    section("Open circuit breakers", table([
      { title: "key", value: (b) => b.key },
      { title: "state", value: (b) => b.state },
      { title: "failures", value: (b) => `${b.consecutive_failures} of ${b.failure_threshold}` },
      { title: "opened", value: (b) => b.opened_at },
    ], openBreakers, { empty: "no breaker is open" })));
  return { node, onEvent: debounced(context.refresh, 500) };
}

// -- jobs --------------------------------------------------------------------------------------------------------
async function jobs(context) {
  const filters = {};
  for (const name of ["tenant", "project", "type", "queue", "state", "cursor"]) {
    if (context.params[name]) filters[name] = context.params[name];
  }
  const page = await get("/v1/jobs", { ...filters, limit: 100 });
  const tenants = context.who.tenants;
  const fields = [
    tenants ? el("select", { name: "tenant", "aria-label": "tenant" }, el("option", { value: "" }, "any tenant"),
      tenants.map((tenant) => el("option", { value: tenant, selected: filters.tenant === tenant }, tenant)))
      : el("input", { name: "tenant", placeholder: "tenant", "aria-label": "tenant", value: filters.tenant }),
    el("input", { name: "project", placeholder: "project", "aria-label": "project", value: filters.project }),
    el("input", { name: "type", placeholder: "type", "aria-label": "type", value: filters.type }),
    el("input", { name: "queue", placeholder: "queue", "aria-label": "queue", value: filters.queue }),
    el("select", { name: "state", "aria-label": "state" }, el("option", { value: "" }, "any state"),
      JOB_STATES.map((state) => el("option", { value: state, selected: filters.state === state }, state))),
  ];
  const filter = el("form", { class: "filters", "aria-label": "Filter jobs" }, fields,
    el("button", { type: "submit" }, "Filter"));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const field of fields) if (field.value.trim()) query.set(field.name, field.value.trim());
    location.hash = "#/jobs" + (query.toString() ? "?" + query : "");
  });
  const next = page.next_cursor
    ? el("a", { href: "#/jobs?" + new URLSearchParams({ ...filters, cursor: page.next_cursor }) }, "Next page")
    : null;
  const node = el("div", { class: "page" }, el("h1", {}, "Jobs"), filter, table([
    { title: "job", value: (job) => jobLink(job.job_id) },
    { title: "tenant", value: (job) => job.tenant },
    { title: "project", value: (job) => job.project },
    { title: "type", value: (job) => job.type },
    { title: "queue", value: (job) => job.queue },
    { title: "state", value: (job) => job.state },
    { title: "attempts", value: (job) => `${job.attempts}/${job.max_attempts}` },
    { title: "created", value: (job) => job.created_at },
    { title: "last error", value: (job) => job.last_error },
  ], page.jobs, { empty: "no jobs match" }), next);
  return { node };
}

// -- one job --------------------------------------------------------------------------------------------------------
function jobDetails(context, job) {
  const actions = el("div", { class: "actions" });
  if (context.can(OPERATE) && ACTIVE_STATES.includes(job.state)) {
    actions.append(button("Cancel job", async () => {
      const answer = await context.ask(`Cancel job ${job.job_id}`, { needsReason: true });
      if (answer) await act(context, "Cancel", () => post(`/v1/jobs/${enc(job.job_id)}/cancel`, { reason: answer.reason }));
    }));
  }
  if (context.can(OPERATE) && REPLAYABLE.includes(job.state)) {
    actions.append(button("Replay job", async () => {
      const answer = await context.ask(`Replay job ${job.job_id}`, { text: "A new high-priority job runs its payload again." });
      if (answer) {
        const body = answer.reason ? { reason: answer.reason } : {};
        const made = await act(context, "Replay", () => post(`/v1/jobs/${enc(job.job_id)}/replay`, body));
        if (made) context.setStatus(`Replayed as ${made.job_id || JSON.stringify(made)}`);
      }
    }));
  }
  const progress = job.progress === null || job.progress === undefined ? null
    : el("p", {}, el("progress", { max: "1", value: String(job.progress) }),
      ` ${Math.round(job.progress * 100)}%`, job.progress_message ? ` — ${job.progress_message}` : "");
  return el("div", { class: "job-details" },
    el("h1", {}, "Job ", el("span", { class: "mono" }, job.job_id)),
    actions,
    section("Summary", keyValues({
      tenant: job.tenant, project: job.project, type: job.type, queue: job.queue, state: job.state,
      priority: job.priority, attempts: `${job.attempts} of ${job.max_attempts}`, created_at: job.created_at,
      run_at: job.run_at, finished_at: job.finished_at, last_error: job.last_error, replay_of: job.replay_of,
      correlation_id: job.correlation_id, keys: job.keys, depends_on: job.depends_on,
      throttled: job.throttled ? `${job.throttled.throttled_by} until ${job.throttled.eligible_at}` : null,
    })),
    section("Lease and progress", keyValues({
      lease_id: job.lease_id, worker_id: job.worker_id, leased_at: job.leased_at,
      lease_expires_at: job.lease_expires_at, lease_expired: job.lease_expired, cancel_requested: job.cancel_requested,
    }), progress),
    section("Payload", pre(job.payload)),
    section("Artifacts", table([
      { title: "uri", value: (artifact) => safeLink(artifact.uri) },
      { title: "media type", value: (artifact) => artifact.mime },
      { title: "digest", value: (artifact) => artifact.digest },
    ], job.artifacts || [], { empty: "no artifacts" })),
    section("History", table([
      { title: "seq", value: (entry) => entry.seq },
      { title: "at", value: (entry) => entry.occurred_at },
      { title: "event", value: (entry) => entry.event_type },
      { title: "from → to", value: (entry) => `${entry.from_state || "—"} → ${entry.to_state || "—"}` },
      { title: "attempt", value: (entry) => entry.attempt },
      { title: "worker", value: (entry) => entry.worker_id },
      { title: "actor", value: (entry) => entry.actor },
      { title: "reason", value: (entry) => entry.reason },
    ], job.history || [], { empty: "no history" })));
}

// -- a job's log: its first page, then followed live ----------------------------------------------------------------
const LOG_PAGE_LINES = 1000; // the most GET /v1/jobs/{id}/logs answers in one page
const LOG_IDLE_MS = 16000; // the server sends a keep-alive every 5 s: this long without a byte is a dead connection
const LOG_RETRY_MS = 2000;

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

// One stored line ({seq, at, stored_at, level, message, attempt, dropped, ...}, README "Job logs") as a list item;
// the marker that stands for lines cut from a long log ("... N earlier lines dropped", `dropped`: N) stands out.
function logLine(line) {
  const level = String(line.level || "info").replace(/[^a-z]/g, "");
  const marker = line.dropped !== null && line.dropped !== undefined;
  return el("li", { class: `level-${level}${marker ? " dropped" : ""}`, "data-seq": text(line.seq),
    title: `attempt ${text(line.attempt)}, stored ${text(line.stored_at)}` },
  el("span", { class: "seq" }, text(line.seq)), " ",
  el("span", { class: "at" }, text(line.at)), " ",
  el("span", { class: "level" }, text(line.level)), " ",
  el("span", { class: "message" }, text(line.message)));
}

// The job's log: the lines stored so far (GET /v1/jobs/{id}/logs), then the new ones as they are stored
// (?follow=1: `event: line` with id = seq; resumed after a drop with Last-Event-ID = the last seq shown), until the
// server's `event: end` says the job is final and every line is sent.
function jobLog(jobId) {
  const lines = el("ol", { class: "log", "aria-label": "Job log" });
  const state = el("p", { class: "hint log-state", role: "status" }, "Loading the job's log…");
  const controller = new AbortController();
  const signal = controller.signal;
  let lastSeq = 0;
  const add = (line) => {
    if (typeof line.seq !== "number" || line.seq <= lastSeq) return; // shown already (a resumed stream repeats none)
    lastSeq = line.seq;
    lines.append(logLine(line));
  };
  const ended = (end) => {
    state.textContent = `Stream ended: the job is ${text(end.state)}; `
      + (end.last_seq ? `its last line is ${end.last_seq}.` : "it logged no lines.");
  };
  (async () => {
    let loaded = false;
    while (!signal.aborted) {
      try {
        if (!loaded) {
          const page = await get(`/v1/jobs/${enc(jobId)}/logs`, { limit: LOG_PAGE_LINES });
          page.lines.forEach(add);
          loaded = true;
          if (page.final && page.next_cursor === null) {
            ended({ state: page.state, last_seq: page.last_seq });
            return;
          }
        }
        state.textContent = "Live: new lines appear as the worker sends them.";
        let end = null;
        await stream(`/v1/jobs/${enc(jobId)}/logs?follow=1`, (event) => {
          let data;
          try {
            data = JSON.parse(event.data);
          } catch (_) {
            return;
          }
          if (event.event === "line") add(data);
          else if (event.event === "end") end = data;
          else if (event.event === "error") state.textContent = `The server stopped the stream: ${text(data.message)}`;
        }, { signal, lastEventId: String(lastSeq), idleMs: LOG_IDLE_MS });
        if (end) {
          ended(end);
          return;
        }
        if (!signal.aborted) state.textContent = "The log stream closed before the job ended; reconnecting…";
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status < 500) {
          state.textContent = `No log: ${error.message}`;
          return;
        }
        state.textContent = `The log stream dropped (${error.message}); reconnecting…`;
      }
      await sleep(LOG_RETRY_MS, signal);
    }
  })();
  return { node: section("Log", state, lines), stop: () => controller.abort() };
}

async function job(context) {
  const jobId = context.params.id;
  const first = await get(`/v1/jobs/${enc(jobId)}`);
  const details = el("div", {}, jobDetails(context, first));
  const log = jobLog(jobId);
  const reload = debounced(async () => {
    try {
      const fresh = await get(`/v1/jobs/${enc(jobId)}`);
      if (context.current()) details.replaceChildren(jobDetails(context, fresh));
    } catch (error) {
      context.setStatus(`Could not refresh the job: ${error.message}`);
    }
  }, 300);
  const node = el("div", { class: "page job" }, details, log.node);
  return {
    node,
    onEvent: (event) => {
      if (event.data && event.data.job && event.data.job.id === jobId) reload();
    },
    stop: log.stop,
  };
}

// -- dead letters --------------------------------------------------------------------------------------------------
async function deadletters(context) {
  const page = await get("/v1/deadletter", { tenant: context.params.tenant, type: context.params.type, limit: 200 });
  const operate = context.can(OPERATE);
  const chosen = new Set();
  const replay = async (jobIds) => {
    const answer = await context.ask(`Replay ${jobIds.length} dead letter${jobIds.length === 1 ? "" : "s"}`,
      { text: "Each runs again as a new high-priority job; the reason goes to the audit log." });
    if (!answer) return;
    const body = { job_ids: jobIds };
    if (answer.reason) body.reason = answer.reason;
    const made = await act(context, "Replay", () => post("/v1/deadletter/replay-bulk", body));
    if (made) context.setStatus(`Replayed: ${text(made.replayed !== undefined ? made.replayed : made)}`);
  };
  const columns = [
    { title: "job", value: (job) => jobLink(job.job_id) },
    { title: "tenant", value: (job) => job.tenant },
    { title: "project", value: (job) => job.project },
    { title: "type", value: (job) => job.type },
    { title: "attempts", value: (job) => `${job.attempts}/${job.max_attempts}` },
    { title: "died", value: (job) => job.finished_at },
    { title: "error", value: (job) => job.last_error },
  ];
  if (operate) {
    columns.unshift({ title: "pick", value: (job) => {
      const box = el("input", { type: "checkbox", "aria-label": `pick ${job.job_id}`, "data-job": job.job_id });
      box.addEventListener("change", () => (box.checked ? chosen.add(job.job_id) : chosen.delete(job.job_id)));
      return box;
    } });
    columns.push({ title: "", value: (job) => button("Replay", () => replay([job.job_id]), { "data-job": job.job_id }) });
  }
  const node = el("div", { class: "page" }, el("h1", {}, "Dead letters"),
    operate ? el("div", { class: "actions" }, button("Replay selected", () => {
      if (chosen.size) replay([...chosen]);
      else context.setStatus("Pick the dead letters to replay first.");
    })) : null,
    table(columns, page.jobs, { empty: "no dead letters" }));
  return { node };
}

// -- backfills -----------------------------------------------------------------------------------------------------
async function backfills(context) {
  const page = await get("/v1/backfills");
  const shown = await Promise.all(page.backfills.map((b) => get(`/v1/backfills/${enc(b.backfill_id)}`).catch(() => b)));
  const manage = context.can(BACKFILL);
  const columns = [
    { title: "backfill", value: (b) => el("span", { class: "mono" }, b.backfill_id) },
    { title: "tenant / project", value: (b) => `${b.tenant} / ${b.project}` },
    { title: "type", value: (b) => b.type },
    { title: "windows", value: (b) => `${b.windows} × ${b.step} from ${b.from} to ${b.to}` },
    { title: "progress", value: (b) => b.progress ? `${b.progress.done} of ${b.progress.total} done (${counts(b.progress.by_state)})` : "—" },
    { title: "watermark", value: (b) => b.watermark },
    { title: "state", value: (b) => b.state + (b.cancel_reason ? `: ${b.cancel_reason}` : "") },
    { title: "reason / ticket", value: (b) => `${b.reason} / ${b.ticket}` },
  ];
  if (manage) {
    columns.push({ title: "", value: (b) => b.state !== "active" ? "" : button("Cancel backfill", async () => {
      const answer = await context.ask(`Cancel backfill ${b.backfill_id}`, { needsReason: true,
        text: "Its queued jobs are canceled and its running ones asked to stop." });
      if (answer) await act(context, "Cancel", () => post(`/v1/backfills/${enc(b.backfill_id)}/cancel`, undefined, answer));
    }) });
  }
  const create = manage ? form("Create a backfill", [
    { name: "tenant", label: "tenant", required: true, value: (context.who.tenants || [])[0] },
    { name: "project", label: "project", required: true },
    { name: "type", label: "type", required: true },
    { name: "from", label: "from (UTC)", required: true, placeholder: "2026-01-01T00:00:00Z" },
    { name: "to", label: "to (UTC)", required: true, placeholder: "2026-01-02T00:00:00Z" },
    { name: "step", label: "step", required: true, placeholder: "1h" },
  ], "Create backfill", async (values) => {
    const answer = await context.ask("Create a backfill", { needsReason: true, needsTicket: true,
      text: `One ${values.type} job per ${values.step} window.` });
    if (answer) await act(context, "Backfill", () => post("/v1/backfills", values, answer));
  }) : null;
  const node = el("div", { class: "page" }, el("h1", {}, "Backfills"),
    table(columns, shown, { empty: "no backfills" }), create);
  return { node, onEvent: debounced(context.refresh, 2000) };
}

// -- flow control --------------------------------------------------------------------------------------------------
function numbers(values, names) {
  const body = {};
  for (const [name, value] of Object.entries(values)) {
    if (value === "") continue;
    body[name] = names.includes(name) ? Number(value) : value;
  }
  return body;
}

async function flow(context) {
  const [quotas, rates, concurrency, breakers, queues] = await Promise.all([
    get("/v1/quotas"), get("/v1/ratelimits"), get("/v1/concurrency"), get("/v1/breakers"), get("/v1/queues"),
  ]);
  const change = context.can(QUOTA);
  // A restricted token may pause only what is its tenants' (the server refuses queues): no buttons that would fail.
  const pauseQueues = context.can(OPERATE) && context.who.tenants === null;
  const remove = (what, path, body) => button("Remove", async () => {
    const answer = await context.ask(`Remove ${what}`, { needsReason: true });
    if (answer) await act(context, "Remove", () => post(path, body, answer));
  });
  const withRemove = (columns, make) => change ? [...columns, { title: "", value: make }] : columns;
  const setter = (title, fields, numeric, path) => change ? form(title, fields, "Set", async (values) => {
    const answer = await context.ask(title, { needsReason: true });
    if (!answer) return;
    const target = typeof path === "function" ? path(values) : path;
    const body = numbers(values, numeric);
    if (typeof path === "function") delete body.tenant;
    await act(context, title, () => post(target, body, answer));
  }) : null;
  const updated = { title: "changed", value: (row) => `${row.updated_at} by ${row.updated_by}: ${row.reason}` + (row.ticket ? ` (${row.ticket})` : "") };
  const node = el("div", { class: "page" }, el("h1", {}, "Flow control"),
    section("Quotas", table(withRemove([
      { title: "tenant", value: (q) => q.tenant },
      { title: "max active", value: (q) => q.max_active },
      { title: "max per hour", value: (q) => q.max_per_hour },
      { title: "burst", value: (q) => q.burst },
      { title: "in use", value: (q) => `${q.use.active} active` + (q.use.claims_left !== null ? `, ${q.use.claims_left} claims left` : "") },
      updated,
    ], (q) => remove(`the quota of ${q.tenant}`, `/v1/quotas/${enc(q.tenant)}/delete`)), quotas.quotas, { empty: "no quotas" }),
    setter("Set a quota", [
      { name: "tenant", label: "tenant", required: true, value: (context.who.tenants || [])[0] },
      { name: "max_active", label: "max active", type: "number" },
      { name: "max_per_hour", label: "max per hour", type: "number" },
      { name: "burst", label: "burst", type: "number" },
    ], ["max_active", "max_per_hour", "burst"], (values) => `/v1/quotas/${enc(values.tenant)}`)),
    section("Rate limits", table(withRemove([
      { title: "scope", value: (r) => r.scope },
      { title: "rate per second", value: (r) => r.rate_per_second },
      { title: "burst", value: (r) => r.burst },
      { title: "tokens now", value: (r) => r.tokens },
      updated,
    ], (r) => remove(`the rate limit on ${r.scope}`, "/v1/ratelimits/delete",
      r.key ? { key: r.key } : { tenant: r.tenant || undefined, type: r.job_type || undefined })),
    rates.rate_limits, { empty: "no rate limits" }),
    setter("Set a rate limit", [
      { name: "tenant", label: "tenant", value: (context.who.tenants || [])[0] },
      { name: "type", label: "type" },
      { name: "key", label: "or key" },
      { name: "rate", label: "jobs per second", type: "number", required: true },
      { name: "burst", label: "burst", type: "number", required: true },
    ], ["rate", "burst"], "/v1/ratelimits")),
    section("Concurrency limits", table(withRemove([
      { title: "key", value: (c) => c.key },
      { title: "max active", value: (c) => c.max_active },
      { title: "active now", value: (c) => c.active },
      updated,
    ], (c) => remove(`the concurrency limit on ${c.key}`, "/v1/concurrency/delete", { key: c.key })),
    concurrency.concurrency_limits, { empty: "no concurrency limits" }),
    setter("Set a concurrency limit", [
      { name: "key", label: "key", required: true, placeholder: "tenant:NAME" },
      { name: "max", label: "max active", type: "number", required: true },
    ], ["max"], "/v1/concurrency")),
    section("Circuit breakers", table(withRemove([
      { title: "key", value: (b) => b.key },
      { title: "state", value: (b) => b.state },
      { title: "failures", value: (b) => `${b.consecutive_failures} of ${b.failure_threshold}` },
      { title: "cool-down", value: (b) => `${b.cooldown_seconds} s` },
      { title: "opened", value: (b) => b.opened_at },
      updated,
    ], (b) => remove(`the breaker on ${b.key}`, "/v1/breakers/delete", { key: b.key })),
    breakers.breakers, { empty: "no circuit breakers" }),
    setter("Set a circuit breaker", [
      { name: "key", label: "key", required: true, placeholder: "tenant:NAME" },
      { name: "failures", label: "failures to open", type: "number", required: true },
      { name: "cooldown", label: "cool-down (s)", type: "number", required: true },
    ], ["failures", "cooldown"], "/v1/breakers")),
    section("Queues", table([
      { title: "queue", value: (q) => q.queue },
      { title: "jobs", value: (q) => counts(q.jobs) },
      { title: "paused", value: (q) => pauseText(q.paused) },
      ...(pauseQueues ? [{ title: "", value: (q) => q.paused
        ? button("Resume queue", async () => {
          const answer = await context.ask(`Resume queue ${q.queue}`);
          if (answer) await act(context, "Resume", () => post(`/v1/queues/${enc(q.queue)}/resume`, undefined, answer));
        })
        : button("Pause queue", async () => {
          const answer = await context.ask(`Pause queue ${q.queue}`, { needsReason: true });
          if (answer) await act(context, "Pause", () => post(`/v1/queues/${enc(q.queue)}/pause`, undefined, answer));
        }) }] : []),
    ], queues.queues, { empty: "no queues" })));
  return { node };
}

// -- sources and schedules -----------------------------------------------------------------------------------------
async function sources(context) {
  const page = await get("/v1/sources");
  const operate = context.can(OPERATE);
  const columns = [
    { title: "source", value: (s) => s.name },
    { title: "tenant / project", value: (s) => `${s.tenant} / ${s.project}` },
    { title: "type", value: (s) => s.type },
    { title: "schedule (UTC)", value: (s) => s.schedule },
    { title: "last tick", value: (s) => s.last_tick },
    { title: "next tick", value: (s) => s.next_tick },
    { title: "paused", value: (s) => pauseText(s.paused) },
  ];
  if (operate) {
    columns.push({ title: "", value: (s) => s.paused
      ? button("Resume source", async () => {
        const answer = await context.ask(`Resume source ${s.name}`, { text: "Missed ticks meet its missed-tick policy." });
        if (answer) await act(context, "Resume", () => post(`/v1/sources/${enc(s.name)}/resume`, undefined, answer));
      }, { "data-source": s.name })
      : button("Pause source", async () => {
        const answer = await context.ask(`Pause source ${s.name}`, { needsReason: true });
        if (answer) await act(context, "Pause", () => post(`/v1/sources/${enc(s.name)}/pause`, undefined, answer));
      }, { "data-source": s.name }) });
  }
  const node = el("div", { class: "page" }, el("h1", {}, "Sources and schedules"),
    table(columns, page.sources, { empty: "no sources" }));
  return { node };
}

// -- air gap -------------------------------------------------------------------------------------------------------
// The answers of GET /v1/trust (trust.show), GET /v1/airgap/status and GET /v1/bundles (bundles.list).
const keyCount = (role) => `${role.threshold} of ${role.keyids.length} key(s)`;

function checkList(checks) {
  if (!checks || !checks.length) return el("span", { class: "empty" }, "no checks recorded");
  return el("ul", { class: "checks" }, checks.map((check) => el("li", { class: check.ok ? "ok" : "error",
    "data-check": check.name }, `${check.ok ? "passed" : "FAILED"} ${check.name}: ${check.detail}`)));
}

function staleness(status) {
  const found = status.staleness;
  if (!found) return el("p", { class: "empty" }, "no time anchor yet: no bundle imported, so no staleness");
  return keyValues({
    "latest time anchor": status.latest_anchor,
    state: found.state + (status.refused ? " (imports refused)" : ""),
    mode: found.mode,
    "bundle age": age(found.age_seconds),
    "budget left": found.budget_left_seconds === null || found.budget_left_seconds === undefined ? "—"
      : `${age(found.budget_left_seconds)} (${Math.round(found.budget_left_seconds)} s)`,
    "clock drift": found.drift_seconds === null || found.drift_seconds === undefined ? "—" : `${found.drift_seconds} s`,
    message: found.message,
  });
}

function refusedSummary(bundles) {
  const shown = (bundles.refused_imports || []).length;
  const total = bundles.refused_imports_total || 0;
  return `${total} refused import(s), newest first` + (total > shown ? `; the latest ${shown} shown` : "")
    + "; each left its copy in <ledger>.quarantine/ and an audit entry (bundle.import)";
}

async function airgap() {
  const [status, bundles, trust] = await Promise.all([
    get("/v1/airgap/status"), get("/v1/bundles"),
    get("/v1/trust").catch((error) => ({ missing: error.message })),
  ]);
  const roles = trust.missing ? [] : [
    ...Object.entries(trust.roles || {}).map(([name, role]) => ({ kind: "role", name, role })),
    ...Object.entries(trust.sites || {}).map(([name, role]) => ({ kind: "site", name, role })),
  ];
  const node = el("div", { class: "page airgap" }, el("h1", {}, "Air gap"),
    el("p", { class: "summary" }, `This site: ${status.site_id}`
      + (status.policy_authority ? `; policy authority ${text(status.policy_authority)}` : "")),
    section("Pinned trust root", trust.missing ? el("p", { class: "empty" }, trust.missing) : [
      keyValues({ version: trust.version, expires: trust.expires + (trust.expired ? " (EXPIRED)" : ""),
        fingerprint: trust.fingerprint, "pinned at": trust.pinned_at, "pinned by": trust.pinned_by }),
      table([
        { title: "role or site", value: (row) => `${row.kind} ${row.name}` },
        { title: "threshold", value: (row) => keyCount(row.role) },
      ], roles, { empty: "no roles" })]),
    section("Time anchor, staleness and budget left", staleness(status)),
    section("Sequence floors per source site", table([
      { title: "source site", value: (floor) => floor.source_site },
      { title: "floor (last sequence imported)", value: (floor) => floor.sequence },
      { title: "its bundle created", value: (floor) => floor.created_at },
      { title: "imports", value: (floor) => floor.imports },
    ], status.floors || [], { empty: "no bundle imported yet: no floors" })),
    section("Refused imports", [
      bundles.refused_imports_total ? el("p", { class: "summary" }, refusedSummary(bundles)) : null,
      table([
        { title: "at", value: (row) => `${row.at} by ${row.actor}` },
        { title: "reason", value: (row) => el("span", { class: "mono error" }, row.reason_code) },
        { title: "from", value: (row) => row.source_site ? `${row.source_site} #${row.sequence}`
          : "not known (the manifest did not verify)" },
        { title: "message", value: (row) => row.message },
        { title: "checks", value: (row) => checkList(row.checks) },
        { title: "quarantine copy", value: (row) => el("span", { class: "mono" }, row.quarantine_file) },
      ], bundles.refused_imports || [], { empty: "no refused imports" })]),
    section("Imports", table([
      { title: "from", value: (row) => `${row.source_site} #${row.sequence}` },
      { title: "kind", value: (row) => row.kind },
      { title: "bundle", value: (row) => el("span", { class: "mono" }, row.bundle_id) },
      { title: "created", value: (row) => row.created_at },
      { title: "imported", value: (row) => `${row.imported_at} by ${row.imported_by}` },
      { title: "outcome", value: (row) => row.outcome },
      { title: "checks", value: (row) => checkList(row.checks) },
    ], bundles.imports || [], { empty: "no imports" })),
    section("Exports", table([
      { title: "to", value: (row) => `${row.target_site} #${row.sequence}` },
      { title: "kind", value: (row) => row.kind + (row.base_sequence ? ` (base ${row.base_sequence})` : "") },
      { title: "tenant", value: (row) => row.tenant || "every tenant" },
      { title: "bundle", value: (row) => el("span", { class: "mono" }, row.bundle_id) },
      { title: "size", value: (row) => `${row.size_bytes} bytes` },
      { title: "exported", value: (row) => `${row.exported_at} by ${row.exported_by}` },
      { title: "jobs handed off", value: (row) => row.handed_off },
    ], bundles.exports || [], { empty: "no exports" })),
    section("Mirrors per source site", table([
      { title: "source site", value: (row) => row[0] },
      { title: "rows mirrored", value: (row) => Object.entries(row[1]).map(([name, count]) => `${name} ${count}`)
        .join(", ") },
    ], Object.entries(bundles.mirrors || {}), { empty: "no mirrors" })),
    section("Superseded imports", objectTable(bundles.superseded_imports || [], "none")));
  return { node };
}

// -- audit log -----------------------------------------------------------------------------------------------------
async function audit(context) {
  const wanted = { action: context.params.action || "", actor: context.params.actor || "",
    since: context.params.since || "" };
  // The ledger filters (GET /v1/audit ?action= &by=): a page holds up to 200 matching entries, oldest first, and
  // "Next page" follows the answer's cursor however many other entries lie between.
  const [page, verified] = await Promise.all([
    get("/v1/audit", { since: wanted.since, action: wanted.action, by: wanted.actor, cursor: context.params.cursor,
      limit: 200 }),
    post("/v1/audit/verify").catch((error) => ({ ok: false, error: error.message })),
  ]);
  const go = (values) => {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(values)) if (value) query.set(name, value);
    location.hash = "#/audit" + (query.toString() ? "?" + query : "");
  };
  const filter = form("Filter the audit log", [
    { name: "action", label: "action (exact)", value: wanted.action, placeholder: "quota.set" },
    { name: "actor", label: "actor (exact)", value: wanted.actor, placeholder: "token:alice" },
    { name: "since", label: "since (UTC)", value: wanted.since, placeholder: "2026-01-01T00:00:00Z" },
  ], "Filter", go);
  const chain = verified.ok
    ? el("p", { class: "ok" }, `Hash chain verified: ${verified.audit_entries} entries checked at ${verified.checked_at}.`)
    : el("p", { class: "error" }, `Hash chain NOT verified: ${verified.error || JSON.stringify(verified)}`);
  const node = el("div", { class: "page" }, el("h1", {}, "Audit log"), chain, filter, table([
    { title: "seq", value: (entry) => entry.seq },
    { title: "at", value: (entry) => entry.at },
    { title: "action", value: (entry) => entry.action },
    { title: "actor", value: (entry) => entry.actor },
    { title: "target", value: (entry) => entry.target },
    { title: "reason", value: (entry) => entry.reason },
    { title: "ticket", value: (entry) => entry.ticket },
    { title: "details", value: (entry) => el("details", {}, el("summary", {}, "details"), pre(entry.details)) },
  ], page.entries, { empty: "no audit entries match" }),
  el("div", { class: "actions" },
    context.params.cursor ? button("First page", () => go(wanted)) : null,
    page.next_cursor ? button("Next page", () => go({ ...wanted, cursor: page.next_cursor })) : null));
  return { node };
}

// path -> page; `scope`: the token needs it to see the page (it appears in the navigation only then).
export const PAGES = {
  overview: { title: "Overview", scope: READ, render: overview },
  jobs: { title: "Jobs", scope: READ, render: jobs },
  deadletters: { title: "Dead letters", scope: READ, render: deadletters },
  backfills: { title: "Backfills", scope: READ, render: backfills },
  flow: { title: "Flow control", scope: READ, render: flow },
  sources: { title: "Sources", scope: READ, render: sources },
  airgap: { title: "Air gap", scope: AIRGAP, render: airgap },
  audit: { title: "Audit log", scope: READ, render: audit },
};
const JOB = { title: "Job", scope: READ, render: job };

// "#/jobs/ID?x=1" -> {path: "jobs/ID", page, params: {id, x}}
export function route(hash) {
  const raw = (hash || "").replace(/^#\/?/, "");
  const [path, query] = raw.split("?", 2);
  const params = Object.fromEntries(new URLSearchParams(query || ""));
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts.length === 2) {
    return { path: "jobs", page: JOB, params: { ...params, id: decodeURIComponent(parts[1]) } };
  }
  const name = parts[0] && PAGES[parts[0]] ? parts[0] : "overview";
  return { path: name, page: PAGES[name], params };
}

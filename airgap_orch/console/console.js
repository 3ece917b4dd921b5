// The console's shell: sign-in, navigation (hash routes), the live event stream, and the reason dialog.
// Pages are in pages.js; each renders into #page from the JSON API and may refresh itself on events.

import { ApiError, get, setToken, stream } from "./api.js";
import { el } from "./dom.js";
import { PAGES, route } from "./pages.js";

const state = {
  who: null, // GET /v1/whoami: {subject, authenticated, tenants, scopes}
  page: null, // the page object on screen: {onEvent?(event), stop?()}
  events: null, // AbortController of the /events stream
  lastEventId: null,
  render: 0, // render generation: an answer for a page left since is dropped
};

const $ = (id) => document.getElementById(id);

function can(scope) {
  return Boolean(state.who && state.who.scopes.includes(scope));
}

function setStatus(message) {
  $("status").textContent = message || "";
}

// Ask for the reason (and ticket) an operator action records in the audit log; resolves {reason, ticket} or null.
function ask(title, { text = "", needsReason = false, needsTicket = false } = {}) {
  const dialog = $("ask");
  $("ask-title").textContent = title;
  $("ask-text").textContent = text;
  $("ask-error").textContent = "";
  const reason = $("ask-reason");
  const ticket = $("ask-ticket");
  reason.value = "";
  ticket.value = "";
  reason.required = needsReason;
  ticket.required = needsTicket;
  $("ask-reason").previousElementSibling.textContent = needsReason ? "Reason (required)" : "Reason";
  $("ask-ticket").previousElementSibling.textContent = needsTicket ? "Ticket (required)" : "Ticket";
  return new Promise((resolve) => {
    const done = (value) => {
      $("ask-form").removeEventListener("submit", submit);
      $("ask-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      dialog.close();
      resolve(value);
    };
    const submit = (event) => {
      event.preventDefault();
      if ((needsReason && !reason.value.trim()) || (needsTicket && !ticket.value.trim())) {
        $("ask-error").textContent = "Say why: this goes to the audit log.";
        return;
      }
      done({ reason: reason.value.trim() || undefined, ticket: ticket.value.trim() || undefined });
    };
    const cancel = (event) => {
      event.preventDefault();
      done(null);
    };
    $("ask-form").addEventListener("submit", submit);
    $("ask-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
    reason.focus();
  });
}

// The pages this token may open (whoami needs no scope, so a worker-only token signs in and may open none).
function allowedPages() {
  return Object.entries(PAGES).filter(([, page]) => !page.scope || can(page.scope));
}

// What a page the token may not open shows instead: the scope it needs, and what the token may open.
function needsScope(page) {
  const allowed = allowedPages();
  const scopes = state.who.scopes.join(" ") || "none";
  return el("div", { class: "page needs-scope" },
    el("h1", {}, page.title),
    el("p", { class: "note" }, `This page needs scope ${page.scope}; this token carries: ${scopes}.`),
    allowed.length
      ? el("p", {}, "It may open: ", allowed.flatMap(([path, shown], index) => [index ? ", " : "",
        el("a", { href: `#/${path}` }, shown.title)]))
      : el("p", {}, "It may open no page of the console: they need orch:read (the Air gap page orch:airgap). "
        + "It may still call the routes its scopes allow."));
}

function renderNav() {
  const nav = $("nav");
  nav.replaceChildren();
  for (const [path, page] of allowedPages()) {
    nav.append(el("a", { href: `#/${path}`, "data-page": path }, page.title));
  }
  const who = state.who;
  $("who").textContent = who.authenticated
    ? `${who.subject} · ${who.tenants.join(", ")} · ${who.scopes.join(" ")}`
    : "open server (no token needed): every tenant and scope";
  $("sign-out").hidden = !who.authenticated;
}

async function show() {
  if (!state.who) return;
  const generation = ++state.render;
  if (state.page && state.page.stop) state.page.stop();
  state.page = null;
  setStatus("");
  let { path, page, params } = route(location.hash);
  // No page asked for (the overview by default) and the overview is not allowed: the first page that is.
  const first = allowedPages()[0];
  if (!location.hash.replace(/^#\/?/, "") && page.scope && !can(page.scope) && first) {
    [path, page, params] = [first[0], first[1], {}];
  }
  for (const link of $("nav").querySelectorAll("a")) {
    link.classList.toggle("current", link.dataset.page === path.split("/")[0]);
  }
  const target = $("page");
  const context = {
    who: state.who, can, ask, setStatus, params,
    current: () => generation === state.render,
    refresh: () => { if (generation === state.render) show(); },
  };
  if (page.scope && !can(page.scope)) {
    target.replaceChildren(needsScope(page));
    return;
  }
  try {
    const shown = await page.render(context);
    if (generation !== state.render) {
      if (shown && shown.stop) shown.stop();
      return;
    }
    target.replaceChildren(shown.node);
    state.page = shown;
  } catch (error) {
    if (generation !== state.render) return;
    target.replaceChildren(el("p", { class: "error" }, `Could not load this page: ${error.message}`));
    if (error instanceof ApiError && error.status === 401) signOut("The server refused the token: " + error.message);
  }
}

// One /events stream while signed in: each event goes to the page on screen; resumed with Last-Event-ID.
async function follow() {
  const controller = new AbortController();
  state.events = controller;
  let delay = 1000;
  while (!controller.signal.aborted) {
    try {
      $("live").textContent = "live";
      $("live").className = "live on";
      state.lastEventId = await stream("/events", (event) => {
        delay = 1000;
        if (state.page && state.page.onEvent) {
          let data = event.data;
          try {
            data = JSON.parse(event.data);
          } catch (_) {
            // a gap message carries text
          }
          state.page.onEvent({ ...event, data });
        }
      }, { signal: controller.signal, lastEventId: state.lastEventId });
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        $("live").textContent = "not live: " + error.message;
        $("live").className = "live off";
        return;
      }
    }
    $("live").textContent = "reconnecting";
    $("live").className = "live off";
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

async function signIn(value) {
  setToken(value);
  const who = await get("/v1/whoami");
  state.who = who;
  $("sign-in").hidden = true;
  renderNav();
  if (can("orch:read")) follow(); // GET /events needs orch:read
  else {
    $("live").textContent = "not live: the event stream needs orch:read";
    $("live").className = "live off";
  }
  await show();
}

function signOut(message) {
  setToken(null);
  state.who = null;
  if (state.events) state.events.abort();
  if (state.page && state.page.stop) state.page.stop();
  state.page = null;
  state.render++;
  $("page").replaceChildren();
  $("nav").replaceChildren();
  $("who").textContent = "";
  $("live").textContent = "";
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("token");
    const value = input.value.trim();
    input.value = ""; // the field holds it no longer than the sign-in takes
    $("sign-in-error").textContent = "";
    try {
      await signIn(value);
    } catch (error) {
      setToken(null);
      state.who = null;
      $("sign-in-error").textContent = `Sign-in refused: ${error.message}`;
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", show);
  // An open server (serve --no-auth) answers whoami without a token: no sign-in then.
  try {
    await signIn(null);
  } catch (_) {
    signOut("");
  }
}

start();

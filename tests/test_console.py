"""The operator console (/console) in a real headless browser: Debian's chromium driven by Playwright, against a
real server on a real, seeded ledger (tests/console_fixtures.py). One server and one browser per module.

Under CI=true a missing browser or Playwright fails these tests instead of skipping them. Screenshots go to a
temporary directory (scripts/console_screenshots.py regenerates the ones in docs/console/).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import wait_for
from console_fixtures import (
    HOSTILE_ERROR,
    HOSTILE_PAYLOAD,
    HOSTILE_URI,
    SAFE_URI,
    T1,
    T2,
    Site,
    browser_missing,
    console_site,
    launch_browser,
)
from server_fixtures import assert_problem, init_ledger, run_cli, send, serving

from airgap_orch.server.console import CONTENT_SECURITY_POLICY

PAGES = {  # hash route -> a text the page shows from the seeded ledger
    "#/overview": "disk full on the bulk workers",
    "#/jobs": "vex.ingest",
    "#/deadletters": "upstream said",
    "#/backfills": "missed feed window",
    "#/flow": "upstream cap",
    "#/sources": "nvd-feed",
    "#/airgap": "no trust root is pinned",
    "#/audit": "Hash chain verified",
}
ACTION_BUTTONS = re.compile(r"^(Replay|Replay selected|Replay job|Cancel job|Cancel backfill|Create backfill|Set|"
                            r"Remove|Pause source|Resume source|Pause queue|Resume queue)$")


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with console_site(tmp_path_factory.mktemp("console")) as made:
        yield made


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = browser_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the console tests need a browser under CI=true: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = launch_browser(playwright)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


class Console:
    """One browser context on the console: what it logged (console errors, dialogs) and how to drive it."""

    def __init__(self, browser: Any, url: str, shots: Path):
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.url = url
        self.shots = shots
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self._dialog)
        self.page.set_default_timeout(20_000)

    def _console(self, message: Any) -> None:
        # A refused request (the token probe's 401, a 404) is the page's business: it shows the server's detail.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def sign_in(self, token: str) -> None:
        self.page.goto(self.url + "/console")
        self.page.fill("#token", token)
        self.page.click("#sign-in-form button[type=submit]")
        self.page.wait_for_selector("#nav a")

    def sign_in_bare(self, token: str) -> None:
        """Sign in with a token that may open no page (the navigation stays empty)."""
        self.page.goto(self.url + "/console")
        self.page.fill("#token", token)
        self.page.click("#sign-in-form button[type=submit]")
        self.page.wait_for_selector("#sign-in[hidden]", state="attached")

    def open(self, route: str, expect: str | None = None) -> str:
        """Show the page at hash `route` and wait for `expect` in it (or for it to load); its text."""
        self.page.evaluate("route => { location.hash = route; }", route)
        # Locator waits, not wait_for_function: the page's CSP refuses the eval that one needs.
        self.wait_for(expect)
        return self.page.inner_text("#page")

    def wait_for(self, text: str | None, where: str = "#page") -> None:
        if text is None:
            self.page.locator(where + " > *").first.wait_for()
        else:
            self.page.locator(where, has_text=text).wait_for()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser: Any, site: Site, shots: Path) -> Iterator[Console]:
    opened = Console(browser, site.server.url, shots)
    try:
        yield opened
    finally:
        opened.close()


def ok(site: Site, method: str, path: str, token: str = "t1", **kwargs: Any) -> Any:
    response = send(site.server.url, method, path, token=site.tokens[token], **kwargs)
    assert response.status == 200, response
    return response.json


# -- the server side: files, headers, whoami, the gate -----------------------------------------------------------
def test_the_console_is_served_with_a_strict_content_security_policy_and_no_inline_code(site):
    for path in ("/console", "/console/", "/console/console.js", "/console/console.css", "/console/pages.js"):
        response = send(site.server.url, "GET", path)
        assert response.status == 200, (path, response)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
    html = send(site.server.url, "GET", "/console").body.decode()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # every script is a file
    assert "<style" not in html and " style=" not in html and re.search(r"\son[a-z]+=", html) is None
    assert "http://" not in html and "https://" not in html  # nothing from another origin: no CDN, no font
    for path in ("/console/../api.py", "/console/nothing.js", "/console/.hidden.js"):
        assert send(site.server.url, "GET", path).status == 404, path


def test_whoami_answers_the_tokens_subject_tenants_and_scopes(site):
    assert ok(site, "GET", "/v1/whoami") == {
        "subject": "alice", "actor": "token:alice", "authenticated": True, "tenants": [T1],
        "scopes": ["orch:read", "orch:operate", "orch:quota", "orch:backfill", "orch:worker", "orch:airgap"]}
    assert ok(site, "GET", "/v1/whoami", token="reader")["scopes"] == ["orch:read", "orch:airgap"]
    assert_problem(send(site.server.url, "GET", "/v1/whoami"), 401, exit_code=7)
    through_cli = run_cli("--server", site.server.url, "--token", site.tokens["t2"], "whoami", "--json")
    assert through_cli.code == 0, through_cli
    assert through_cli.json["subject"] == "bob" and through_cli.json["tenants"] == [T2]


def test_whoami_needs_a_valid_token_and_no_scope(site):
    """A worker-only token (and an air-gap-only one) asks whoami too: it tells a token only its own claims."""
    assert ok(site, "GET", "/v1/whoami", token="worker") == {
        "subject": "runner", "actor": "token:runner", "authenticated": True, "tenants": [T1],
        "scopes": ["orch:worker"]}
    assert ok(site, "GET", "/v1/whoami", token="airgap")["scopes"] == ["orch:airgap"]
    through_cli = run_cli("--server", site.server.url, "--token", site.tokens["worker"], "whoami", "--json")
    assert through_cli.code == 0 and through_cli.json["scopes"] == ["orch:worker"], through_cli
    assert_problem(send(site.server.url, "GET", "/v1/whoami", token=site.tokens["t1"] + "x"), 401, exit_code=7)
    assert_problem(send(site.server.url, "GET", "/v1/jobs", token=site.tokens["worker"]), 403, exit_code=7)


def test_whoami_on_an_open_server_says_no_token_is_checked(tmp_path):
    with serving(init_ledger(tmp_path / "open.duckdb"), "--no-auth") as server:
        answer = send(server.url, "GET", "/v1/whoami").json
    assert answer["authenticated"] is False and answer["subject"] is None and answer["tenants"] is None
    assert "orch:admin" in answer["scopes"]


def test_a_post_from_the_servers_own_origin_passes_the_gate_and_a_foreign_one_does_not(site):
    """The console's page posts with Origin: the server's own URL (browsers send Origin on every POST)."""
    own = send(site.server.url, "POST", "/v1/jobs/recover", token=site.tokens["t1"],
               headers={"Origin": site.server.url})
    assert own.status == 200, own
    for origin in ("http://evil.example", site.server.url.replace("127.0.0.1", "localhost"),
                   site.server.url.rsplit(":", 1)[0] + ":1"):
        foreign = send(site.server.url, "POST", "/v1/jobs/recover", token=site.tokens["t1"], headers={"Origin": origin})
        assert_problem(foreign, 403, "policy-refused", 5)


def test_queues_list_answers_each_queues_oldest_ready_job_and_jobs_finished_in_the_last_hour(site):
    queues = {queue["queue"]: queue for queue in ok(site, "GET", "/v1/queues")["queues"]}
    default = queues["default"]
    assert default["finished_last_hour"] == 3  # t1's two dead letters and its succeeded job; t2's are not counted
    assert default["oldest_ready_seconds"] >= 0 and default["oldest_ready_at"].endswith("Z")
    assert queues["bulk"]["oldest_ready_at"] is None and queues["bulk"]["paused"]["reason"]


def test_jobs_list_filters_by_project_and_queue(site):
    assert ok(site, "GET", "/v1/jobs", query={"project": "nvd-feed"})["jobs"] == []
    listed = ok(site, "GET", "/v1/jobs", query={"project": "feeds", "queue": "default", "type": "scan.image"})["jobs"]
    assert [job["job_id"] for job in listed] == [site.seeded.running_t1]


# -- in the browser -------------------------------------------------------------------------------------------------
def test_every_page_renders_the_ledger_data_under_the_policy_without_errors(console, site):
    console.sign_in(site.tokens["t1"])
    for route, expect in PAGES.items():
        console.open(route, expect)
        console.shot(route.strip("#/"))
    assert "quota max_active of tenant acme-corp" in console.open("#/overview", "Throttled jobs")  # what holds it
    console.page.emulate_media(media="print")  # printed for an incident record: data only
    assert not console.page.locator("header.top").is_visible()
    assert console.page.locator("#page table").first.is_visible()
    console.page.emulate_media(media="screen")
    text = console.open(f"#/jobs/{site.seeded.running_t1}", "layer 3 of 7")
    assert "scanner-7" in text and "registry/app:1.2" in text and "job.created" in text
    console.shot("job")
    assert console.errors == [] and console.dialogs == []


def test_hostile_payloads_error_texts_and_artifact_uris_render_as_inert_text(console, site):
    console.sign_in(site.tokens["t1"])
    text = console.open(f"#/jobs/{site.seeded.succeeded_t1}", HOSTILE_URI)
    assert HOSTILE_PAYLOAD["note"] in text and HOSTILE_PAYLOAD["close"] in text
    page = console.page
    assert page.locator("#page img").count() == 0 and page.locator("#page script").count() == 0
    assert page.locator("a[href^='javascript']").count() == 0
    assert page.locator(f"a[href='{SAFE_URI}']").count() == 1  # an https artifact is a link
    assert page.locator(".uri", has_text=HOSTILE_URI).count() == 1  # the javascript: one is text
    text = console.open("#/deadletters", "upstream said")
    assert HOSTILE_ERROR + " #0" in text
    assert page.locator("#page img").count() == 0
    assert console.dialogs == [] and console.errors == []


def test_the_token_stays_in_memory_never_in_the_url_or_browser_storage(console, site):
    console.sign_in(site.tokens["t1"])
    console.open("#/jobs", "vex.ingest")
    token = site.tokens["t1"]
    page = console.page
    assert token not in page.url
    stored = page.evaluate("() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage), "
                           "document.cookie, history.length])")
    assert token not in stored
    assert console.context.cookies() == []
    assert page.input_value("#token") == ""
    page.reload()
    page.wait_for_selector("#sign-in:not([hidden])")  # a reload forgets it
    assert page.locator("#nav a").count() == 0


def test_a_replay_by_clicking_lands_in_the_ledger_with_its_audit_entry(console, site):
    dead = site.seeded.dead_t1[0]
    console.sign_in(site.tokens["t1"])
    console.open("#/deadletters", dead)
    console.page.check(f"input[data-job='{dead}']")
    console.page.click("text=Replay selected")
    console.page.fill("#ask-reason", "feed is back (clicked)")
    console.page.click("#ask-confirm")
    replay = wait_for(lambda: [job for job in ok(site, "GET", "/v1/jobs", query={"type": "export.mirror"})["jobs"]
                               if job["replay_of"] == dead], 30, "the replay job")
    assert replay[0]["tenant"] == T1
    entries = ok(site, "GET", "/v1/audit")["entries"]
    assert any(entry["reason"] == "feed is back (clicked)" and entry["actor"] == "token:alice"
               and dead in json.dumps(entry) for entry in entries), entries
    assert console.errors == []


def test_a_quota_change_by_clicking_lands_in_the_ledger_with_its_audit_entry_and_reason(console, site):
    console.sign_in(site.tokens["t1"])
    console.open("#/flow", "upstream cap")
    quota_form = console.page.locator("form[aria-label='Set a quota']")
    quota_form.locator("input[name=tenant]").fill(T1)
    quota_form.locator("input[name=max_active]").fill("7")
    quota_form.locator("button[type=submit]").click()
    console.page.fill("#ask-reason", "incident 42: slow down")
    console.page.fill("#ask-ticket", "INC-42")
    console.page.click("#ask-confirm")
    wait_for(lambda: ok(site, "GET", "/v1/quotas", query={"tenant": T1})["quotas"][0]["max_active"] == 7, 30,
             "the quota change")
    entries = ok(site, "GET", "/v1/audit")["entries"]
    (entry,) = [entry for entry in entries if entry["reason"] == "incident 42: slow down"]
    assert entry["action"] == "quota.set" and entry["ticket"] == "INC-42" and entry["actor"] == "token:alice"
    console.wait_for("incident 42")
    assert console.errors == []


def test_a_tenant_token_never_sees_another_tenants_data_on_any_page(console, site):
    console.sign_in(site.tokens["t1"])
    for route, expect in PAGES.items():
        text = console.open(route, expect)
        assert T2 not in text and "globex" not in text, route
        assert site.seeded.t2_job not in text and site.seeded.dead_t2[0] not in text, route
    text = console.open(f"#/jobs/{site.seeded.t2_job}", "Could not load")
    assert "globex.secret" not in text and f"no job {site.seeded.t2_job}" in text  # as if it did not exist
    assert "globex" not in console.page.inner_text("body")


def test_a_read_only_token_sees_no_action_buttons(console, site):
    console.sign_in(site.tokens["reader"])
    for route, expect in {**PAGES, f"#/jobs/{site.seeded.dead_t1[1]}": "job.created"}.items():
        console.open(route, expect)
        labels = [label.strip() for label in console.page.locator("#page button").all_inner_texts()]
        assert [label for label in labels if ACTION_BUTTONS.match(label)] == [], (route, labels)
        assert console.page.locator("#page input[type=checkbox]").count() == 0, route
    assert console.errors == []


def test_a_worker_only_token_signs_in_and_is_told_which_scope_the_pages_need(console, site):
    console.sign_in_bare(site.tokens["worker"])
    console.wait_for("needs scope orch:read")
    assert console.page.locator("#nav a").count() == 0  # no page it could open
    assert "runner" in console.page.inner_text("#who")
    text = console.page.inner_text("#page")
    assert "this token carries: orch:worker" in text and "It may open no page" in text
    assert console.page.locator("#page button").count() == 0
    assert "needs orch:read" in console.page.inner_text("#live")  # no /events stream that would 403
    text = console.open("#/deadletters", "needs scope orch:read")
    assert "upstream said" not in text
    assert console.errors == []


def test_an_airgap_only_token_opens_the_air_gap_page_and_no_page_that_would_fail(console, site):
    console.sign_in(site.tokens["airgap"])
    assert console.page.locator("#nav a").all_inner_texts() == ["Air gap"]
    console.wait_for("Pinned trust root")  # no page named: the first one it may open
    text = console.open("#/overview", "needs scope orch:read")
    assert "disk full" not in text and "Air gap" in text  # a link to the page it may open
    assert console.errors == []


def test_the_overview_updates_live_when_a_job_is_enqueued(console, site):
    console.sign_in(site.tokens["t1"])
    console.open("#/overview", "disk full on the bulk workers")
    console.page.wait_for_selector("#live.on")
    console.page.evaluate("() => { window.notReloaded = true; }")
    ok(site, "POST", "/v1/jobs", body={"tenant": T1, "project": "feeds", "type": "live.check", "queue": "live-queue"})
    console.wait_for("live-queue")
    assert console.page.evaluate("() => window.notReloaded") is True
    assert console.errors == []


# -- a job's log, live (README "Job logs": lines ride on the worker's heartbeat, ack and fail) --------------------
HOSTILE_LINE = "<img src=x onerror=alert(1)>"


def running_job(site: Site, job_type: str) -> tuple[str, str]:
    """A job of tenant T2 (t1's quota holds its new jobs back) leased by a worker through the HTTP API: its id and
    lease id."""
    job = ok(site, "POST", "/v1/jobs", token="t2", body={"tenant": T2, "project": "feeds", "type": job_type})
    (lease,) = ok(site, "POST", "/v1/jobs/claim", token="t2", body={
        "worker_id": "log-worker", "type": job_type, "limit": 1, "lease_seconds": 600})["leases"]
    assert lease["job_id"] == job["job_id"]
    return job["job_id"], lease["lease_id"]


def heartbeat(site: Site, job_id: str, lease_id: str, *lines: dict[str, str]) -> None:
    ok(site, "POST", f"/v1/jobs/{job_id}/heartbeat", token="t2", body={"lease_id": lease_id, "logs": list(lines)})


def shown_seqs(console: Console) -> list[int]:
    return [int(seq) for seq in console.page.locator("ol.log li .seq").all_inner_texts()]


def wait_for_log_text(console: Console, text: str, where: str = "ol.log", timeout: float = 20) -> None:
    """Poll the panel for `text` until a deadline (no reload in between)."""
    wait_for(lambda: text in console.page.inner_text(where), timeout, f"{text!r} in {where}")


def test_a_jobs_log_appears_live_while_the_job_runs_and_the_stream_ends_with_the_job(console, site):
    job_id, lease_id = running_job(site, "log.live")
    heartbeat(site, job_id, lease_id, {"message": "fetching the feed"})  # stored before the page opens
    console.sign_in(site.tokens["t2"])
    console.open(f"#/jobs/{job_id}", "fetching the feed")
    wait_for_log_text(console, "Live", ".log-state")
    console.page.evaluate("() => { window.notReloaded = true; }")
    heartbeat(site, job_id, lease_id, {"message": HOSTILE_LINE, "level": "warning"},
              {"message": "parsed 42 advisories", "level": "info", "at": "2026-03-01T10:00:00Z"})
    wait_for_log_text(console, "parsed 42 advisories")
    hostile = console.page.locator('ol.log li[data-seq="2"]')
    assert hostile.locator(".message").inner_text() == HOSTILE_LINE  # the markup as text
    assert hostile.locator(".level").inner_text() == "warning"
    assert console.page.locator("ol.log img").count() == 0
    worker_time = console.page.locator('ol.log li[data-seq="3"] .at').inner_text()  # the worker's `at`
    assert worker_time.startswith("2026-03-01T10:00:00"), worker_time
    assert "Stream ended" not in console.page.inner_text(".log-state")
    ok(site, "POST", f"/v1/jobs/{job_id}/ack", token="t2", body={"lease_id": lease_id,
                                                                   "logs": [{"message": "all done"}]})
    wait_for_log_text(console, "Stream ended: the job is succeeded; its last line is 4.", ".log-state")
    assert shown_seqs(console) == [1, 2, 3, 4]
    assert "all done" in console.page.inner_text('ol.log li[data-seq="4"]')
    assert console.page.evaluate("() => window.notReloaded") is True
    assert console.dialogs == [] and console.errors == []


class Relay:
    """A TCP relay on loopback in front of the server: the browser talks to the server through it, and cut() closes
    every connection it carries (the network drops, as a laptop's Wi-Fi does) while new ones still pass. `sent` is
    every byte the browser sent (the request heads)."""

    def __init__(self, target_url: str):
        parts = urlsplit(target_url)
        self.target = (parts.hostname, parts.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.carried: list[socket.socket] = []
        self.sent = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.carried += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_browser: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_browser:
                    with self.lock:
                        self.sent += data
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            carried, self.carried = self.carried, []
        for end in carried:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_jobs_log_resumes_after_a_dropped_connection_with_last_event_id_losing_and_repeating_no_line(
        browser, site, shots):
    job_id, lease_id = running_job(site, "log.resume")
    heartbeat(site, job_id, lease_id, {"message": "line before the drop"})
    relay = Relay(site.server.url)
    console = Console(browser, relay.url, shots)
    try:
        console.sign_in(site.tokens["t2"])
        console.open(f"#/jobs/{job_id}", "line before the drop")
        wait_for_log_text(console, "Live", ".log-state")
        heartbeat(site, job_id, lease_id, {"message": "line 2, streamed"})
        wait_for_log_text(console, "line 2, streamed")
        relay.cut()
        wait_for_log_text(console, "reconnecting", ".log-state")
        heartbeat(site, job_id, lease_id, {"message": "line 3, stored while the console was cut off"})
        wait_for_log_text(console, "line 3, stored while the console was cut off")
        assert b"\r\nlast-event-id: 2\r\n" in bytes(relay.sent).lower()  # resumed after the last line shown
        heartbeat(site, job_id, lease_id, {"message": "line 4, after the reconnect"})
        wait_for_log_text(console, "line 4, after the reconnect")
        assert shown_seqs(console) == [1, 2, 3, 4]
        ok(site, "POST", f"/v1/jobs/{job_id}/ack", token="t2", body={"lease_id": lease_id})
        wait_for_log_text(console, "Stream ended: the job is succeeded", ".log-state")
        assert console.dialogs == []
    finally:
        console.close()
        relay.close()


def test_a_jobs_log_past_its_line_cap_shows_the_dropped_lines_marker(browser, tmp_path, shots):
    ledger = init_ledger(tmp_path / "capped.duckdb")
    with serving(ledger, "--no-auth", "--job-log-lines", "10") as server:
        job = send(server.url, "POST", "/v1/jobs", body={"tenant": T1, "project": "feeds", "type": "chatty"}).json
        (lease,) = send(server.url, "POST", "/v1/jobs/claim", body={"worker_id": "w", "type": "chatty"}).json["leases"]
        lines = [{"message": f"step {n}"} for n in range(1, 26)]
        answer = send(server.url, "POST", f"/v1/jobs/{job['job_id']}/heartbeat",
                      body={"lease_id": lease["lease_id"], "logs": lines})
        assert answer.status == 200, answer
        console = Console(browser, server.url, shots)
        try:
            console.page.goto(server.url + "/console")
            console.page.wait_for_selector("#nav a")
            console.open(f"#/jobs/{job['job_id']}", "step 25")
            marker = console.page.locator("ol.log li.dropped")
            assert marker.count() == 1 and marker.is_visible()
            assert "... 16 earlier lines dropped" in marker.inner_text()
            assert shown_seqs(console) == list(range(16, 26))
            assert console.errors == []
        finally:
            console.close()

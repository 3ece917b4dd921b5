"""The console's pages on what a real ledger holds beyond the seed of test_console.py: an air gap with a pinned root
and an imported bundle (the keys, roots and ledgers of test_bundle_cli.py / test_bundle_import.py), throttled jobs
found in one request, the audit log filtered by the ledger past its first page, and a source pause and resume and a
backfill cancel done by clicking. Real server, real browser (test_console.py's fixtures), no mocks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from console_fixtures import T1, T2, Site, console_site
from export_fixtures import tampered_copy
from server_fixtures import Keys, assert_problem, run_cli, send, serving
from test_bundle_cli import cli, holders, ok, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import bundle, source, target  # noqa: F401 (fixtures)
from test_console import Console, browser, shots  # noqa: F401 (fixtures)

from airgap_orch.sdk.client import OrchClient

QUOTA_REASON = "quota max_active of tenant acme-corp (1)"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with console_site(tmp_path_factory.mktemp("console-data")) as made:
        yield made


@pytest.fixture
def console(browser: Any, site: Site, shots: Path) -> Iterator[Console]:  # noqa: F811
    opened = Console(browser, site.server.url, shots)
    try:
        yield opened
    finally:
        opened.close()


PANEL = "#page section.panel"


def panel(console: Console, title: str) -> str:
    """The text of the page's panel titled `title`."""
    return console.page.locator(f"{PANEL}:has(> h2:text-is('{title}'))").inner_text()


def answer(site: Site, method: str, path: str, token: str = "t1", **kwargs: Any) -> Any:
    response = send(site.server.url, method, path, token=site.tokens[token], **kwargs)
    assert response.status == 200, response
    return response.json


# -- throttled jobs: one request, with their reasons, per tenant ------------------------------------------------
def test_the_throttled_listing_answers_held_back_jobs_with_their_reason_a_page_at_a_time_per_tenant(site):
    client = site.client("t2")
    bulk = client.call("jobs.enqueue", {"spec": {"tenant": T2, "project": "feeds", "type": "globex.bulk",
                                                 "queue": "bulk"}})["job_id"]
    mine = answer(site, "GET", "/v1/throttled", query={"limit": 1000})["jobs"]
    assert mine and {job["tenant"] for job in mine} == {T1}  # t1 never sees t2's held-back job
    assert {job["throttled"]["throttled_by"] for job in mine} == {QUOTA_REASON}
    assert all(job["throttled"]["waits_for"] == "a running job ends" and job["state"] == "queued" for job in mine)
    assert "payload" not in mine[0]
    queued = [job["job_id"] for job in answer(site, "GET", "/v1/jobs", query={"state": "queued"})["jobs"]]
    assert sorted(job["job_id"] for job in mine) == sorted(queued)  # every queued t1 job: the quota holds them all
    first = answer(site, "GET", "/v1/throttled", query={"limit": 2})
    second = answer(site, "GET", "/v1/throttled", query={"limit": 1000, "cursor": first["next_cursor"]})
    assert [job["job_id"] for job in first["jobs"] + second["jobs"]] == [job["job_id"] for job in mine]
    assert second["next_cursor"] is None
    theirs = answer(site, "GET", "/v1/throttled", token="t2")["jobs"]
    assert [(job["job_id"], job["throttled"]["throttled_by"]) for job in theirs] == [(bulk, "queue bulk paused")]
    assert_problem(send(site.server.url, "GET", "/v1/throttled", token=site.tokens["worker"]), 403, exit_code=7)
    listed = run_cli("--server", site.server.url, "--token", site.tokens["t2"], "jobs", "throttled", "--json")
    assert listed.code == 0 and [job["job_id"] for job in listed.json["jobs"]] == [bulk], listed


def test_the_overview_shows_a_throttled_job_behind_many_queued_ones_with_its_reason(console, site):
    """The held-back job is the newest of 30 queued ones: the overview asks the ledger which jobs are held back (it
    no longer looks at the 20 oldest queued jobs one by one)."""
    client = site.client("t2")
    for index in range(29):
        client.call("jobs.enqueue", {"spec": {"tenant": T2, "project": "feeds", "type": "globex.filler",
                                              "payload": {"n": index}}})
    held = client.call("jobs.enqueue", {"spec": {"tenant": T2, "project": "feeds", "type": "globex.held",
                                                 "queue": "bulk"}})["job_id"]
    console.sign_in(site.tokens["t2"])
    text = console.open("#/overview", held)
    row = console.page.locator(f"{PANEL}:has(> h2:text-is('Throttled jobs')) tr", has_text=held)
    assert "queue bulk paused" in row.inner_text() and "once resumed" in row.inner_text()
    assert "globex.filler" not in panel(console, "Throttled jobs")
    assert T1 not in text
    console.sign_in(site.tokens["t1"])
    console.open("#/overview", QUOTA_REASON)
    assert held not in console.page.inner_text("#page")
    assert console.errors == []


# -- the audit log, filtered by the ledger ------------------------------------------------------------------------
def test_filtering_the_audit_log_by_action_shows_matching_entries_past_the_first_thousand(console, site):
    client = site.client("t1")
    for index in range(1005):  # noise: more entries than the console once read before filtering in the browser
        client.call("ratelimits.set", {"tenant": T1, "type": "noise.type", "rate": 1, "burst": index + 1,
                                       "reason": f"noise {index}"})
    client.call("quotas.set", {"tenant": T1, "max_active": 1, "reason": "needle past the first thousand",
                               "ticket": "OPS-1005"})
    over_http = answer(site, "GET", "/v1/audit", query={"action": "quota.set", "limit": 1000})["entries"]
    assert [entry["reason"] for entry in over_http] == ["baseline", "needle past the first thousand"]
    assert answer(site, "GET", "/v1/audit", query={"by": "token:bob", "action": "quota.set"})["entries"] == []
    through_cli = run_cli("--server", site.server.url, "--token", site.tokens["t1"], "audit", "list",
                          "--action", "quota.set", "--actor", "token:alice", "--json")
    assert through_cli.code == 0, through_cli
    assert [entry["reason"] for entry in through_cli.json["entries"]] == ["baseline", "needle past the first thousand"]

    console.sign_in(site.tokens["t1"])
    console.open("#/audit", "Hash chain verified")
    audit_form = console.page.locator("form[aria-label='Filter the audit log']")
    audit_form.locator("input[name=action]").fill("quota.set")
    audit_form.locator("button[type=submit]").click()
    console.wait_for("needle past the first thousand")
    actions = console.page.locator("#page tbody tr td:nth-child(3)").all_inner_texts()
    assert actions == ["quota.set", "quota.set"], actions
    assert "OPS-1005" in console.page.inner_text("#page")
    # No filter: a page of 200 oldest first, and "Next page" follows the server's cursor
    console.open("#/audit", "Hash chain verified")
    wait_for(lambda: console.page.locator("#page tbody tr").count() == 200, 30, "a page of 200 entries")
    first_seqs = console.page.locator("#page tbody tr td:nth-child(1)").all_inner_texts()
    console.page.click("text=Next page")
    console.page.locator("#page tbody tr td:nth-child(1)", has_text=str(int(first_seqs[-1]) + 1)).first.wait_for()
    assert first_seqs[0] not in console.page.locator("#page tbody tr td:nth-child(1)").all_inner_texts()
    text = console.open("#/audit?actor=token:bob", "no audit entries match")
    assert "ratelimit.set" not in text and "quota.set" not in text
    assert console.errors == []


# -- more actions by clicking ---------------------------------------------------------------------------------
def audit_of(site: Site, action: str, reason: str) -> dict:
    entries = answer(site, "GET", "/v1/audit", query={"action": action, "limit": 1000})["entries"]
    found = [entry for entry in entries if entry["reason"] == reason]
    assert len(found) == 1, entries
    return found[0]


def test_a_source_resumed_and_paused_by_clicking_lands_in_the_ledger_with_its_audit_entries(console, site):
    console.sign_in(site.tokens["t1"])
    console.open("#/sources", "upstream maintenance")
    console.page.click("button[data-source='nvd-feed']:has-text('Resume source')")
    console.page.fill("#ask-reason", "upstream is back (clicked)")
    console.page.click("#ask-confirm")
    wait_for(lambda: answer(site, "GET", "/v1/sources/nvd-feed")["paused"] is None, 30, "the resume")
    resumed = audit_of(site, "key.resume", "upstream is back (clicked)")
    assert resumed["actor"] == "token:alice" and "nvd-feed" in resumed["target"]
    console.page.click("button[data-source='nvd-feed']:has-text('Pause source')")
    console.page.click("#ask-confirm")  # no reason: the dialog stays open and nothing is sent
    assert console.page.locator("#ask[open]").count() == 1
    assert answer(site, "GET", "/v1/sources/nvd-feed")["paused"] is None
    console.page.fill("#ask-reason", "mirror migration (clicked)")
    console.page.fill("#ask-ticket", "OPS-77")
    console.page.click("#ask-confirm")
    wait_for(lambda: (answer(site, "GET", "/v1/sources/nvd-feed")["paused"] or {}).get("reason")
             == "mirror migration (clicked)", 30, "the pause")
    paused = audit_of(site, "key.pause", "mirror migration (clicked)")
    assert paused["actor"] == "token:alice" and paused["ticket"] == "OPS-77"
    console.wait_for("mirror migration (clicked)")
    assert console.errors == []


def test_a_backfill_canceled_by_clicking_lands_in_the_ledger_with_reason_and_ticket(console, site):
    backfill = site.seeded.backfill_t1
    console.sign_in(site.tokens["t1"])
    console.open("#/backfills", backfill)
    row = console.page.locator("#page tr", has_text=backfill)
    row.locator("text=Cancel backfill").click()
    console.page.fill("#ask-reason", "wrong window (clicked)")
    console.page.fill("#ask-ticket", "OPS-102")
    console.page.click("#ask-confirm")
    wait_for(lambda: answer(site, "GET", f"/v1/backfills/{backfill}")["state"] == "canceled", 30, "the cancel")
    entry = audit_of(site, "backfill.cancel", "wrong window (clicked)")
    assert entry["actor"] == "token:alice" and entry["ticket"] == "OPS-102" and backfill in entry["target"]
    console.wait_for("canceled: wrong window (clicked)")
    assert console.page.locator("#page tr", has_text=backfill).locator("text=Cancel backfill").count() == 0
    assert console.errors == []


# -- the air gap page on a ledger that pinned a root and imported a bundle --------------------------------------
AIRGAP_TOKEN = {"courier": {"subject": "courier", "tenants": ["local"], "scopes": ("orch:airgap",)}}


def test_the_air_gap_page_shows_the_pinned_root_an_import_with_its_checks_staleness_and_floors(
        browser, shots, holders, source, target, root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    planned = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), "--json", ledger=target))
    ok(cli("bundle", "import", str(out), "--trust", str(root_v1), "--plan-digest", planned["plan_digest"],
           "--json", ledger=target))
    keys = Keys(tmp_path / "token-keys")
    tokens = keys.issue_many(AIRGAP_TOKEN)
    with serving(target, "--token-key", str(keys.public_key)) as server:
        client = OrchClient(server.url, tokens["courier"])
        trust, status, listed = (client.call(name, {}) for name in ("trust.show", "airgap.status", "bundles.list"))
        (imported,) = listed["imports"]
        checks = imported["checks"]
        assert checks and all(check["ok"] for check in checks)
        assert {"signature", "members", "time-anchor", "staleness"} <= {check["name"] for check in checks}
        console = Console(browser, server.url, shots)
        try:
            console.sign_in(tokens["courier"])
            text = console.open("#/airgap", "site-a #1")
            console.shot("airgap-imported")
            pinned = panel(console, "Pinned trust root")
            assert f"version\t{trust['version']}" in pinned and trust["expires"] in pinned
            assert trust["fingerprint"] in pinned and "site site-c" in pinned and "2 of 2 key(s)" in pinned
            stale = panel(console, "Time anchor, staleness and budget left")
            assert f"state\t{status['staleness']['state']}" in stale and status["latest_anchor"] in stale
            assert "of the budget left" in stale  # the server's message (its age moves on between two reads)
            budget = re.search(r"budget left\t\d+ d \((\d+) s\)", stale)
            assert budget and abs(int(budget[1]) - status["staleness"]["budget_left_seconds"]) < 300, stale
            floors = console.page.locator(f"{PANEL}:has(> h2:text-is('Sequence floors per source site')) tbody tr")
            assert floors.count() == 1 and floors.first.inner_text().split("\t")[:2] == ["site-a", "1"]
            shown = console.page.locator(f"{PANEL}:has(> h2:text-is('Imports')) ul.checks li")
            assert shown.count() == len(checks)
            for check in checks:
                item = console.page.locator(f"ul.checks li[data-check='{check['name']}']")
                assert item.inner_text() == f"passed {check['name']}: {check['detail']}"
            assert imported["bundle_id"] in text and "no exports" in text
            assert console.errors == []
        finally:
            console.close()
    with serving(source, "--token-key", str(keys.public_key)) as server:  # the exporting side lists its export
        console = Console(browser, server.url, shots)
        try:
            console.sign_in(tokens["courier"])
            text = console.open("#/airgap", "site-b #1")
            exports = panel(console, "Exports")
            assert "every tenant" in exports and "bytes" in exports
            assert "no bundle imported yet: no floors" in text and "no time anchor yet" in text
            assert console.errors == []
        finally:
            console.close()


def test_the_air_gap_page_lists_a_refused_import_with_its_reason_code_failed_check_and_quarantine_copy(
        browser, shots, holders, source, target, root_v1, tmp_path):  # noqa: F811
    first = bundle(source, holders, tmp_path / "a.bundle")
    second = bundle(source, holders, tmp_path / "b.bundle")
    ok(cli("bundle", "import", str(second), "--trust", str(root_v1), "--json", ledger=target))
    assert cli("bundle", "import", str(first), "--json", ledger=target).code == 5  # #1 below the floor: a replay
    tampered = tampered_copy(second, tmp_path / "tampered.bundle")
    assert cli("bundle", "import", str(tampered), "--json", ledger=target).code == 4
    digest = hashlib.sha256(tampered.read_bytes()).hexdigest()
    assert (Path(f"{target}.quarantine") / f"{digest}.bundle").exists()
    listed = ok(cli("bundle", "list", "--json", ledger=target))
    assert listed["refused_imports_total"] == 2
    newest, replay = listed["refused_imports"]  # newest first
    assert (newest["reason_code"], newest["source_site"], newest["sequence"]) == ("merkle:hash-mismatch", "site-a", 2)
    assert newest["quarantine_file"] == f"{digest}.bundle"
    assert [check["name"] for check in newest["checks"] if not check["ok"]] == ["members"]
    assert (replay["reason_code"], replay["source_site"], replay["sequence"]) == ("rollback:sequence", "site-a", 1)
    shown = ok(cli("bundle", "list", ledger=target))
    assert "refused imports: 2" in shown and f"merkle:hash-mismatch site-a #2, failed check members, quarantined as " \
        f"{digest}.bundle" in shown, shown
    keys = Keys(tmp_path / "token-keys")
    tokens = keys.issue_many(AIRGAP_TOKEN)
    with serving(target, "--token-key", str(keys.public_key)) as server:
        console = Console(browser, server.url, shots)
        try:
            console.sign_in(tokens["courier"])
            console.open("#/airgap", "merkle:hash-mismatch")
            console.shot("airgap-refused")
            rows = console.page.locator(f"{PANEL}:has(> h2:text-is('Refused imports')) tbody tr")
            assert rows.count() == 2
            cells = rows.first.locator("td")
            assert cells.nth(1).inner_text() == "merkle:hash-mismatch" and cells.nth(2).inner_text() == "site-a #2"
            assert cells.nth(5).inner_text() == f"{digest}.bundle"
            failed = rows.first.locator("ul.checks li.error")
            assert failed.count() == 1 and failed.inner_text().startswith("FAILED members: member 'data/jobs.parquet'")
            assert rows.first.locator("ul.checks li.ok").count() == len(newest["checks"]) - 1
            assert rows.nth(1).locator("td").nth(1).inner_text() == "rollback:sequence"
            assert rows.nth(1).locator("td").nth(2).inner_text() == "site-a #1"
            assert "2 refused import(s), newest first" in panel(console, "Refused imports")
            imports = console.page.locator(f"{PANEL}:has(> h2:text-is('Imports')) tbody tr")
            assert imports.count() == 1 and "site-a #2" in imports.first.inner_text()
            assert console.errors == []
        finally:
            console.close()

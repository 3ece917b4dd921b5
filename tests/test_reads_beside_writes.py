"""Reads do not stall writes (issue 14): operations that change nothing run beside the one writer, each page of a
listing (or chunk of `ledger verify`) in a short read-only snapshot of its own; listings answer size-capped pages
with `next_cursor`, and the CLI follows them so `--limit` keeps its meaning.

Real components throughout: DuckDB files, a `serve` subprocess on loopback, the CLI in a subprocess.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import list_all, run_cli
from server_fixtures import assert_problem, serving

from airgap_orch import validation
from airgap_orch.ledger import Ledger
from airgap_orch.operations import audit as audit_ops
from airgap_orch.operations import dispatch
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.operations import limits as limit_ops
from airgap_orch.operations.writer import LedgerWriter
from airgap_orch.orchestrator import history

SPEC = {"tenant": "acme", "project": "reads", "type": "scan"}
BIG_LEDGER_JOBS = 100_000


def specs(count: int, **fields: object) -> list[dict]:
    return [{**SPEC, **fields, "payload": {"n": number}} for number in range(count)]


@pytest.fixture(scope="module")
def big_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger of BIG_LEDGER_JOBS queued jobs (as many history entries), made once; tests use copies."""
    path = tmp_path_factory.mktemp("big") / "big.duckdb"
    with Ledger.open(path, create=True, site_id="site-reads", lock_timeout=5) as ledger:
        for start in range(0, BIG_LEDGER_JOBS, 50_000):
            ops.enqueue_batch(ledger, specs(min(50_000, BIG_LEDGER_JOBS - start)))
    return path


def copy_of(source: Path, directory: Path) -> Path:
    target = directory / "ledger.duckdb"
    shutil.copyfile(source, target)
    return target


class KeepAlive:
    """One keep-alive connection to a server, JSON in and out (a worker's claim loop uses one like it)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def post(self, path: str, body: dict) -> dict:
        self.connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        return answer

    def close(self) -> None:
        self.connection.close()


# -- reads run beside the writer ----------------------------------------------------------------------------

def test_claims_complete_while_a_verify_of_a_large_ledger_runs_on_the_server(big_ledger, tmp_path):
    """A full `ledger verify` of 100,000 history entries through the server, and one client claiming and acking a
    job at a time meanwhile: the claims are answered while the verify runs (it used to run on the writer thread,
    and every claim sent after it waited for its end)."""
    path = copy_of(big_ledger, tmp_path)
    with serving(path, "--no-auth") as server:
        verified: dict = {}

        def verify() -> None:
            verified["response"] = server.request("POST", "/v1/ledger/verify", timeout=600)

        reader = threading.Thread(target=verify)
        reader.start()
        claimer = KeepAlive(server.url)
        during, after = 0, 0
        try:
            while reader.is_alive():
                (lease,) = claimer.post("/v1/jobs/claim", {"worker_id": "w-1", "limit": 1})["leases"]
                claimer.post(f"/v1/jobs/{lease['job_id']}/ack", {"lease_id": lease["lease_id"]})
                if reader.is_alive():
                    during += 1
                else:
                    after += 1
        finally:
            reader.join(600)
            claimer.close()
        response = verified["response"]
        assert response.status == 200 and response.json["ok"] is True, response
        assert response.json["history_entries"] >= BIG_LEDGER_JOBS
        # Generous: tens to hundreds of claims fit in the verify's second or more; behind it, at most the one or two
        # that reached the writer before the verify did.
        assert during >= 10, (during, after)


def test_the_writer_commits_claims_while_a_snapshot_is_open(ledger):
    """A read transaction open on its read connection neither waits for the writer nor holds it up: claims commit
    while it is open, the snapshot goes on seeing what was committed when it began, and the next one sees them."""
    ops.enqueue_batch(ledger, specs(6))
    writer = LedgerWriter(ledger)
    writer.start()
    try:
        with ledger.snapshot() as read:
            assert dict(read.fetch("state_counts", tenants=None)) == {"queued": 6}
            claims = [writer.submit("jobs.claim", {"worker_id": f"w-{n}", "limit": 2}, dispatch.Caller())
                      for n in range(3)]
            leased = [lease for claim in claims for lease in claim.result(timeout=30)["leases"]]
            assert len(leased) == 6
            assert dict(read.fetch("state_counts", tenants=None)) == {"queued": 6}  # its own snapshot
        with ledger.snapshot() as read:
            assert dict(read.fetch("state_counts", tenants=None)) == {"leased": 6}
    finally:
        writer.stop()


def test_the_writer_refuses_an_operation_that_changes_nothing(ledger):
    """Reads have their own path (LedgerReaders): handing one to the writer is a programming error, not a queue."""
    writer = LedgerWriter(ledger)
    with pytest.raises(ValueError, match="LedgerReaders"):
        writer.submit("jobs.list", {}, dispatch.Caller())


# -- pages --------------------------------------------------------------------------------------------------

def test_pages_of_jobs_hold_every_job_once_while_jobs_are_enqueued_and_finished(tmp_path):
    """Paging by (created_at, job_id): jobs enqueued meanwhile come after the cursor, jobs that finish (and move to
    the archive table) keep their key, so no job is listed twice or skipped; the last page says so (null)."""
    path = tmp_path / "ledger.duckdb"
    Ledger.open(path, create=True, site_id="site-reads", lock_timeout=5).close()
    with serving(path, "--no-auth") as server:
        before = set(_post(server, "/v1/jobs/batch", {"jobs": specs(2_500)})["job_ids"])
        stop = threading.Event()
        added: list[str] = []

        def churn() -> None:  # enqueue more, and claim and ack some (acked jobs are archived by later claims)
            client = KeepAlive(server.url)
            try:
                while not stop.is_set() and len(added) < 3_000:
                    added.extend(client.post("/v1/jobs/batch", {"jobs": specs(100, type="later")})["job_ids"])
                    leases = client.post("/v1/jobs/claim", {"worker_id": "w", "limit": 50})["leases"]
                    client.post("/v1/acks", {"acks": [{"job_id": lease["job_id"], "lease_id": lease["lease_id"]}
                                                      for lease in leases]})
            finally:
                client.close()

        churner = threading.Thread(target=churn)
        churner.start()
        listed, pages, cursor = [], 0, None
        try:
            while True:
                page = _get(server, "/v1/jobs", {"limit": 1_000, "cursor": cursor})
                pages += 1
                assert len(page["jobs"]) <= validation.MAX_PAGE_ROWS
                listed.extend(page["jobs"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        finally:
            stop.set()
            churner.join(120)
    ids = [job["job_id"] for job in listed]
    assert len(ids) == len(set(ids)), "a job was listed twice"
    assert before <= set(ids), f"{len(before - set(ids))} jobs that existed all along were skipped"
    assert set(ids) <= before | set(added)
    keys = [(job["created_at"], job["job_id"]) for job in listed]
    assert keys == sorted(keys) and pages >= 3


def test_a_page_of_large_payloads_ends_at_the_byte_budget(tmp_path):
    """Payloads of ~60 KB: a page stops before its payloads pass MAX_PAGE_PAYLOAD_BYTES (4 MiB), far below 1,000
    jobs, and the next page goes on from there."""
    path = tmp_path / "ledger.duckdb"
    Ledger.open(path, create=True, site_id="site-reads", lock_timeout=5).close()
    blob = "x" * 60_000
    with serving(path, "--no-auth") as server:
        _post(server, "/v1/jobs/batch", {"jobs": [{**SPEC, "payload": {"n": n, "blob": blob}} for n in range(100)]})
        first = _get(server, "/v1/jobs", {"limit": 1_000})
        second = _get(server, "/v1/jobs", {"limit": 1_000, "cursor": first["next_cursor"]})
    size = len(json.dumps({"n": 10, "blob": blob}, separators=(",", ":")))
    fits = validation.MAX_PAGE_PAYLOAD_BYTES // size
    assert 1 <= len(first["jobs"]) <= fits and len(first["jobs"]) >= fits - 1, (len(first["jobs"]), fits)
    assert first["next_cursor"] is not None
    assert sorted(job["payload"]["n"] for job in first["jobs"] + second["jobs"]) == list(range(100))
    assert second["next_cursor"] is None


def test_a_cursor_no_page_gave_out_is_refused_with_one_clear_line(tmp_path):
    path = tmp_path / "ledger.duckdb"
    Ledger.open(path, create=True, site_id="site-reads", lock_timeout=5).close()
    with serving(path, "--no-auth") as server:
        _post(server, "/v1/jobs/batch", {"jobs": specs(3)})
        jobs_cursor = _get(server, "/v1/jobs", {"limit": 1})["next_cursor"]
        events_cursor = _get(server, "/v1/ledger/events", {"limit": 1})["next_cursor"]
        refused = [
            ("/v1/jobs", {"cursor": "not-a-cursor"}),
            ("/v1/jobs", {"cursor": jobs_cursor[:-6]}),  # cut short
            ("/v1/jobs", {"cursor": events_cursor}),  # another listing's
            ("/v1/ledger/events", {"cursor": jobs_cursor}),
            ("/v1/audit", {"cursor": events_cursor}),
            ("/v1/deadletter", {"cursor": "%%%"}),
        ]
        for target, query in refused:
            problem = assert_problem(server.request("GET", target, query=query), 400, "invalid-input", 1)
            assert "cursor" in problem["detail"] and "next_cursor" in problem["detail"], (target, problem)
        both = assert_problem(server.request("GET", "/v1/ledger/events", query={"cursor": events_cursor,
                                                                               "after_seq": 1}), 400)
        assert "not both" in both["detail"]
        assert _get(server, "/v1/jobs", {"limit": 1, "cursor": jobs_cursor})["jobs"]  # a good one still works


def test_events_and_audit_entries_page_to_the_end(ledger):
    """More than a page of history and of audit entries: pages of at most MAX_PAGE_ROWS, in order, each row once,
    and next_cursor null on the last page."""
    ops.enqueue_batch(ledger, specs(2_100))
    for number in range(1_050):
        limit_ops.quota_set(ledger, tenant=f"t-{number}", max_active=5, reason="paging test")
    expected = {"events": event_ids(ledger, 0, 2_100), "entries": list(range(1, 1_051))}
    for name, items in (("ledger.events", "events"), ("audit.list", "entries")):
        listed, cursor, pages = [], None, 0
        while True:
            page = dispatch.run(ledger, name, {"limit": 100_000, "cursor": cursor})
            pages += 1
            assert 0 < len(page[items]) <= validation.MAX_PAGE_ROWS
            listed += [row["eventId"] if items == "events" else row["seq"] for row in page[items]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert listed == expected[items] and pages == {"events": 3, "entries": 2}[items], (name, pages)
    # A page that ends exactly at the end says so: nothing follows.
    assert audit_ops.list_entries(ledger, after_seq=50, limit=1_000)["next_cursor"] is None


@pytest.mark.parametrize("through_server", [False, True], ids=["local", "server"])
def test_the_cli_limit_lists_exactly_that_many_across_pages(tmp_path, through_server):
    path = tmp_path / "ledger.duckdb"
    with Ledger.open(path, create=True, site_id="site-reads", lock_timeout=5) as ledger:
        ops.enqueue_batch(ledger, specs(2_500))
        for number in range(1_020):
            limit_ops.quota_set(ledger, tenant=f"t-{number}", max_active=5, reason="paging test")
        expected = [job["job_id"] for job in list_all(ledger)["jobs"]]
        events = event_ids(ledger, 10, 1_500)
    assert len(expected) == 2_500

    def check() -> None:
        listed = run_cli(path, "--json", "jobs", "list", "--limit", "2345", timeout=120)
        assert listed.code == 0, listed
        assert [job["job_id"] for job in listed.json["jobs"]] == expected[:2_345]
        assert set(listed.json) == {"jobs"}
        default = run_cli(path, "--json", "jobs", "list", timeout=120)
        assert [job["job_id"] for job in default.json["jobs"]] == expected[:1_000]
        listed = run_cli(path, "--json", "ledger", "events", "--after-seq", "10", "--limit", "1500", timeout=120)
        assert listed.code == 0, listed
        assert [event["eventId"] for event in listed.json["events"]] == events
        assert listed.json["last_seq"] == 1_510
        audited = run_cli(path, "--json", "audit", "list", "--limit", "1010", timeout=120)
        assert audited.code == 0, audited
        assert [entry["seq"] for entry in audited.json["entries"]] == list(range(1, 1_011))

    if through_server:
        with serving(path, "--no-auth"):
            check()
    else:
        check()


# -- checkpoints --------------------------------------------------------------------------------------------

CHECKPOINT_TEST_THRESHOLD = 256 * 1024


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return wal.stat().st_size if wal.exists() else 0


def _claim_and_ack_rounds(ledger: Ledger, rounds: int) -> list[int]:
    """Updates (claims and acks of 20 jobs a round, one transaction each); the WAL's size after each round."""
    sizes = []
    for _ in range(rounds):
        leases = ops.claim(ledger, worker_id="w", limit=20, lease_seconds=600)["leases"]
        ops.ack_many(ledger, [{"job_id": lease["job_id"], "lease_id": lease["lease_id"]} for lease in leases])
        sizes.append(_wal_bytes(ledger.path))
    return sizes


def test_checkpoints_go_on_while_readers_page_through_jobs(ledger_path):
    """Two readers page through the jobs over and over while the writer commits updates (~40 KB of WAL a round):
    each page is a short transaction of its own, so DuckDB still checkpoints once the WAL passes its threshold (a
    checkpoint may wait for a commit that finds no page open, so the WAL passes the threshold a little). The same
    writes beside one snapshot held open all along are never checkpointed: what a listing or a verify in one read
    transaction would do."""
    threshold = CHECKPOINT_TEST_THRESHOLD
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        # Test-only tuning of the storage engine (as tests/helpers/burst_writer.py does): checkpoint often.
        ledger._con.execute(f"SET checkpoint_threshold = '{threshold}B'")
        ops.enqueue_batch(ledger, specs(10_000))
        stop = threading.Event()
        pages = [0, 0]

        def page_forever(number: int) -> None:
            cursor = None
            while not stop.is_set():
                cursor = ops.list_jobs(ledger, limit=1_000, cursor=cursor)["next_cursor"]
                pages[number] += 1

        readers = [threading.Thread(target=page_forever, args=(number,)) for number in range(2)]
        for reader in readers:
            reader.start()
        try:
            paged = _claim_and_ack_rounds(ledger, 200)
        finally:
            stop.set()
            for reader in readers:
                reader.join(60)
        with ledger.snapshot() as read:
            read.fetch("state_counts", tenants=None)  # the snapshot is taken at its first statement
            held = _claim_and_ack_rounds(ledger, 200)
    assert min(pages) >= 5, pages  # they did page beside the writes
    checkpoints = sum(1 for before, after in zip(paged, paged[1:], strict=False) if after < before)
    assert checkpoints >= 2 and max(paged) < 16 * threshold, (checkpoints, max(paged) // 1024)
    assert held == sorted(held) and held[-1] > 16 * threshold, held[-1] // 1024


# -- helpers ------------------------------------------------------------------------------------------------

def event_ids(ledger: Ledger, after_seq: int, count: int) -> list[str]:
    """The event ids of history entries after_seq+1 .. after_seq+count, read straight from the history table."""
    rows = ledger.read().fetch("history_page", after_seq=after_seq, limit=count, tenants=None)
    assert len(rows) == count
    return [history.event_id(entry_hash) for _, _, entry_hash in rows]


def _post(server, path: str, body: dict) -> dict:
    response = server.request("POST", path, body, timeout=120)
    assert response.status == 200, response
    return response.json


def _get(server, path: str, query: dict) -> dict:
    response = server.request("GET", path, query=query, timeout=120)
    assert response.status == 200, response
    return response.json


def test_verify_racing_commits_checks_up_to_the_head_it_read_at_its_start(ledger):
    """Commits land between verify's chunks (here: between two chunks, through a progress report): verify checks
    the chain up to the head it read at its start, and the entries committed since are neither an error nor
    counted."""
    ops.enqueue_batch(ledger, specs(ledger_ops.VERIFY_CHUNK + 500))
    head = ledger.head_seq
    committed = []

    def commit_meanwhile(done: int, total: int) -> None:
        if not committed:
            committed.append(ops.enqueue_batch(ledger, specs(7, type="meanwhile"))["job_ids"])

    result = ledger_ops.verify(ledger, progress=commit_meanwhile)
    assert committed and result["ok"] is True
    assert result["history_entries"] == head
    assert ledger_ops.verify(ledger)["history_entries"] == head + 7

"""The request log (operations/request_log.py) and the one prepare step of claims and reports, on real ledgers and a
real server: a retried request gets its original answer, rebuilt from a small replay recipe and the ledger (lease
ids, not payloads), also after a server restart; the log is bounded by age, rows and bytes; claims and reports
are validated by the same step locally and in the writer's group commit."""

from __future__ import annotations

import json
import uuid
import zlib
from collections import Counter
from datetime import timedelta
from typing import Any

import duckdb
import pytest
from conftest import list_all
from server_fixtures import assert_problem, init_ledger, serving

from airgap_orch.errors import InvalidInput, OrchError
from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch, request_log
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.operations.writer import LedgerWriter

SPEC = {"tenant": "acme", "project": "replays", "type": "scan"}
WORKER = dispatch.Caller(actor="token:worker")


def enqueue(ledger: Ledger, count: int, **fields: Any) -> list[str]:
    return ops.enqueue_batch(ledger, [{**SPEC, **fields} for _ in range(count)])["job_ids"]


def through_writer(ledger: Ledger, requests: list[tuple[str, dict[str, Any], str | None]], *,
                   group_commit: bool = True, **options: Any) -> list[Any]:
    """Queue the requests before the writer starts (so they reach it as one batch); each answer, or the exception
    it was failed with. A key is logged under the caller's subject and the operation, as the HTTP door does."""
    writer = LedgerWriter(ledger, group_commit=group_commit, **options)
    futures = [writer.submit(name, params, WORKER, f"{WORKER.actor} {name} {key}" if key else None)
               for name, params, key in requests]
    writer.start()
    try:
        return [future.exception(30) or future.result(30) for future in futures]
    finally:
        writer.stop()


def logged(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Every request log row by key: operation, size as stored and the decoded recipe."""
    rows = ledger.read().con.execute(
        "SELECT request_key, operation, recipe, packed, octet_length(recipe) FROM request_log").fetchall()
    return {key: {"operation": operation, "stored_bytes": stored,
                  "recipe": json.loads(zlib.decompress(recipe) if packed else recipe), "packed": packed}
            for key, operation, recipe, packed, stored in rows}


# -- what is logged, and the answer rebuilt from it -------------------------------------------------------------

def test_a_claim_of_20_jobs_with_60_kb_payloads_logs_its_lease_ids_not_the_payloads(ledger):
    """The issue's case: the answer (1.2 MB) was stored whole. The recipe holds the (job, lease, attempt) triples and
    the retry still gets every payload, from the job rows."""
    enqueue(ledger, 20, payload={"blob": "x" * 60_000})
    claim = {"worker_id": "w-big", "limit": 20, "lease_seconds": 60}
    (first,) = through_writer(ledger, [("jobs.claim", claim, "big-claim")])
    (row,) = logged(ledger).values()
    assert len(first["leases"]) == 20
    assert row["stored_bytes"] < 3_000, row["stored_bytes"]  # 20 x ~80 bytes of ids, against 1.2 MB of answer
    assert row["recipe"]["leases"] == [[lease["job_id"], lease["lease_id"], 1] for lease in first["leases"]]
    (replayed,) = through_writer(ledger, [("jobs.claim", claim, "big-claim")])
    assert replayed == first
    assert len(ops.list_jobs(ledger, state="leased")["jobs"]) == 20  # the retry leased nothing more


def test_a_retried_claim_gets_the_same_leases_even_after_they_ended_and_its_jobs_were_archived(ledger, manual_clock):
    job_ids = enqueue(ledger, 3, payload={"feed": "nvd"})
    claim = {"worker_id": "w-1", "limit": 3, "lease_seconds": 30}
    (first,) = through_writer(ledger, [("jobs.claim", claim, "claim-1")])
    done, expired = first["leases"][0], first["leases"][1:]
    assert ops.ack(ledger, done["job_id"], done["lease_id"])["state"] == "succeeded"
    manual_clock.advance(31)
    ops.recover(ledger)  # the other two leases expired: their jobs are queued again, attempt 1 used up
    with ledger.transaction() as tx:
        tx.execute("archive_copy", final_states=["succeeded"])
        tx.execute("archive_delete", final_states=["succeeded"])
    (again,) = through_writer(ledger, [("jobs.claim", claim, "claim-1")])
    assert again == first  # the original leases, payloads and expiry: a replay, not a new claim
    assert {job["job_id"] for job in ops.list_jobs(ledger, state="queued")["jobs"]} == \
        {lease["job_id"] for lease in expired}
    with pytest.raises(OrchError):  # an ended lease stays ended: the worker's report under it is refused
        ops.heartbeat(ledger, expired[0]["job_id"], expired[0]["lease_id"])
    assert sorted(job_ids) == sorted(lease["job_id"] for lease in again["leases"])


def report_params(kind: str, lease: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ids = {"job_id": lease["job_id"], "lease_id": lease["lease_id"]}
    return {"ack": ("jobs.ack", {**ids, "artifacts": [{"uri": "file:///tmp/out.json", "digest": "sha256:" + "a" * 64,
                                                  "mime": "application/json"}]}),
            "fail": ("jobs.fail", {**ids, "error": "feed unreachable", "retry_after": 5}),
            "fail_for_good": ("jobs.fail", {**ids, "error": "bad feed", "no_retry": True}),
            "release": ("jobs.release", ids),
            "heartbeat": ("jobs.heartbeat", {**ids, "progress": 0.5, "message": "half"})}[kind]


@pytest.mark.parametrize("kind", ["ack", "fail", "fail_for_good", "release", "heartbeat"])
def test_a_retried_report_gets_its_original_answer_rebuilt_from_the_entry_that_ended_its_lease(ledger, kind):
    """The recipe keeps the job and lease ids (and what no history entry holds: a fail's run_at, a heartbeat's
    expiry); the answer's state and attempt come from history, by lease id. A new writer on the same ledger is what a
    server restart leaves."""
    enqueue(ledger, 1)
    (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60)["leases"]
    name, params = report_params(kind, lease)
    (first,) = through_writer(ledger, [(name, params, "report-1")])
    assert isinstance(first, dict), first
    (row,) = logged(ledger).values()
    (item,) = row["recipe"]["reports"]
    assert item[:2] == [lease["job_id"], lease["lease_id"]]
    assert "state" not in json.dumps(row["recipe"]) or kind == "heartbeat"
    (again,) = through_writer(ledger, [(name, params, "report-1")])
    assert again == first
    assert json.dumps(again) == json.dumps(first)  # the same bytes on the wire: the same keys in the same order
    (other_key,) = through_writer(ledger, [(name, params, "report-2")])
    if kind == "heartbeat":
        assert other_key["state"] == "running"  # a heartbeat under a held lease is fine again
    else:
        assert isinstance(other_key, OrchError) and "lease" in str(other_key), other_key  # applied once only


def test_a_retried_ack_many_gets_each_result_again_refused_items_with_their_error(ledger):
    enqueue(ledger, 3)
    leases = ops.claim(ledger, worker_id="w", limit=3, lease_seconds=60)["leases"]
    acks = [{"job_id": lease["job_id"], "lease_id": lease["lease_id"]} for lease in leases]
    acks.append({"job_id": leases[0]["job_id"], "lease_id": str(uuid.uuid4())})  # never issued
    acks.append(dict(acks[1]))  # the same ack twice in one request: the second is stale
    (first,) = through_writer(ledger, [("jobs.ack_many", {"acks": acks}, "many-1")])
    assert [("error" in result) for result in first["results"]] == [False, False, False, True, True]
    (again,) = through_writer(ledger, [("jobs.ack_many", {"acks": acks}, "many-1")])
    assert json.dumps(again) == json.dumps(first)


def test_a_large_answer_is_logged_compressed_and_replayed_whole(ledger):
    specs = [{**SPEC, "payload": {"n": n}} for n in range(3_000)]
    (first,) = through_writer(ledger, [("jobs.enqueue_batch", {"jobs": specs}, "bulk-1")])
    (row,) = logged(ledger).values()
    assert row["packed"] and row["recipe"] == {"answer": first}
    assert row["stored_bytes"] < len(json.dumps(first)) * 0.6, row["stored_bytes"]
    (again,) = through_writer(ledger, [("jobs.enqueue_batch", {"jobs": specs}, "bulk-1")])
    assert again == first
    assert len(list_all(ledger, limit=10_000)["jobs"]) == 3_000


def test_a_fail_that_schedules_a_retry_names_the_lease_it_ended_in_history(ledger):
    """Found while moving report replays onto history: release and lease recovery named the lease they ended, a
    fail that scheduled a retry did not (its entry had no lease and no worker)."""
    (job_id,) = enqueue(ledger, 1)
    (lease,) = ops.claim(ledger, worker_id="w-7", limit=1, lease_seconds=60)["leases"]
    assert ops.fail(ledger, job_id, lease["lease_id"], error="feed unreachable")["state"] == "queued"
    entry = ops.show(ledger, job_id)["history"][-1]
    assert entry["event_type"] == "job.retry_scheduled"
    assert (entry["lease_id"], entry["worker_id"]) == (lease["lease_id"], "w-7")
    assert ledger_ops.verify(ledger)["ok"] is True


# -- bounds --------------------------------------------------------------------------------------------------------

def test_the_request_log_keeps_only_the_newest_rows_when_over_its_row_bound(ledger):
    writer_options = {"request_log_limits": request_log.Limits(max_rows=10)}
    for number in range(25):  # one batch each: the writer prunes after each (10 / 50 rounds up to every row)
        through_writer(ledger, [("jobs.enqueue", {"spec": {**SPEC, "payload": {"n": number}}}, f"enq-{number}")],
                       **writer_options)
    keys = set(logged(ledger))
    assert keys == {f"{WORKER.actor} jobs.enqueue enq-{number}" for number in range(15, 25)}
    (newest,) = through_writer(ledger, [("jobs.enqueue", {"spec": {**SPEC, "payload": {"n": 24}}}, "enq-24")],
                               **writer_options)
    assert newest["created"] is True and len(ops.list_jobs(ledger)["jobs"]) == 25  # replayed: no 26th job


def test_the_request_log_keeps_only_the_newest_bytes_when_over_its_byte_bound(ledger):
    limits = request_log.Limits(max_bytes=2_000)
    for number in range(20):
        through_writer(ledger, [("jobs.enqueue", {"spec": {**SPEC, "payload": {"n": number}}}, f"enq-{number}")],
                       request_log_limits=limits)
    rows = logged(ledger)
    stored = ledger.read().con.execute("SELECT sum(size) FROM request_log").fetchone()[0]
    assert 0 < stored <= 2_000 and 5 <= len(rows) < 20, (stored, len(rows))
    assert f"{WORKER.actor} jobs.enqueue enq-19" in rows and f"{WORKER.actor} jobs.enqueue enq-0" not in rows


def test_rows_older_than_seven_days_are_pruned_by_the_next_writer(ledger, manual_clock):
    through_writer(ledger, [("jobs.enqueue", {"spec": dict(SPEC)}, "old")])
    manual_clock.advance(timedelta(days=6, hours=23).total_seconds())
    through_writer(ledger, [("jobs.enqueue", {"spec": dict(SPEC)}, "newer")])
    assert len(logged(ledger)) == 2
    manual_clock.advance(timedelta(hours=2).total_seconds())
    through_writer(ledger, [("jobs.recover", {}, None)])  # any first batch of a writer prunes
    assert set(logged(ledger)) == {f"{WORKER.actor} jobs.enqueue newer"}


# -- one prepare step: the same checks locally and in the group commit ------------------------------------------

def outcome(run) -> tuple[type, str] | dict:
    try:
        return run()
    except OrchError as error:
        return type(error), str(error)


def test_an_ack_many_of_1001_acks_is_refused_alike_locally_and_in_a_group_commit(ledger):
    enqueue(ledger, 1_001)
    leases = ops.claim(ledger, worker_id="w", limit=1_000, lease_seconds=300)["leases"]
    leases += ops.claim(ledger, worker_id="w", limit=1, lease_seconds=300)["leases"]
    params = {"acks": [{"job_id": lease["job_id"], "lease_id": lease["lease_id"]} for lease in leases]}
    local = outcome(lambda: dispatch.run(ledger, "jobs.ack_many", params, WORKER))
    assert local == (InvalidInput, "acks must be a list of 1 to 1000 items")
    beside = {"job_id": leases[0]["job_id"], "lease_id": leases[0]["lease_id"]}
    grouped, heartbeat = through_writer(ledger, [("jobs.ack_many", params, None), ("jobs.heartbeat", beside, None)])
    assert (type(grouped), str(grouped)) == local
    assert heartbeat["state"] == "running"  # the request beside it in the group was answered
    assert Counter(job["state"] for job in list_all(ledger, limit=2_000)["jobs"]) == {"leased": 1_000,
                                                                                           "running": 1}


REFUSED_ALIKE = {
    "claim without worker_id": ("jobs.claim", {"limit": 1}),
    "claim with an unknown param": ("jobs.claim", {"worker_id": "w", "colour": "red"}),
    "claim with a limit as text": ("jobs.claim", {"worker_id": "w", "limit": "5"}),
    "ack without lease_id": ("jobs.ack", {"job_id": "JOB"}),
    "heartbeat with an unknown param": ("jobs.heartbeat", {"job_id": "JOB", "lease_id": "LEASE", "colour": 1}),
    "fail without error": ("jobs.fail", {"job_id": "JOB", "lease_id": "LEASE"}),
    "release naming tenants of its own": ("jobs.release", {"job_id": "JOB", "lease_id": "NEVER", "tenants": ["x"]}),
    "ack_many with an item that is not an object": ("jobs.ack_many", {"acks": [1]}),
    "ack_many with an empty list": ("jobs.ack_many", {"acks": []}),
}


@pytest.mark.parametrize("case", REFUSED_ALIKE)
def test_claim_and_report_params_are_refused_alike_locally_and_in_a_group_commit(ledger, case):
    (job_id,) = enqueue(ledger, 1)
    (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60)["leases"]
    name, template = REFUSED_ALIKE[case]
    fill = {"JOB": job_id, "LEASE": lease["lease_id"], "NEVER": str(uuid.uuid4())}
    params = {key: fill.get(value, value) if isinstance(value, str) else value for key, value in template.items()}
    local = outcome(lambda: dispatch.run(ledger, name, dict(params), WORKER))
    assert isinstance(local, tuple), local  # refused, with a clear error (not a crash)
    grouped, _ = through_writer(ledger, [(name, dict(params), None), ("jobs.recover", {}, None)])
    assert (type(grouped), str(grouped)) == local
    assert ops.show(ledger, job_id)["state"] == "leased"


# -- across a real server restart -----------------------------------------------------------------------------------

def test_reports_and_a_claim_retried_after_a_server_restart_get_their_original_answers(tmp_path):
    """An SDK that sent a request, lost the connection and retries it once the server is back (stop, start) with
    the same Idempotency-Key gets the answer of the request the first server applied, byte for byte, not a
    conflict; under another key the stale ack is a conflict as before."""
    path = init_ledger(tmp_path / "restart.duckdb")
    with Ledger.open(path, lock_timeout=5) as ledger:
        enqueue(ledger, 4, payload={"blob": "y" * 10_000})
    claim = {"worker_id": "w-sdk", "limit": 3, "lease_seconds": 300}
    sent: dict[str, tuple[str, str, dict[str, Any], bytes]] = {}
    with serving(path, "--no-auth") as server:
        def send(label: str, path_: str, body: dict[str, Any]) -> bytes:
            headers = {"Idempotency-Key": f"{label}-{uuid.uuid4()}"}
            answer = server.request("POST", path_, body, headers=headers)
            assert answer.status == 200, answer
            sent[label] = (path_, headers["Idempotency-Key"], body, answer.body)
            return answer.body

        leases = json.loads(send("claim", "/v1/jobs/claim", claim))["leases"]
        first, second, third = leases
        send("ack", f"/v1/jobs/{first['job_id']}/ack", {"lease_id": first["lease_id"]})
        send("fail", f"/v1/jobs/{second['job_id']}/fail", {"lease_id": second["lease_id"], "error": "boom"})
        send("many", "/v1/acks", {"acks": [{"job_id": third["job_id"], "lease_id": third["lease_id"]}]})
    with serving(path, "--no-auth") as server:
        # A claim after the restart moves the finished jobs out of the hot table first: replays read them there.
        assert server.request("POST", "/v1/jobs/claim", {"worker_id": "w-other", "limit": 10}).status == 200
        for label, (path_, key, body, original) in sent.items():
            again = server.request("POST", path_, body, headers={"Idempotency-Key": key})
            assert (again.status, again.body) == (200, original), label
        stale = server.request("POST", f"/v1/jobs/{first['job_id']}/ack", {"lease_id": first["lease_id"]},
                               headers={"Idempotency-Key": "another"})
        assert_problem(stale, 409, exit_code=3)


def test_rows_logged_before_migration_0009_replay_as_they_were(ledger_path):
    """A ledger whose request log still holds whole answers (migration 0002's form): after the upgrade, a logged
    claim replays from its converted recipe and any other answer as it was stored."""
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        enqueue(ledger, 2, payload={"feed": "osv"})
        (claimed,) = through_writer(ledger, [("jobs.claim", {"worker_id": "w", "limit": 2}, "old-claim")])
        ack = ops.ack(ledger, claimed["leases"][0]["job_id"], claimed["leases"][0]["lease_id"])
        fingerprints = {key.rsplit(" ", 1)[-1]: fingerprint for key, fingerprint in ledger.read().con.execute(
            "SELECT request_key, fingerprint FROM request_log").fetchall()}
    with duckdb.connect(str(ledger_path)) as con:  # back to migration 0008's request log, with rows in its form
        con.execute("DROP TABLE request_log")
        con.execute("CREATE TABLE request_log (request_key VARCHAR PRIMARY KEY, operation VARCHAR NOT NULL, "
                    "status INTEGER NOT NULL, response VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)")
        con.execute("DELETE FROM schema_migrations WHERE version = 9")
        con.execute("INSERT INTO request_log VALUES (?, 'jobs.claim', 200, ?, now()), (?, 'jobs.ack', 200, ?, now())",
                    [f"{WORKER.actor} jobs.claim old-claim",
                     json.dumps({"fingerprint": fingerprints["old-claim"], "answer": claimed}),
                     f"{WORKER.actor} jobs.ack old-ack", json.dumps(ack)])  # before fingerprints: the answer alone
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        assert ledger.schema_version >= 9  # 0009 applied (later migrations may follow)
        assert logged(ledger)[f"{WORKER.actor} jobs.claim old-claim"]["recipe"]["leases"][0][:2] == \
            [claimed["leases"][0]["job_id"], claimed["leases"][0]["lease_id"]]
        lease = claimed["leases"][0]
        replayed_claim, replayed_ack = through_writer(ledger, [
            ("jobs.claim", {"worker_id": "w", "limit": 2}, "old-claim"),
            ("jobs.ack", {"job_id": lease["job_id"], "lease_id": lease["lease_id"]}, "old-ack")])
    assert replayed_claim == claimed and replayed_ack == ack

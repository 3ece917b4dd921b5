"""orch.event.v1 envelopes: every history entry, rendered in-process or by `ledger events --json`, matches
schemas/event-envelope.schema.json under the reference jsonschema implementation, and carries provenance."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource

from airgap_orch import ids
from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.operations import limits as limit_ops
from airgap_orch.orchestrator import events, handoff
from airgap_orch.orchestrator.states import EVENT_TYPES

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
ARTIFACT = {"uri": "file:///out/sbom.json", "digest": "sha256:" + "0f" * 32, "mime": "application/vnd.cyclonedx+json"}


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    envelope, artifact = _schema("event-envelope"), _schema("artifact")
    Draft7Validator.check_schema(envelope)
    registry = Registry().with_resource(artifact["$id"], Resource.from_contents(artifact))
    return Draft7Validator(envelope, registry=registry, format_checker=FormatChecker())


def assert_valid(validator: Draft7Validator, envelope: dict) -> None:
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(envelope)]
    assert not errors, (envelope, errors)


def every_transition(ledger: Ledger, manual_clock) -> dict[str, str]:
    """Drive jobs through every event type in states.EVENT_TYPES. Returns job ids by role."""
    def enqueue(**fields) -> str:
        spec = {"tenant": "acme", "project": "web", "type": "scan", "correlation_id": "corr-42", **fields}
        return ops.enqueue(ledger, spec)["job_id"]

    def lease(job_id: str, worker: str = "w-7") -> str:
        (leased,) = ops.claim(ledger, worker_id=worker, limit=1, lease_seconds=30)["leases"]
        assert leased["job_id"] == job_id
        return leased["lease_id"]

    roles = {}
    roles["succeeded"] = job_id = enqueue(payload={"image": "nginx:1.27"})
    lease_id = lease(job_id)
    ops.heartbeat(ledger, job_id, lease_id, progress=0.3)
    ops.ack(ledger, job_id, lease_id, artifacts=[ARTIFACT])

    roles["retried"] = job_id = enqueue(tenant="globex", project="feeds", type="vex", max_attempts=2)
    ops.fail(ledger, job_id, lease(job_id), error="upstream 503", retry_after=0)
    ops.fail(ledger, job_id, lease(job_id), error="upstream 503 again")  # dead_letter

    roles["failed"] = job_id = enqueue()
    ops.fail(ledger, job_id, lease(job_id), error="bad input", no_retry=True)

    roles["timed_out"] = job_id = enqueue(max_attempts=1, timeout_seconds=5)
    lease(job_id)
    manual_clock.advance(6)
    ops.recover(ledger)

    roles["canceled"] = job_id = enqueue()
    lease_id = lease(job_id)
    ops.cancel(ledger, job_id, reason="operator asked")
    ops.ack(ledger, job_id, lease_id)

    roles["parent"] = parent = enqueue()
    roles["child"] = child = enqueue(depends_on=[parent])  # waiting until the parent succeeds
    ops.ack(ledger, parent, lease(parent))  # job.ready for the child
    ops.ack(ledger, child, lease(child))

    limit_ops.concurrency_set(ledger, key="type:solo", max=1, reason="test")
    first, roles["throttled"] = enqueue(type="solo"), enqueue(type="solo")
    (leased,) = ops.claim(ledger, worker_id="w-7", limit=2, lease_seconds=30)["leases"]  # the second: throttled
    ops.ack(ledger, first, leased["lease_id"])
    ops.ack(ledger, roles["throttled"], lease(roles["throttled"]))
    limit_ops.concurrency_delete(ledger, key="type:solo", reason="test")

    roles["released"] = job_id = enqueue()
    ops.release(ledger, job_id, lease(job_id))

    roles["handed_off"] = job_id = enqueue(queue="away")  # bundle export --handoff (tests/test_bundle_handoff.py)
    with ledger.transaction() as tx:
        assert handoff.hand_off(tx, target_site="site-b", sequence=1, tenant=None, queues=["away"], backfills=[],
                                actor="operator") == [job_id]
    roles["received"] = received = ids.uuid7s(1)[0]  # a job another site handed over (bundle import)
    with ledger.transaction() as tx:
        row = dict(tx.rows("job_any", job_id=job_id)[0], job_id=received)
        handoff.receive(tx, source_site="site-b", jobs={received: row}, keys=[], backfills={}, windows={},
                        handoffs=[{"job_id": received, "backfill_id": None, "window_index": None, "history_seq": 9,
                                   "entry_hash": "ab" * 32}], actor="bundle import")

    ops.replay(ledger, [roles["retried"]])  # last: the replay is queued with a high priority
    return roles


@pytest.fixture
def busy(ledger, manual_clock) -> dict[str, str]:
    return every_transition(ledger, manual_clock)


def test_every_event_type_occurs_in_the_fixture_ledger(ledger, busy):
    seen = {envelope["eventType"] for envelope in ledger_ops.event_log(ledger)["events"]}
    assert seen == set(EVENT_TYPES.values())


def test_every_history_entry_renders_to_a_valid_envelope(ledger, busy, validator):
    for job_id in busy.values():
        for entry in ops.show(ledger, job_id)["history"]:
            assert_valid(validator, events.envelope(entry))


def test_event_log_envelopes_are_valid_and_in_history_order(ledger, busy, validator):
    log = ledger_ops.event_log(ledger)
    assert len(log["events"]) == ledger_ops.info(ledger)["history_entries"] == log["last_seq"]
    for envelope in log["events"]:
        assert_valid(validator, envelope)
    times = [envelope["occurredAt"] for envelope in log["events"]]
    assert times == sorted(times)


def test_idempotency_key_is_event_type_job_id_and_attempt(ledger, busy):
    for envelope in ledger_ops.event_log(ledger)["events"]:
        job = envelope["job"]
        assert envelope["idempotencyKey"] == f"orch-{envelope['eventType']}-{job['id']}-{job['attempt']}"


def test_retries_get_distinct_idempotency_keys_per_attempt(ledger, busy):
    keys = [envelope["idempotencyKey"] for envelope in ledger_ops.event_log(ledger)["events"]
            if envelope["job"]["id"] == busy["retried"] and envelope["eventType"] == "job.leased"]
    assert keys == [f"orch-job.leased-{busy['retried']}-1", f"orch-job.leased-{busy['retried']}-2"]


def test_event_ids_are_unique_and_stable_across_reads(ledger, busy):
    first = [envelope["eventId"] for envelope in ledger_ops.event_log(ledger)["events"]]
    again = [envelope["eventId"] for envelope in ledger_ops.event_log(ledger)["events"]]
    assert first == again
    assert len(set(first)) == len(first)


def test_envelopes_carry_provenance(ledger, busy):
    by_type = {}
    for envelope in ledger_ops.event_log(ledger)["events"]:
        if envelope["job"]["id"] == busy["succeeded"]:
            by_type[envelope["eventType"]] = envelope
    for envelope in by_type.values():
        assert (envelope["tenantId"], envelope["projectId"], envelope["job"]["type"], envelope["correlationId"]) == (
            "acme", "web", "scan", "corr-42")
        assert envelope["job"]["payloadDigest"].startswith("sha256:")
    assert by_type["job.created"]["actor"] == "cli"
    assert by_type["job.created"]["job"]["workerId"] is None
    for event_type in ("job.leased", "job.started", "job.succeeded"):
        job = by_type[event_type]["job"]
        assert job["workerId"] == "w-7" and job["leaseId"] is not None, event_type
        assert by_type[event_type]["actor"] == "worker:w-7"
    assert by_type["job.succeeded"]["job"]["artifacts"] == [ARTIFACT]
    assert by_type["job.succeeded"]["job"]["status"] == "succeeded"


def test_envelopes_of_other_tenants_carry_their_own_provenance(ledger, busy):
    retried = [envelope for envelope in ledger_ops.event_log(ledger)["events"]
               if envelope["job"]["id"] == busy["retried"]]
    assert {(e["tenantId"], e["projectId"], e["job"]["type"]) for e in retried} == {("globex", "feeds", "vex")}
    assert retried[-1]["eventType"] == "job.replayed"
    assert retried[-1]["actor"] == "cli"


def test_operator_and_orchestrator_transitions_name_their_actor_and_reason(ledger, busy):
    log = ledger_ops.event_log(ledger)["events"]
    canceled = [e for e in log if e["job"]["id"] == busy["canceled"]]
    request = next(e for e in canceled if e["eventType"] == "job.cancel_requested")
    assert (request["actor"], request["job"]["reason"]) == ("cli", "operator asked")
    timed_out = next(e for e in log if e["job"]["id"] == busy["timed_out"] and e["eventType"] == "job.timed_out")
    assert (timed_out["actor"], timed_out["job"]["status"]) == ("orchestrator", "timed_out")


def test_schema_validation_is_not_vacuous(ledger, busy, validator):
    envelope = next(e for e in ledger_ops.event_log(ledger)["events"] if e["job"]["artifacts"])
    bad_artifact = copy.deepcopy(envelope)
    bad_artifact["job"]["artifacts"][0]["digest"] = "md5:abc"  # only checkable through the $ref
    bad_time = copy.deepcopy(envelope)
    bad_time["occurredAt"] = "yesterday"  # only checkable with the FormatChecker
    bad_id = copy.deepcopy(envelope)
    bad_id["eventId"] = "not-a-uuid"
    for broken in (bad_artifact, bad_time, bad_id):
        assert not validator.is_valid(broken)


def test_cli_ledger_events_json_matches_the_schema_and_pages(cli, ledger_path, manual_clock, validator):
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        every_transition(ledger, manual_clock)
        expected = ledger_ops.event_log(ledger)["events"]
    result = cli("ledger", "events", "--json")
    assert result.code == 0, result
    assert result.json["events"] == expected
    for envelope in result.json["events"]:
        assert_valid(validator, envelope)
    page = cli("--json", "ledger", "events", "--after-seq", "3", "--limit", "2")
    assert page.code == 0, page
    assert page.json == {"events": expected[3:5], "last_seq": 5}

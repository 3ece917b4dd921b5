"""GET /events streams orch.event.v1 envelopes (filtered by tenant, type, correlation id and the token's
tenants, resumable with Last-Event-ID) and a consumer that never reads does not hold the writer back;
GET /metrics is Prometheus text whose numbers move with the work done."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource
from server_fixtures import ALL_SCOPES, SCHEMAS, Keys, SseStream, histogram, init_ledger, serving, total

ARTIFACT = {"uri": "file:///out/report.json", "digest": "sha256:" + "0f" * 32, "mime": "application/json"}


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    envelope, artifact = _schema("event-envelope"), _schema("artifact")
    registry = Registry().with_resource(artifact["$id"], Resource.from_contents(artifact))
    return Draft7Validator(envelope, registry=registry, format_checker=FormatChecker())


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("events")
    keys = Keys(root / "keys")
    # admin: every scope, orch:admin too, so /metrics shows it the server-wide series (latency, group commit)
    tokens = keys.issue_many({"admin": {"tenants": ["acme", "globex"], "scopes": [*ALL_SCOPES, "orch:admin"]},
                              "acme_reader": {"tenants": ["acme"], "scopes": ["orch:read"]}})
    with serving(init_ledger(root / "events.duckdb"), "--token-key", str(keys.public_key)) as server:
        yield {"server": server, "tokens": tokens}


class Api:
    """The operations the tests drive, as the admin token."""

    def __init__(self, served: dict[str, Any]):
        self.server, self.token = served["server"], served["tokens"]["admin"]

    def __call__(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = self.server.request(method, path, body, token=self.token, **kwargs)
        assert response.status == 200, response
        return response.json

    def enqueue(self, **fields: Any) -> str:
        return self("POST", "/v1/jobs", {"tenant": "acme", "project": "web", "type": "scan", **fields})["job_id"]

    def claim(self, job_type: str, limit: int = 1, lease_seconds: float = 60) -> list[dict[str, Any]]:
        return self("POST", "/v1/jobs/claim", {"worker_id": "w-ev", "type": job_type, "limit": limit,
                                               "lease_seconds": lease_seconds})["leases"]


def created(job_id: str):
    return lambda message: message.get("event") == "job.created" and message["data"]["job"]["id"] == job_id


def test_stream_sends_valid_envelopes_for_every_transition(served, validator):
    api = Api(served)
    with SseStream(served["server"].url, token=api.token) as stream:
        assert (stream.status, stream.content_type) == (200, "text/event-stream")
        job_id = api.enqueue(type="sse-valid", correlation_id="corr-valid", payload={"n": 1})
        (lease,) = api.claim("sse-valid")
        api("POST", f"/v1/jobs/{job_id}/heartbeat", {"lease_id": lease["lease_id"], "progress": 0.5})
        api("POST", f"/v1/jobs/{job_id}/ack", {"lease_id": lease["lease_id"], "artifacts": [ARTIFACT]})
        messages = stream.until(lambda m: m["event"] == "job.succeeded" and m["data"]["job"]["id"] == job_id)
    ours = [m for m in messages if m["data"]["job"]["id"] == job_id]
    assert [m["event"] for m in ours] == ["job.created", "job.leased", "job.started", "job.succeeded"]
    for message in messages:
        errors = [error.message for error in validator.iter_errors(message["data"])]
        assert not errors, (message, errors)
        assert message["event"] == message["data"]["eventType"]
    ids = [int(m["id"]) for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ours[-1]["data"]["job"]["artifacts"] == [ARTIFACT]
    assert {m["data"]["correlationId"] for m in ours} == {"corr-valid"}
    assert ours[0]["data"]["actor"] == "token:admin"
    # The stream and the ledger's own event log say the same thing.
    log = api("GET", "/v1/ledger/events", query={"after_seq": ids[0] - 1, "limit": len(ids)})["events"]
    assert [m["data"] for m in messages] == log


def test_filters_by_tenant_type_correlation_id_and_the_tokens_tenants(served):
    api, url = Api(served), served["server"].url
    reader = served["tokens"]["acme_reader"]
    streams = {
        "tenant": SseStream(url, token=api.token, query={"tenant": "globex"}),
        "type": SseStream(url, token=api.token, query={"type": "sse-vex"}),
        "correlation": SseStream(url, token=api.token, query={"correlation_id": "corr-77"}),
        "reader": SseStream(url, token=reader),
        "reader_other_tenant": SseStream(url, token=reader, query={"tenant": "globex"}),
    }
    try:
        jobs = api("POST", "/v1/jobs/batch", {"jobs": [
            {"tenant": "acme", "project": "web", "type": "sse-scan", "correlation_id": "corr-1"},
            {"tenant": "globex", "project": "feeds", "type": "sse-vex", "correlation_id": "corr-77"},
            {"tenant": "acme", "project": "web", "type": "sse-vex", "correlation_id": "corr-2"},
            {"tenant": "globex", "project": "feeds", "type": "sse-scan", "correlation_id": "corr-77"},
        ]})["job_ids"]
        # Markers: events arrive in history order, so once a marker is seen everything before it was judged.
        globex_marker = api.enqueue(tenant="globex", project="feeds", type="sse-vex", correlation_id="corr-77")
        acme_marker = api.enqueue(type="sse-scan")
        expected = {
            "tenant": [jobs[1], jobs[3], globex_marker],
            "type": [jobs[1], jobs[2], globex_marker],
            "correlation": [jobs[1], jobs[3], globex_marker],
            "reader": [jobs[0], jobs[2], acme_marker],
        }
        for name, wanted in expected.items():
            seen = streams[name].until(created(wanted[-1]))
            assert [m["data"]["job"]["id"] for m in seen] == wanted, name
        assert {m["data"]["tenantId"] for m in seen} == {"acme"}
        with pytest.raises(TimeoutError):
            streams["reader_other_tenant"].next(timeout=1.5)
    finally:
        for stream in streams.values():
            stream.close()


def test_last_event_id_replays_what_was_missed(served):
    api, url = Api(served), served["server"].url
    with SseStream(url, token=api.token) as stream:
        first = api.enqueue(type="sse-resume")
        (seen,) = stream.until(created(first))[-1:]
    last_id = int(seen["id"])
    missed = [api.enqueue(type="sse-resume"), api.enqueue(tenant="globex", project="feeds", type="sse-resume")]
    (lease,) = api.claim("sse-resume")
    with SseStream(url, token=api.token, last_event_id=last_id) as resumed:
        replayed = resumed.until(lambda m: m["event"] == "job.leased" and m["data"]["job"]["id"] == lease["job_id"])
    assert [int(m["id"]) for m in replayed] == list(range(last_id + 1, last_id + 1 + len(replayed)))
    assert [m["data"]["job"]["id"] for m in replayed if m["event"] == "job.created"] == missed
    with SseStream(url, token=api.token, last_event_id=last_id, query={"tenant": "globex"}) as filtered:
        (message,) = filtered.until(created(missed[1]))
    assert message["data"]["tenantId"] == "globex"


def test_resume_from_an_unparseable_last_event_id_is_400(served):
    with SseStream(served["server"].url, token=served["tokens"]["admin"], last_event_id="yesterday") as stream:
        assert stream.status == 400


def test_metrics_are_prometheus_text_and_move_with_work(served):
    api, server = Api(served), served["server"]
    response = server.request("GET", "/metrics", token=api.token)
    assert response.status == 200 and response.content_type == "text/plain", response.headers
    before = server.metrics(api.token)
    typed = {line.split()[2] for line in response.body.decode().splitlines() if line.startswith("# TYPE ")}
    for family in ("airgap_orch_claims_total", "airgap_orch_acks_total", "airgap_orch_lease_expirations_total"):
        assert family in typed, family  # labelled by tenant, queue and job_type: no sample before the first event
    for family in ("airgap_orch_claim_latency_ms_count", "airgap_orch_group_commit_requests_count"):
        assert (family, ()) in before, family
    assert ("airgap_orch_claim_latency_ms_bucket", (("le", "+Inf"),)) in before

    jobs = [api.enqueue(type="metrics-x") for _ in range(4)]
    leases = api.claim("metrics-x", limit=3)
    for lease in leases[:2]:
        api("POST", f"/v1/jobs/{lease['job_id']}/ack", {"lease_id": lease["lease_id"]})
    (short,) = api.claim("metrics-x", lease_seconds=1)
    assert {lease["job_id"] for lease in leases} | {short["job_id"]} == set(jobs)
    deadline = time.monotonic() + 30
    while True:  # the server sweeps expired leases about once a second
        after = server.metrics(api.token)
        if total(after, "airgap_orch_lease_expirations_total") > total(before, "airgap_orch_lease_expirations_total"):
            break
        assert time.monotonic() < deadline, "no lease expiration was counted"
        time.sleep(0.3)

    def moved(name: str, **labels: str) -> float:  # over every label not named (tenant, queue, job_type)
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("airgap_orch_claims_total") == 4
    assert moved("airgap_orch_acks_total") == 2
    assert moved("airgap_orch_lease_expirations_total") == 1
    assert moved("airgap_orch_jobs", state="succeeded") == 2
    assert moved("airgap_orch_jobs", state="leased") == 1  # leases[2], still held
    assert moved("airgap_orch_jobs", state="queued") == 1  # the expired one, back in the queue
    latency_before = histogram(before, "airgap_orch_claim_latency_ms")
    latency = histogram(after, "airgap_orch_claim_latency_ms")
    assert latency["count"] - latency_before["count"] == 2
    assert latency["sum"] > latency_before["sum"]
    batches_before = histogram(before, "airgap_orch_group_commit_requests")
    batches = histogram(after, "airgap_orch_group_commit_requests")
    assert batches["count"] - batches_before["count"] >= 4  # two claims and two acks went through the group path
    for name in ("airgap_orch_claim_latency_ms", "airgap_orch_group_commit_requests"):
        buckets = [value for key, value in histogram(after, name).items() if key not in ("count", "sum", "+Inf")]
        assert buckets == sorted(buckets), name
        assert histogram(after, name)["+Inf"] == histogram(after, name)["count"], name


def test_a_consumer_that_never_reads_does_not_block_the_writer(served):
    """Enough events to fill every buffer between the server and a client that never reads (and to overrun
    the ring, so a resume from the start is told about the gap); the work around it keeps its pace."""
    api, server = Api(served), served["server"]
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((host, int(port)))
    stuck.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api.token}\r\n\r\n".encode())
    try:
        started = time.monotonic()
        slowest = 0.0
        total = 0
        for round_ in range(4):
            step = time.monotonic()
            specs = [{"tenant": "acme", "project": "bulk", "type": "sse-bulk", "payload": {"round": round_, "i": i},
                      "correlation_id": f"bulk-{round_}-{i}"} for i in range(850)]
            api("POST", "/v1/jobs/batch", {"jobs": specs})
            leases = api.claim("sse-bulk", limit=1000, lease_seconds=300)
            assert len(leases) == 850
            results = api("POST", "/v1/acks", {"acks": [{"job_id": lease["job_id"], "lease_id": lease["lease_id"]}
                                                         for lease in leases]})["results"]
            assert all(result.get("state") == "succeeded" for result in results), results[:3]
            total += len(leases)
            slowest = max(slowest, time.monotonic() - step)
        elapsed = time.monotonic() - started
        # Each round is three transactions; a writer held up by the stuck consumer would never finish one.
        assert slowest < 30, f"one round of 850 jobs took {slowest:.1f}s"
        assert total == 3400, total
        # A fresh consumer still gets a new event at once, while the stuck one is still connected.
        with SseStream(server.url, token=api.token) as fresh:
            job_id = api.enqueue(type="sse-after-bulk")
            fresh.until(created(job_id), timeout=10)
        stuck.setblocking(False)
        assert stuck.recv(1, socket.MSG_PEEK) == b"H"  # the server answered it and is still sending
        # The ring (10,000 events) has been overrun: resuming from the first event is told about the gap.
        info = api("GET", "/v1/ledger")
        assert info["history_entries"] > 10_001
        with SseStream(server.url, token=api.token, last_event_id=1) as late:
            message = late.next(timeout=10)
        assert message["event"] == "gap" and json.loads(message["data"]) == {"after": 1}
        print(f"3400 jobs enqueued, claimed and acked in {elapsed:.1f}s beside a stuck consumer")
    finally:
        stuck.close()

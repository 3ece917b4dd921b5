"""The Go worker SDK (sdk/go) against a real `airgap-orch serve` on a real ledger.

- Its defaults and route table are generated from the Python side (scripts/gen_go_defaults.py): the committed files
  and README's defaults table must be what the generator writes now.
- `go test ./...` runs in sdk/go against a live server with auth this module starts (ORCH_TEST_* variables); each Go
  test is one pytest case here.
- What needs processes and signals is driven from here with sdk/go/internal/testworker: a Go worker SIGKILLed mid-job,
  a server SIGKILLed and restarted while a Go worker acks, Python and Go workers on one queue, SIGTERM.

Without a Go toolchain these tests skip, unless CI=true (.ci/run installs golang-go), where that is a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from server_fixtures import Server, init_ledger

from airgap_orch.auth.keys import generate_key_pair, load_private_key
from airgap_orch.auth.tokens import issue_token
from airgap_orch.sdk import OrchClient, Worker

ROOT = Path(__file__).resolve().parent.parent
GO_DIR = ROOT / "sdk" / "go"
README = ROOT / "README.md"
OPERATOR_SCOPES = ["orch:read", "orch:operate", "orch:backfill"]

# Every Go test that needs the live server; test_every_go_test_is_run_here keeps this list whole.
GO_LIVE_TESTS = (
    "TestFleetOfGoWorkersCompletesEveryJobExactlyOnceAndTheLedgerVerifies",
    "TestHandlersReportProgressArtifactsAndRetryableAndPermanentErrors",
    "TestACancelledJobsHandlerSeesItsContextCancelledAndTheJobEndsCanceled",
    "TestATokenWithoutTheWorkerScopeIsRefusedAndTheErrorSaysSo",
    "TestAnotherTenantsLeaseIsNotFoundAndItsClaimsNeverSeeTheOtherTenantsJobs",
    "TestAnAckSentAgainUnderItsIdempotencyKeyGetsItsOriginalAnswerAndANewKeyIsStale",
    "TestStopGivesBackPrefetchedJobsAndReleasesRunningOnesAfterTheGracePeriod",
    "TestABackfillCreatedThroughTheGoClientIsWorkedByAGoWorker",
    "TestALeaseTakenAwayCancelsTheHandlerWithLeaseLostAndIsNeverAcked",
    "TestAHandlersLogLinesAreStoredInOrderWithTheirLevelsAndTheJobsFields",
    "TestARunningJobsLinesReachTheServerWithinASecond",
    "TestTheLinesOfAStaleLeaseAreNotStored",
    "TestAHandlerLoggingPastTheWorkersBufferStoresTheNewestLinesAfterAMarker",
)
GO_UNIT_TESTS = (
    "TestAProblemAnswerBecomesAnErrorOfItsKindAndFamily",
    "TestAnAckManyItemErrorIsNamedByItsPythonClass",
    "TestBackoffStaysWithinItsCap",
    "TestHeartbeatsFollowTheLeasesRetryHintAndStartBeforeTheFirstExpiry",
    "TestAHandlersEndBecomesItsOutcome",
    "TestEveryWorkerRouteIsInTheRouteTable",
    "TestALoggedLineMakesAHeartbeatDueWithinHalfASecondThatCarriesIt",
    "TestTheReportTakesBackTheLinesOfABeatNotSentYetAndKeepsTheirOrder",
    "TestAFailedHeartbeatGivesItsLinesBackAndARefusedOneDropsThem",
    "TestAHandlerLoggingFasterThanAReportCarriesKeepsTheNewestLinesAfterAMarker",
)


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_go_defaults", ROOT / "scripts" / "gen_go_defaults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- generated from the Python side (no Go toolchain needed) ------------------------------------------------

def test_the_go_defaults_and_routes_are_what_the_python_side_generates():
    generator = _generator()
    for name, render in generator.FILES.items():
        committed = (GO_DIR / name).read_text(encoding="utf-8")
        assert committed == render(), f"sdk/go/{name} disagrees with the Python side: python scripts/gen_go_defaults.py"


def test_the_go_lease_defaults_are_the_python_sdks():
    """Spelled out for the values the issue names, beside the whole-file comparison above."""
    from airgap_orch import validation
    from airgap_orch.worker import context

    text = (GO_DIR / "defaults.go").read_text(encoding="utf-8")
    assert f"\tDefaultLeaseSeconds = {validation.DEFAULT_LEASE_SECONDS!r}\n" in text
    assert f"\tFirstBeatSeconds = {context.FIRST_BEAT_SECONDS!r}\n" in text
    assert "\tHeartbeatsPerLease = 3\n" in text
    signature = Worker.__init__.__kwdefaults__
    assert f"\tDefaultConcurrency = {signature['concurrency']}\n" in text
    assert f"\tDefaultAckBatchSize = {signature['ack_batch_size']}\n" in text


def test_the_readme_defaults_table_is_the_generated_one():
    assert _generator().readme_table() in README.read_text(encoding="utf-8")


# -- the toolchain ------------------------------------------------------------------------------------------

def go_env() -> dict[str, str]:
    cache = Path(tempfile.gettempdir()) / "airgap-orch-go"
    return {**{key: value for key, value in os.environ.items() if not key.startswith("ORCH_TEST_")},
            "GOCACHE": str(cache / "cache"), "GOPATH": str(cache / "path"), "GOTOOLCHAIN": "local",
            "GOPROXY": "off", "GOFLAGS": "", "GOWORK": "off", "CGO_ENABLED": "0"}


@pytest.fixture(scope="module")
def go() -> str:
    found = shutil.which("go")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no Go toolchain on PATH: .ci/run installs Debian's golang-go")
        pytest.skip("no Go toolchain (apt-get install golang-go); with CI=true this fails instead")
    return found


@pytest.fixture(scope="module")
def testworker(go: str, tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("go-bin") / "testworker"
    built = subprocess.run([go, "build", "-o", str(binary), "./internal/testworker"], cwd=GO_DIR, env=go_env(),
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    return binary


def test_the_go_sources_are_gofmt_and_vet_clean(go):
    gofmt = subprocess.run([str(Path(go).with_name("gofmt")), "-l", "."], cwd=GO_DIR, capture_output=True, text=True,
                           timeout=120)
    assert gofmt.returncode == 0 and gofmt.stdout == "", gofmt.stdout + gofmt.stderr
    vet = subprocess.run([go, "vet", "./..."], cwd=GO_DIR, env=go_env(), capture_output=True, text=True, timeout=300)
    assert vet.returncode == 0, vet.stderr


# -- a live server with auth --------------------------------------------------------------------------------

class Keys:
    def __init__(self, directory: Path):
        pair = generate_key_pair(directory, "go-sdk")
        self.public = pair.public_key_path
        self._private = load_private_key(pair.private_key_path)

    def token(self, scopes: list[str], tenants: list[str], subject: str) -> str:
        return issue_token(self._private, subject=subject, tenants=tenants, scopes=scopes,
                           expires_in=timedelta(hours=1))


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("go-live")
    keys = Keys(directory)
    server = Server(init_ledger(directory / "ledger.duckdb", "site-go-sdk"), ("--token-key", str(keys.public)))
    server.start()
    tokens = {
        "ORCH_TEST_OPERATOR_TOKEN": keys.token(OPERATOR_SCOPES, ["acme", "globex"], "go-operator"),
        "ORCH_TEST_WORKER_TOKEN": keys.token(["orch:worker"], ["acme"], "go-worker"),
        "ORCH_TEST_NO_WORKER_TOKEN": keys.token(OPERATOR_SCOPES, ["acme"], "go-no-worker"),
        "ORCH_TEST_GLOBEX_WORKER_TOKEN": keys.token(["orch:worker"], ["globex"], "go-globex-worker"),
    }
    try:
        yield {"server": server, "url": server.url, "tokens": tokens,
               "operator": OrchClient(server.url, tokens["ORCH_TEST_OPERATOR_TOKEN"]),
               "worker_token": tokens["ORCH_TEST_WORKER_TOKEN"]}
    finally:
        assert server.stop() == 0, server.stderr()[-2000:]


@pytest.fixture(scope="module")
def go_test_results(go, live) -> dict[str, tuple[str, str]]:
    """`go test -json ./...` in sdk/go against the live server: {test name: (action, its output)}."""
    env = {**go_env(), "ORCH_TEST_URL": live["url"], **live["tokens"]}
    completed = subprocess.run([go, "test", "-count=1", "-json", "-timeout", "240s", "./..."], cwd=GO_DIR, env=env,
                               capture_output=True, text=True, timeout=400)
    results: dict[str, tuple[str, str]] = {}
    output: dict[str, list[str]] = {}
    for line in completed.stdout.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        name = event.get("Test")
        if not name or "/" in name:
            continue
        if event["Action"] == "output":
            output.setdefault(name, []).append(event["Output"])
        elif event["Action"] in ("pass", "fail", "skip"):
            results[name] = (event["Action"], "".join(output.get(name, [])))
    assert results, f"go test ran nothing: {completed.stdout[-3000:]} {completed.stderr[-3000:]}"
    return results


@pytest.mark.parametrize("name", GO_LIVE_TESTS + GO_UNIT_TESTS)
def test_go_sdk(go_test_results, name):
    action, output = go_test_results.get(name, ("missing", "the Go test did not run"))
    assert action == "pass", f"{name}: {action}\n{output}"


def test_every_go_test_is_run_here(go_test_results):
    assert set(go_test_results) == set(GO_LIVE_TESTS + GO_UNIT_TESTS)


# -- helpers for worker processes ---------------------------------------------------------------------------

class GoWorker:
    """sdk/go/internal/testworker in a subprocess; stdout (its summary) and stderr go to files."""

    def __init__(self, binary: Path, url: str, token: str | None, job_type: str, directory: Path, *args: str):
        self.record = directory / f"record-{time.monotonic_ns()}.jsonl"
        self.stdout_path = self.record.with_suffix(".out")
        self.stderr_path = self.record.with_suffix(".err")
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRGAP_ORCH_")}
        command = [str(binary), "-url", url, "-type", job_type, "-record", str(self.record), *args]
        if token:
            command += ["-token", token]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)

    def started(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> dict[str, Any]:
        """SIGTERM; the exit code must be 0; returns the summary the worker printed."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        assert code == 0, self.stderr()[-3000:]
        return json.loads(self.stdout_path.read_text().strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def enqueue(client: OrchClient, job_type: str, count: int, tenant: str = "acme", **spec: Any) -> list[str]:
    jobs = [{"tenant": tenant, "project": "go-sdk", "type": job_type, "payload": {"n": n}, **spec}
            for n in range(count)]
    return client.call("jobs.enqueue_batch", {"jobs": jobs})["job_ids"]


def states(client: OrchClient, job_ids: list[str]) -> Counter[str]:
    return Counter(client.call("jobs.show", {"job_id": job_id})["state"] for job_id in job_ids)


def succeeded_events(client: OrchClient, job_ids: list[str]) -> Counter[str]:
    return Counter({job_id: sum(entry["event_type"] == "job.succeeded"
                                for entry in client.call("jobs.show", {"job_id": job_id})["history"])
                    for job_id in job_ids})


# -- process-level behaviour --------------------------------------------------------------------------------

def test_a_go_worker_killed_mid_job_loses_its_lease_to_another_worker_and_its_late_ack_is_refused(
        live, testworker, tmp_path):
    operator, url, token = live["operator"], live["url"], live["worker_token"]
    (job_id,) = enqueue(operator, "go.killed", 1)
    killed = GoWorker(testworker, url, token, "go.killed", tmp_path, "-mode", "block", "-lease", "2",
                      "-claim-wait", "1s")
    try:
        (first,) = wait_for(killed.started, 30, "the first worker to start the job")
        wait_for(lambda: operator.call("jobs.show", {"job_id": job_id})["state"] == "running", 30,
                 "the job to run under the first worker's heartbeats")
    finally:
        killed.kill()  # SIGKILL mid-job: no release, no report
    assert first["job_id"] == job_id and first["attempt"] == 1
    rescuer = GoWorker(testworker, url, token, "go.killed", tmp_path, "-lease", "2", "-claim-wait", "1s")
    try:
        wait_for(lambda: operator.call("jobs.show", {"job_id": job_id})["state"] == "succeeded", 60,
                 "the lease to expire and the second worker to complete the job")
        summary = rescuer.terminate()
    finally:
        rescuer.kill()
    (second,) = rescuer.started()
    assert second["attempt"] == 2 and second["lease_id"] != first["lease_id"]
    assert summary["outcomes"] == {"succeeded": 1}
    # The killed attempt's ack, sent late through the Go client, is refused as a stale lease.
    late = subprocess.run([str(testworker), "-url", url, "-token", token, "-ack-job", job_id, "-ack-lease",
                           first["lease_id"]], capture_output=True, text=True, timeout=60)
    assert late.returncode == 3, late
    refusal = json.loads(late.stderr.strip().splitlines()[-1])["error"]
    assert refusal["kind"] == "stale-lease" and refusal["status"] == 409 and refusal["stale"] is True, refusal
    assert succeeded_events(operator, [job_id]) == Counter({job_id: 1})


def test_sigterm_releases_a_go_workers_unstarted_and_running_jobs(live, testworker, tmp_path):
    operator = live["operator"]
    job_ids = enqueue(operator, "go.sigterm", 5)
    worker = GoWorker(testworker, live["url"], live["worker_token"], "go.sigterm", tmp_path, "-mode", "block",
                      "-concurrency", "2", "-prefetch", "3", "-grace", "300ms", "-claim-wait", "1s")
    try:
        wait_for(lambda: len(worker.started()) == 2 and states(operator, job_ids)["queued"] == 0, 30,
                 "two running and three prefetched jobs")
        summary = worker.terminate()
    finally:
        worker.kill()
    assert summary["stopped_by"] == "signal:SIGTERM"
    assert summary["claimed"] == 5 and summary["outcomes"] == {"released": 5}, summary
    assert states(operator, job_ids) == Counter({"queued": 5})


def test_python_and_go_workers_on_one_queue_share_the_work_without_a_job_run_twice(live, testworker, tmp_path):
    operator = live["operator"]
    job_ids = enqueue(operator, "go.mixed", 300, queue="mixed")
    python_runs: Counter[str] = Counter()
    lock = threading.Lock()

    def work(ctx):
        with lock:
            python_runs[ctx.job_id] += 1
        time.sleep(0.01)

    python = Worker(live["url"], live["worker_token"], worker_id="py-mixed", concurrency=4, prefetch=10,
                    claim_wait=1, queue="mixed")
    python.add_handler("go.mixed", work)
    summaries: list[dict] = []
    thread = threading.Thread(target=lambda: summaries.append(python.run()), daemon=True)
    thread.start()
    go_worker = None
    try:
        wait_for(lambda: python_runs, 30, "the Python worker to start")
        go_worker = GoWorker(testworker, live["url"], live["worker_token"], "go.mixed", tmp_path, "-concurrency", "4",
                             "-prefetch", "10", "-sleep", "10ms", "-claim-wait", "1s", "-worker-id", "go-mixed")
        wait_for(lambda: states(operator, job_ids)["succeeded"] == len(job_ids), 90, "every job to succeed",
                 every=0.5)
        go_summary = go_worker.terminate()
    finally:
        python.stop()
        thread.join(30)
        if go_worker is not None:
            go_worker.kill()
    go_runs = Counter(entry["job_id"] for entry in go_worker.started())
    assert python_runs and go_runs, (len(python_runs), len(go_runs))
    assert set(python_runs) | set(go_runs) == set(job_ids)
    assert not set(python_runs) & set(go_runs), "a job ran under both workers"
    assert max(python_runs.values()) == 1 and max(go_runs.values()) == 1
    assert go_summary["outcomes"] == {"succeeded": len(go_runs)}
    assert summaries[0]["outcomes"] == {"succeeded": len(python_runs)}
    assert set(succeeded_events(operator, job_ids).values()) == {1}
    assert operator.call("ledger.verify")["ok"] is True


class AckSwallowingProxy:
    """A TCP proxy in front of the server: it passes everything through, except that the answer to the first
    POST /v1/acks is read from the server (so the server has committed the acks) and never passed on: the client's
    connection is closed instead, as if the server had died before answering. `upstream` can be changed (a
    restarted server)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.swallowed = threading.Event()
        self._armed = True
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        host, port = self.upstream.removeprefix("http://").rsplit(":", 1)
        try:
            server = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        swallow = threading.Event()

        def to_server() -> None:
            try:
                while data := client.recv(65536):
                    if b"POST /v1/acks " in data:
                        with self._lock:
                            if self._armed:
                                self._armed = False
                                swallow.set()
                    server.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_RDWR)
                server.close()

        threading.Thread(target=to_server, daemon=True).start()
        try:
            while data := server.recv(65536):
                if swallow.is_set():  # the answer to the swallowed ack: committed, never delivered
                    self.swallowed.set()
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for end in (client, server):  # shutdown, not only close: the other thread is blocked reading it
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_server_restarted_while_a_go_worker_acks_answers_the_acks_retry_with_its_original_answer(
        testworker, tmp_path):
    ledger = init_ledger(tmp_path / "restart.duckdb", "site-go-restart")
    server = Server(ledger, ("--no-auth",)).start()
    operator = OrchClient(server.url, timeout=10)
    job_ids = enqueue(operator, "go.restart", 60)
    proxy = AckSwallowingProxy(server.url)
    worker = GoWorker(testworker, proxy.url, None, "go.restart", tmp_path, "-concurrency", "4", "-sleep", "20ms",
                      "-claim-wait", "1s")
    restarted = None
    try:
        assert proxy.swallowed.wait(30), worker.stderr()[-2000:]
        server.kill()  # the acks are committed; their answer never reached the worker
        restarted = Server(ledger, ("--no-auth",)).start()
        proxy.upstream = restarted.url
        operator = OrchClient(restarted.url, timeout=10)
        wait_for(lambda: states(operator, job_ids)["succeeded"] == len(job_ids), 90, "every job to succeed",
                 every=0.5)
        summary = worker.terminate()
    finally:
        worker.kill()
        proxy.close()
        if restarted is not None:
            history = succeeded_events(operator, job_ids)
            verified = operator.call("ledger.verify")
            assert restarted.stop() == 0
        else:
            server.kill()
    # Had the retry gone out under a new Idempotency-Key, its acks would have been refused as stale: counted lost.
    assert summary["outcomes"] == {"succeeded": len(job_ids)}, (summary, worker.stderr()[-3000:])
    runs = Counter(entry["job_id"] for entry in worker.started())
    assert set(runs) == set(job_ids) and max(runs.values()) == 1
    assert set(history.values()) == {1}
    assert verified["ok"] is True


def _readme_go_worker() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Go worker SDK"):]
    return section.split("```go\n", 1)[1].split("```", 1)[0]


def test_the_readme_go_worker_is_the_example_program_and_runs_against_a_live_server(live, go, tmp_path):
    example = GO_DIR / "examples" / "advisory-worker" / "main.go"
    assert _readme_go_worker() == example.read_text(encoding="utf-8")
    binary = tmp_path / "advisory-worker"
    built = subprocess.run([go, "build", "-o", str(binary), "./examples/advisory-worker"], cwd=GO_DIR, env=go_env(),
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    operator = live["operator"]
    jobs = [{"tenant": "acme", "project": "go-sdk", "type": "advisory.ingest", "payload": {"advisory_id": f"ADV-{n}"}}
            for n in range(3)] + [{"tenant": "acme", "project": "go-sdk", "type": "advisory.ingest", "payload": {}}]
    *good, bad = operator.call("jobs.enqueue_batch", {"jobs": jobs})["job_ids"]
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("AIRGAP_ORCH_")},
           "AIRGAP_ORCH_URL": live["url"], "AIRGAP_ORCH_TOKEN": live["worker_token"]}
    process = subprocess.Popen([str(binary)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: states(operator, good) == Counter({"succeeded": 3}) and
                 states(operator, [bad]) == Counter({"failed": 1}), 30, "the README worker to run the jobs")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Outcomes:map[failed:1 succeeded:3]" in stdout, stdout
    for job_id in good:
        (artifact,) = operator.call("jobs.show", {"job_id": job_id})["artifacts"]
        data = (tmp_path / "out" / f"{job_id}.json").read_bytes()
        assert artifact == {"uri": f"file://{tmp_path / 'out' / job_id}.json", "mime": "application/json",
                            "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
        lines = operator.call("jobs.logs", {"job_id": job_id})["lines"]
        assert [line["message"] for line in lines] == [f"stored {tmp_path / 'out' / job_id}.json"], lines

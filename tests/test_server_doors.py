"""One operation layer, two doors: the same CLI scenario run on a ledger the CLI opens itself and on a ledger
a live server owns (the CLI finds it through the discovery file, or is told --server URL) gives the same
exit codes and the same JSON, once ids and times are normalized."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import CliResult, run_cli, run_cli_parallel, serving

from airgap_orch.errors import LedgerBusy
from airgap_orch.ledger import Ledger

ARTIFACT = "file:///out/sbom.json,sha256:" + "ab" * 32 + ",application/vnd.cyclonedx+json"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?")
HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


class Normalizer:
    """Replace ids (numbered by first appearance, so which ids repeat still counts), times, hashes and the
    actor (history records who asked: `cli` on one door, the token's subject or `http:no-auth` on the other).
    Lists of jobs or leases are put in the order their jobs were first named: jobs created in one transaction
    share a creation time, and an answer may list them either way."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def _order(self, job_id: str) -> int:
        """Jobs already named come in the order they were first named; new ones after them."""
        return list(self.ids).index(job_id) if job_id in self.ids else len(self.ids)

    def _text(self, text: str) -> str:
        text = UUID.sub(lambda m: self.ids.setdefault(m.group(), f"<id{len(self.ids) + 1}>"), text)
        text = TIMESTAMP.sub("<time>", text)
        return HEX64.sub("<hash>", text)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: ("<ledger>" if key == "ledger" else "<actor>" if key == "actor" else self(item))
                    for key, item in value.items()}
        if isinstance(value, list):
            if value and all(isinstance(item, dict) and "job_id" in item for item in value):
                value = sorted(value, key=lambda item: self._order(item["job_id"]))
            return [self(item) for item in value]
        if isinstance(value, str):
            return self._text(value)
        return value


def scenario(run) -> list[tuple[str, int, Any]]:
    """Every step of a producer/worker/operator session: (step, exit code, JSON answer or error object).

    `run(*args)` runs one CLI command with --json and returns its CliResult.
    """
    steps: list[tuple[str, int, Any]] = []

    def step(name: str, *args: str, expect: int = 0) -> Any:
        result: CliResult = run(*args)
        assert result.code == expect, (name, result)
        if result.code == 0:
            answer = result.json
        else:
            assert result.stdout == "", (name, result)
            error = result.error
            assert error["exit_code"] == result.code, (name, result)
            assert error["message"] and "\n" not in error["message"], (name, result)
            # The wording may name a different detail (an archived job, say); the kind of refusal may not.
            answer = {"type": error["type"], "exit_code": error["exit_code"]}
        steps.append((name, result.code, answer))
        return answer

    job_a = step("enqueue", "jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan",
                 "--payload", '{"image": "nginx:1.27"}', "--idempotency-key", "k-1", "--correlation-id",
                 "corr-1")["job_id"]
    again = step("enqueue_same_key", "jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan",
                 "--payload", '{"image": "nginx:1.27"}', "--idempotency-key", "k-1", "--correlation-id", "corr-1")
    assert again["job_id"] == job_a and again["created"] is False
    step("enqueue_same_key_other_spec", "jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan",
         "--payload", '{"image": "nginx:1.28"}', "--idempotency-key", "k-1", expect=3)
    job_b, job_c, job_d = step("enqueue_batch", "jobs", "enqueue", "--batch", str(run.batch_file))["job_ids"]
    leases = step("claim", "jobs", "claim", "--worker-id", "w-1", "--limit", "3", "--lease-seconds", "300")["leases"]
    lease = {item["job_id"]: item["lease_id"] for item in leases}
    assert set(lease) == {job_a, job_b, job_c}
    step("heartbeat", "jobs", "heartbeat", job_a, "--lease", lease[job_a], "--progress", "0.5", "--message", "half")
    step("ack", "jobs", "ack", job_a, "--lease", lease[job_a], "--artifact", ARTIFACT)
    step("ack_again_refused", "jobs", "ack", job_a, "--lease", lease[job_a], expect=3)
    step("fail_with_retry", "jobs", "fail", job_b, "--lease", lease[job_b], "--error", "upstream 503",
         "--retry-after", "0")
    step("heartbeat_stale_lease", "jobs", "heartbeat", job_b, "--lease", lease[job_b], expect=3)
    step("fail_to_dead_letter", "jobs", "fail", job_c, "--lease", lease[job_c], "--error", "broken export")
    step("cancel", "jobs", "cancel", job_d, "--reason", "not needed")
    step("list", "jobs", "list")
    step("show", "jobs", "show", job_a)
    step("deadletter_list", "deadletter", "list")
    step("deadletter_replay", "deadletter", "replay", job_c)
    step("ledger_info", "ledger", "info")
    step("ledger_verify", "ledger", "verify")
    step("show_unknown_job", "jobs", "show", str(uuid.UUID(int=42)), expect=1)
    step("ack_unknown_job", "jobs", "ack", str(uuid.UUID(int=43)), "--lease", lease[job_a], expect=1)
    step("enqueue_malformed_payload", "jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan",
         "--payload", '{"image": ', expect=1)
    step("enqueue_priority_out_of_range", "jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type",
         "scan", "--priority", "5000", expect=1)
    return steps


class Runner:
    """`run(*args)` for the scenario: the CLI with --json on one ledger (routed to its server if one owns it)."""

    def __init__(self, ledger: Path, batch_file: Path):
        self.ledger, self.batch_file = ledger, batch_file

    def __call__(self, *args: str) -> CliResult:
        # --lock-timeout 0: had the CLI opened a ledger that a server owns, it would exit 6 at once.
        return run_cli("--lock-timeout", "0", "--json", *args, ledger=self.ledger)


def write_batch(path: Path) -> Path:
    # Distinct priorities: jobs enqueued in one transaction share a creation time, and claims take the
    # highest priority first, so the claim order is the same in both runs.
    specs = [{"tenant": "globex", "project": "feeds", "type": "vex", "max_attempts": 3, "priority": 2},
             {"tenant": "acme", "project": "web", "type": "export", "max_attempts": 1, "priority": 1,
              "payload": [1, 2]},
             {"tenant": "acme", "project": "web", "type": "scan", "priority": -5}]
    path.write_text("\n".join(json.dumps(spec) for spec in specs) + "\n", encoding="utf-8")
    return path


def normalized(steps: list[tuple[str, int, Any]]) -> list[tuple[str, int, Any]]:
    normalize = Normalizer()
    return [(name, code, normalize(answer)) for name, code, answer in steps]


@pytest.fixture(scope="module")
def both_doors(tmp_path_factory) -> dict[str, Any]:
    """The scenario once on a ledger the CLI opens, once on a ledger a live server owns, in parallel."""
    root = tmp_path_factory.mktemp("doors")
    batch = write_batch(root / "batch.jsonl")
    direct_ledger = root / "direct.duckdb"
    served_ledger = root / "served.duckdb"
    initialized = {}
    for name, ledger in (("direct", direct_ledger), ("served", served_ledger)):
        created = run_cli("--json", "ledger", "init", "--site-id", "site-doors", ledger=ledger)
        assert created.code == 0, created
        initialized[name] = ("init", created.code, created.json)
    with serving(served_ledger, "--no-auth") as server:
        outcome: dict[str, Any] = {"server": server, "direct_ledger": direct_ledger, "served_ledger": served_ledger}

        def run(name: str, runner: Runner) -> None:
            try:
                outcome[name] = [initialized[name], *scenario(runner)]
            except BaseException as exc:  # reported by the tests below
                outcome[name] = exc

        threads = [threading.Thread(target=run, args=("direct", Runner(direct_ledger, batch))),
                   threading.Thread(target=run, args=("served", Runner(served_ledger, batch)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        yield outcome


def _scenario(both_doors, name: str) -> list[tuple[str, int, Any]]:
    if isinstance(both_doors[name], BaseException):
        pytest.fail(f"the {name} scenario did not finish: {both_doors[name]!r}")
    return both_doors[name]


def test_cli_scenario_gives_the_same_exit_codes_and_json_with_and_without_a_server(both_doors):
    direct, served = normalized(_scenario(both_doors, "direct")), normalized(_scenario(both_doors, "served"))
    assert [(name, code) for name, code, _ in served] == [(name, code) for name, code, _ in direct]
    differences = {name: (direct_answer, served_answer)
                   for (name, _, direct_answer), (_, _, served_answer) in zip(direct, served, strict=True)
                   if served_answer != direct_answer}
    assert not differences, json.dumps(differences, indent=1)


def test_the_served_scenario_went_through_the_server(both_doors):
    served = {name: answer for name, _, answer in _scenario(both_doors, "served")}
    direct = {name: answer for name, _, answer in _scenario(both_doors, "direct")}
    served_actors = {entry["actor"] for entry in served["show"]["history"]}
    direct_actors = {entry["actor"] for entry in direct["show"]["history"]}
    assert "http:no-auth" in served_actors and "cli" not in served_actors, served_actors
    assert "cli" in direct_actors and "http:no-auth" not in direct_actors, direct_actors


def test_a_refused_batch_names_the_file_line_through_the_server_as_it_does_locally(both_doors, tmp_path):
    batch = tmp_path / "bad.jsonl"
    good = {"tenant": "acme", "project": "web", "type": "scan"}
    batch.write_text(f"{json.dumps(good)}\n\n{json.dumps({**good, 'prio': 1})}\n", encoding="utf-8")
    for ledger in (both_doors["direct_ledger"], both_doors["served_ledger"]):
        before = run_cli("--lock-timeout", "0", "--json", "ledger", "info", ledger=ledger).json
        result = run_cli("--lock-timeout", "0", "--json", "jobs", "enqueue", "--batch", str(batch), ledger=ledger)
        assert result.code == 1, result
        assert result.error["message"] == (f"{batch} line 3: job 2 has unknown fields 'prio'; remove them "
                                           "(schemas/job-spec.schema.json lists the fields)"), result
        assert run_cli("--lock-timeout", "0", "--json", "ledger", "info", ledger=ledger).json == before


def test_server_option_and_discovery_file_reach_the_same_server(both_doors, tmp_path):
    """--server URL (and $AIRGAP_ORCH_SERVER) with a ledger path that does not exist: the CLI never opens a ledger."""
    _scenario(both_doors, "served")
    server, ledger = both_doors["server"], both_doors["served_ledger"]
    nowhere = tmp_path / "absent" / "nowhere.duckdb"
    reads = [("jobs", "list"), ("ledger", "info"), ("deadletter", "list")]
    via_discovery = run_cli_parallel([("--json", "--lock-timeout", "0", *args) for args in reads], ledger=ledger)
    via_option = run_cli_parallel([("--json", "--server", server.url, *args) for args in reads], ledger=nowhere)
    via_env = run_cli_parallel([("--json", *args) for args in reads], ledger=nowhere,
                               env={"AIRGAP_ORCH_SERVER": server.url})
    for found, named, from_env in zip(via_discovery, via_option, via_env, strict=True):
        assert found.code == named.code == from_env.code == 0, (found, named, from_env)
        assert named.json == found.json == from_env.json
    unknown = run_cli("--json", "--server", server.url, "jobs", "show", str(uuid.UUID(int=42)), ledger=nowhere)
    assert unknown.code == 1 and unknown.error["type"] == "NotFound", unknown
    created = run_cli("--json", "--server", server.url, "jobs", "enqueue", "--tenant", "acme", "--project", "web",
                      "--type", "scan", ledger=nowhere)
    assert created.code == 0, created
    shown = run_cli("--json", "--lock-timeout", "0", "jobs", "show", created.json["job_id"], ledger=ledger)
    assert shown.code == 0 and shown.json["state"] == "queued", shown
    assert not nowhere.parent.exists()


def test_cli_goes_through_the_server_holding_the_ledger_instead_of_exiting_6(both_doors):
    _scenario(both_doors, "served")
    server, ledger = both_doors["server"], both_doors["served_ledger"]
    with pytest.raises(LedgerBusy):  # the server really holds the file
        Ledger.open(ledger, lock_timeout=0)
    assert server.discovery()["pid"] == server.pid
    info = run_cli("--json", "--lock-timeout", "0", "ledger", "info", ledger=ledger)
    assert info.code == 0, info
    assert info.json == server.ledger_info()


def test_stale_discovery_file_is_ignored_and_the_cli_opens_the_ledger(both_doors):
    ledger = both_doors["direct_ledger"]
    before = run_cli("--json", "jobs", "list", ledger=ledger)
    assert before.code == 0, before
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)
    discovery = ledger.with_name(ledger.name + ".server.json")
    discovery.write_text(json.dumps({"pid": dead_pid, "url": "http://127.0.0.1:9", "started_at":
                                     "2026-01-01T00:00:00Z", "ledger": str(ledger)}))
    try:
        listed = run_cli("--json", "jobs", "list", ledger=ledger)
        assert listed.code == 0, listed
        assert listed.json == before.json
        created = run_cli("--json", "jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan",
                          ledger=ledger)
        assert created.code == 0, created
        actors = {entry["actor"] for entry in
                  run_cli("--json", "jobs", "show", created.json["job_id"], ledger=ledger).json["history"]}
        assert actors == {"cli"}
    finally:
        discovery.unlink()

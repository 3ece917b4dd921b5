"""Bad input through the real CLI: exit 1 (or 2 where click reports it), one line on stderr saying what was
wrong, nothing on stdout, and the ledger unchanged (info, history head and every job row compared)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fastjsonschema
import pytest

from airgap_orch import schemas
from airgap_orch.cli.jobs import MAX_INPUT_FILE_BYTES
from airgap_orch.errors import InvalidInput
from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.validation import MAX_PAYLOAD_BYTES

SPEC = {"tenant": "acme", "project": "web", "type": "scan"}
ENQUEUE = ("jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan")
GOOD_ARTIFACT = "file:///out/r.json,sha256:" + "ab" * 32 + ",application/json"


def payload_of_size(size: int) -> str:
    """A JSON payload whose canonical encoding is exactly `size` bytes."""
    text = json.dumps({"p": "x" * (size - len('{"p":""}'))}, separators=(",", ":"))
    assert len(text.encode()) == size
    return text


@pytest.fixture
def world(ledger_path: Path, tmp_path: Path) -> dict[str, str]:
    """A queued job, a leased job (with its lease) and the input files the cases refer to."""
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        leased = ops.enqueue(ledger, SPEC)["job_id"]
        (lease,) = ops.claim(ledger, worker_id="w-1", limit=1, lease_seconds=3600)["leases"]
        queued = ops.enqueue(ledger, {**SPEC, "idempotency_key": "k-1"})["job_id"]
    files = {
        "bad_json_batch": "\n".join([json.dumps(SPEC), json.dumps({**SPEC, "tenant": "globex"}),
                                     '{"tenant": "acme", "project":']),
        "bad_spec_batch": "\n".join([json.dumps(SPEC), "", json.dumps({"tenant": "acme", "type": "scan"}),
                                     json.dumps(SPEC)]),
        "oversized_batch": "\n".join([json.dumps(SPEC), json.dumps({**SPEC, "payload": json.loads(
            payload_of_size(MAX_PAYLOAD_BYTES + 1))})]),
        "unknown_field_batch": json.dumps({**SPEC, "prio": 5}),
        "empty_batch": "\n  \n",
        "malformed_payload": '{"image": nginx}',
        "latin1_payload": None,
        "big_payload": payload_of_size(MAX_PAYLOAD_BYTES + 1),
    }
    paths = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.txt"
        if text is None:
            path.write_bytes(b'{"city": "M\xfcnchen"}')  # Latin-1, not UTF-8
        else:
            path.write_text(text, encoding="utf-8")
        paths[name] = str(path)
    paths["a_directory"] = str(tmp_path)
    oversized_file = tmp_path / "oversized_file.json"
    with open(oversized_file, "wb") as sparse:
        sparse.truncate(MAX_INPUT_FILE_BYTES + 1)
    paths["oversized_file"] = str(oversized_file)
    return {"queued": queued, "leased": leased, "lease": lease["lease_id"], "missing": str(uuid.uuid4()),
            "no_ledger": str(tmp_path / "absent" / "ledger.duckdb"), **paths}


def ledger_state(path: Path) -> dict:
    """What `ledger info --json` reports, plus every job row as `jobs list --json` renders it."""
    with Ledger.open(path, lock_timeout=5) as ledger:
        return {"info": ledger_ops.info(ledger), "jobs": ops.list_jobs(ledger, limit=100_000)["jobs"]}


# (id, args, expected exit code, text the error line must contain)
INVALID = [
    ("malformed_json_payload", (*ENQUEUE, "--payload", '{{"image": '), "not valid JSON"),
    ("malformed_json_payload_file", (*ENQUEUE, "--payload", "@{malformed_payload}"), "not valid JSON"),
    ("payload_over_limit", (*ENQUEUE, "--payload", "@{big_payload}"), str(MAX_PAYLOAD_BYTES)),
    ("payload_file_missing", (*ENQUEUE, "--payload", "@/nonexistent/payload.json"), "payload"),
    ("payload_file_is_a_directory", (*ENQUEUE, "--payload", "@{a_directory}"), "cannot read payload file"),
    ("payload_file_name_missing", (*ENQUEUE, "--payload", "@"), "file name is missing"),
    ("payload_file_over_the_input_limit", (*ENQUEUE, "--payload", "@{oversized_file}"), "over the limit"),
    ("payload_file_endless", (*ENQUEUE, "--payload", "@/dev/zero"), "over the limit"),
    ("batch_file_over_the_input_limit", ("jobs", "enqueue", "--batch", "{oversized_file}"), "over the limit"),
    ("payload_file_not_utf8", (*ENQUEUE, "--payload", "@{latin1_payload}"), "not UTF-8"),
    ("batch_file_not_utf8", ("jobs", "enqueue", "--batch", "{latin1_payload}"), "not UTF-8"),
    ("unknown_job_show", ("jobs", "show", "{missing}"), "no job"),
    ("unknown_job_ack", ("jobs", "ack", "{missing}", "--lease", "{lease}"), "no job"),
    ("unknown_job_heartbeat", ("jobs", "heartbeat", "{missing}", "--lease", "{lease}"), "no job"),
    ("unknown_job_fail", ("jobs", "fail", "{missing}", "--lease", "{lease}", "--error", "x"), "no job"),
    ("unknown_job_cancel", ("jobs", "cancel", "{missing}", "--reason", "r"), "no job"),
    ("unknown_job_replay", ("deadletter", "replay", "{missing}"), "no job"),
    ("non_uuid_show", ("jobs", "show", "job-42"), "not a UUID"),
    ("non_uuid_ack", ("jobs", "ack", "42", "--lease", "{lease}"), "not a UUID"),
    ("non_uuid_fail", ("jobs", "fail", "x", "--lease", "{lease}", "--error", "e"), "not a UUID"),
    ("non_uuid_cancel", ("jobs", "cancel", "'; DROP TABLE jobs; --", "--reason", "r"), "not a UUID"),
    ("non_uuid_replay", ("deadletter", "replay", "{queued}", "nope"), "not a UUID"),
    ("negative_claim_limit", ("jobs", "claim", "--worker", "w", "--limit", "-1"), "claim limit"),
    ("negative_list_limit", ("jobs", "list", "--limit", "-5"), "limit"),
    ("negative_lease_seconds", ("jobs", "claim", "--worker", "w", "--lease-seconds", "-30"), "lease seconds"),
    ("negative_progress", ("jobs", "heartbeat", "{leased}", "--lease", "{lease}", "--progress", "-0.1"),
     "progress"),
    ("progress_over_one", ("jobs", "heartbeat", "{leased}", "--lease", "{lease}", "--progress", "1.5"),
     "progress"),
    ("negative_retry_after", ("jobs", "fail", "{leased}", "--lease", "{lease}", "--error", "e",
                              "--retry-after", "-5"), "retry-after"),
    ("priority_below_range", (*ENQUEUE, "--priority", "-1001"), "priority"),
    ("priority_above_range", (*ENQUEUE, "--priority", "5000"), "priority"),
    ("zero_max_attempts", (*ENQUEUE, "--max-attempts", "0"), "max_attempts"),
    ("negative_timeout", (*ENQUEUE, "--timeout-seconds", "-1"), "timeout_seconds"),
    ("bad_run_at", (*ENQUEUE, "--run-at", "next tuesday please"), "run_at"),
    ("short_run_at", (*ENQUEUE, "--run-at", "2024"), "not an ISO 8601 time"),
    ("unknown_state", ("jobs", "list", "--state", "exploded"), "unknown state"),
    ("batch_with_one_malformed_line", ("jobs", "enqueue", "--batch", "{bad_json_batch}"), "line 3"),
    ("batch_with_one_invalid_spec", ("jobs", "enqueue", "--batch", "{bad_spec_batch}"), "line 3: job 2"),
    ("batch_with_an_unknown_field", ("jobs", "enqueue", "--batch", "{unknown_field_batch}"),
     "line 1: job 1 has unknown fields 'prio'"),
    ("batch_with_one_oversized_payload", ("jobs", "enqueue", "--batch", "{oversized_batch}"),
     str(MAX_PAYLOAD_BYTES)),
    ("empty_batch_file", ("jobs", "enqueue", "--batch", "{empty_batch}"), "no job specs"),
    ("missing_batch_file", ("jobs", "enqueue", "--batch", "/nonexistent/jobs.jsonl"), "batch"),
    ("missing_ledger_file", ("--ledger", "{no_ledger}", "jobs", "list"), "no ledger"),
    ("init_existing_ledger", ("ledger", "init", "--site-id", "other"), "already exists"),
    ("bad_site_id", ("--ledger", "{no_ledger}", "ledger", "init", "--site-id", "a b"), "site id"),
    ("artifact_not_three_parts", ("jobs", "ack", "{leased}", "--lease", "{lease}", "--artifact",
                                  "file:///out/r.json,application/json"), "URI,DIGEST,MIME"),
    ("artifact_bad_digest", ("jobs", "ack", "{leased}", "--lease", "{lease}", "--artifact", GOOD_ARTIFACT,
                             "--artifact", "file:///x,md5:123,application/json"),
     "digest must be sha256:<64 lowercase hex> or sha512:<128 lowercase hex>, not 'md5:123'"),
    ("reserved_flow_key", (*ENQUEUE, "--key", "tenant:globex"), "keys[0] must be kind:name other than tenant:"),
    ("empty_error_message", ("jobs", "fail", "{leased}", "--lease", "{lease}", "--error", ""), "error"),
]

# Rejected by click itself (exit 2): non-numeric values, missing options, out-of-range click types.
USAGE = [
    ("non_numeric_limit", ("jobs", "claim", "--worker", "w", "--limit", "ten"), "--limit"),
    ("non_numeric_lease_seconds", ("jobs", "claim", "--worker", "w", "--lease-seconds", "soon"),
     "--lease-seconds"),
    ("non_numeric_progress", ("jobs", "heartbeat", "{leased}", "--lease", "{lease}", "--progress", "half"),
     "--progress"),
    ("non_numeric_retry_after", ("jobs", "fail", "{leased}", "--lease", "{lease}", "--error", "e",
                                 "--retry-after", "later"), "--retry-after"),
    ("non_numeric_priority", (*ENQUEUE, "--priority", "high"), "--priority"),
    ("non_numeric_max_attempts", (*ENQUEUE, "--max-attempts", "3.5"), "--max-attempts"),
    ("missing_tenant", ("jobs", "enqueue", "--project", "web", "--type", "scan"), "--tenant"),
    ("missing_lease", ("jobs", "ack", "{leased}"), "--lease"),
    ("batch_with_flags", ("jobs", "enqueue", "--batch", "{empty_batch}", "--tenant", "acme"), "--batch"),
    ("negative_after_seq", ("ledger", "events", "--after-seq", "-1"), "--after-seq"),
    ("batch_file_is_a_directory", ("jobs", "enqueue", "--batch", "{a_directory}"), "--batch"),
    ("nan_lock_timeout", ("--lock-timeout", "nan", "jobs", "list"), "--lock-timeout"),
    ("endless_lock_timeout", ("--lock-timeout", "inf", "jobs", "list"), "--lock-timeout"),
]


def _params(cases):
    return [pytest.param(args, fragment, id=name) for name, args, fragment in cases]


@pytest.mark.parametrize("args, fragment", _params(INVALID))
def test_invalid_input_exits_1_with_one_line_and_changes_nothing(cli, ledger_path, world, args, fragment):
    before = ledger_state(ledger_path)
    result = cli(*(arg.format(**world) for arg in args))
    assert result.code == 1, result
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("airgap-orch: error: ")
    assert fragment.lower() in line.lower(), line
    assert ledger_state(ledger_path) == before
    assert not Path(world["no_ledger"]).exists()


@pytest.mark.parametrize("args, fragment", _params(USAGE))
def test_usage_errors_exit_2_naming_the_option_and_change_nothing(cli, ledger_path, world, args, fragment):
    before = ledger_state(ledger_path)
    result = cli(*(arg.format(**world) for arg in args))
    assert result.code == 2, result
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("airgap-orch: error: ") and fragment in line, result.stderr
    assert ledger_state(ledger_path) == before


@pytest.mark.parametrize("json_flag", [False, True], ids=["text", "json"])
def test_usage_errors_are_one_line_on_stderr(cli, world, json_flag):
    result = cli(*(["--json"] if json_flag else []), "jobs", "claim", "--worker", "w", "--limit", "ten")
    assert result.code == 2
    (line,) = result.stderr.splitlines()
    if json_flag:
        assert json.loads(line)["error"]["exit_code"] == 2
    else:
        assert line.startswith("airgap-orch: error: ") and "--limit" in line


def test_payload_at_the_documented_limit_is_accepted(cli, ledger_path, world, tmp_path):
    at_limit = tmp_path / "at_limit.json"
    at_limit.write_text(payload_of_size(MAX_PAYLOAD_BYTES), encoding="utf-8")
    result = cli(*ENQUEUE, "--payload", f"@{at_limit}", "--json")
    assert result.code == 0, result
    assert result.json["created"] is True


def test_refused_batch_creates_no_jobs_even_from_its_good_lines(cli, ledger_path, world):
    result = cli("jobs", "enqueue", "--batch", world["bad_json_batch"])
    assert result.code == 1, result
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        assert ops.list_jobs(ledger, tenant="globex")["jobs"] == []
        assert len(ops.list_jobs(ledger)["jobs"]) == 2


# (id, args, exit code, error type, where --json goes)
JSON_CASES = [
    ("unknown_job", ("jobs", "show", "{missing}"), 1, "NotFound", "before_group"),
    ("malformed_payload", (*ENQUEUE, "--payload", "{{"), 1, "InvalidInput", "after_command"),
    ("progress_over_one", ("jobs", "heartbeat", "{leased}", "--lease", "{lease}", "--progress", "2"), 1,
     "InvalidInput", "before_group"),
    ("stale_lease", ("jobs", "ack", "{leased}", "--lease", "{missing}"), 3, "StaleLease", "after_command"),
]


@pytest.mark.parametrize("args, code, error_type, position",
                         [pytest.param(*case[1:], id=case[0]) for case in JSON_CASES])
def test_json_errors_are_one_json_object_on_stderr(cli, ledger_path, world, args, code, error_type, position):
    before = ledger_state(ledger_path)
    args = [arg.format(**world) for arg in args]
    args = ["--json", *args] if position == "before_group" else [*args, "--json"]
    result = cli(*args)
    assert result.code == code, result
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    error = json.loads(line)["error"]
    assert set(error) == {"type", "message", "exit_code"}
    assert (error["type"], error["exit_code"]) == (error_type, code)
    assert "\n" not in error["message"] and error["message"]
    assert ledger_state(ledger_path) == before


def test_schema_errors_stay_one_short_line_whatever_the_field_names():
    hostile = {**SPEC, "a\nb\x1b[31m" + "x" * 5_000: 1, **{f"extra{i}": i for i in range(20)}}
    with pytest.raises(InvalidInput) as refused:
        schemas.validate("job-spec", hostile, "job")
    message = str(refused.value)
    assert "\n" not in message and "\x1b" not in message and len(message) < 400, message
    assert message.startswith("job has unknown fields ") and "and 16 more" in message


def test_a_pattern_error_says_the_expected_form_not_the_fields_documentation():
    with pytest.raises(InvalidInput) as refused:
        schemas.validate("key-target", {"key": "no colon here"}, "body")
    assert str(refused.value) == ("body.key must be kind:name such as host:nvd.nist.gov (letters, digits and . _ -; "
                                  "the name may also use : /), not 'no colon here'")


def test_a_pattern_without_an_expected_form_keeps_the_validators_own_words():
    """`description` documents a field; only `x-expected` is put into errors as the form a value must have."""
    refused = fastjsonschema.JsonSchemaValueException(
        "data.x must match pattern ^a$", value="b", name="data.x", rule="pattern",
        definition={"type": "string", "pattern": "^a$", "description": "documentation, not a form"})
    assert schemas._explain(refused, "any") == "must match pattern ^a$"

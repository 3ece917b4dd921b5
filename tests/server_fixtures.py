"""Real servers, real tokens and a plain HTTP client for the server tests (no mocks, loopback only).

- `Server(ledger, ("--no-auth",))` runs `python -m airgap_orch --ledger L serve --port 0 ...` as a subprocess and
  reads its URL from the first line it prints; `stop()` sends SIGTERM, `kill()` SIGKILL. `serving(...)` is the
  same as a context manager that always stops it.
- `Keys(directory)` makes an Ed25519 pair with `keys generate` and issues tokens with `tokens issue --json`.
- `send(url, method, path, ...)` sends one request on a fresh connection and returns a `Response`.
- `SseStream` reads `GET /events` line by line; `parse_metrics` reads the Prometheus text format.
"""

from __future__ import annotations

import contextlib
import http.client as http_client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from airgap_orch.operations import ledger as ledger_ops

ALL_SCOPES = ("orch:read", "orch:operate", "orch:quota", "orch:backfill", "orch:worker")
PROBLEM_BASE = "https://airgap-orch.dev/problems/"
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
SERVING = re.compile(r"^airgap-orch serving (?P<ledger>.+) at (?P<url>http://\S+) \(pid (?P<pid>\d+)\)$")
# Variables that would route the CLI somewhere the test did not ask for.
_ROUTING_ENV = ("AIRGAP_ORCH_TOKEN", "AIRGAP_ORCH_SERVER", "AIRGAP_ORCH_LEDGER")


# -- the CLI ----------------------------------------------------------------------------------------
@dataclass
class CliResult:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error(self) -> dict[str, Any]:
        """The `{"error": {...}}` object a `--json` command prints on stderr when it fails."""
        return json.loads(self.stderr.strip().splitlines()[-1])["error"]

    def __repr__(self) -> str:
        return (f"CliResult(args={self.args!r}, code={self.code}, stdout={self.stdout[-400:]!r}, "
                f"stderr={self.stderr[-400:]!r})")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _ROUTING_ENV}
    return {**env, **(extra or {})}


def _cli_command(ledger: Path | None, args: Iterable[str]) -> list[str]:
    command = [sys.executable, "-m", "airgap_orch"]
    if ledger is not None:
        command += ["--ledger", str(ledger)]
    return command + [str(arg) for arg in args]


def run_cli(*args: str, ledger: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> CliResult:
    """Run the real CLI in a subprocess (without any routing variables inherited from the outer shell)."""
    completed = subprocess.run(_cli_command(ledger, args), capture_output=True, text=True, timeout=timeout,
                               env=cli_env(env))
    return CliResult(tuple(args), completed.returncode, completed.stdout, completed.stderr)


def run_cli_parallel(commands: list[tuple[str, ...]], *, ledger: Path | None = None,
                     env: dict[str, str] | None = None, timeout: float = 60) -> list[CliResult]:
    """Run independent CLI commands at the same time (each costs an interpreter start)."""
    processes = [subprocess.Popen(_cli_command(ledger, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=cli_env(env)) for args in commands]
    results = []
    for args, process in zip(commands, processes, strict=True):
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(CliResult(tuple(args), process.returncode, stdout, stderr))
    return results


def init_ledger(path: Path, site_id: str = "site-server-test") -> Path:
    ledger_ops.init(path, site_id=site_id, lock_timeout=5)
    return path


# -- keys and tokens ---------------------------------------------------------------------------------
class Keys:
    """An Ed25519 key pair made by `keys generate`; tokens issued by `tokens issue --json`."""

    def __init__(self, directory: Path, name: str = "ops"):
        result = run_cli("keys", "generate", "--out", str(directory), "--name", name, "--json")
        assert result.code == 0, result
        self.private_key = Path(result.json["private_key"])
        self.public_key = Path(result.json["public_key"])
        self.key_id = result.json["key_id"]

    def _issue_args(self, subject: str, tenants: Iterable[str], scopes: Iterable[str], expires: str
                    ) -> tuple[str, ...]:
        args = ["tokens", "issue", "--subject", subject, "--expires", expires, "--key", str(self.private_key),
                "--json"]
        for tenant in tenants:
            args += ["--tenant", tenant]
        for scope in scopes:
            args += ["--scope", scope]
        return tuple(args)

    def issue(self, subject: str, tenants: Iterable[str], scopes: Iterable[str] = ALL_SCOPES,
              expires: str = "1h") -> str:
        result = run_cli(*self._issue_args(subject, tenants, scopes, expires))
        assert result.code == 0, result
        return result.json["token"]

    def issue_many(self, wanted: dict[str, dict[str, Any]]) -> dict[str, str]:
        """{name: {subject?, tenants, scopes?, expires?}} -> {name: token}, issued in parallel."""
        commands = [self._issue_args(spec.get("subject", name), spec["tenants"], spec.get("scopes", ALL_SCOPES),
                                     spec.get("expires", "1h")) for name, spec in wanted.items()]
        results = run_cli_parallel(commands)
        tokens = {}
        for name, result in zip(wanted, results, strict=True):
            assert result.code == 0, result
            tokens[name] = result.json["token"]
        return tokens


# -- HTTP ------------------------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def __repr__(self) -> str:
        return f"Response(status={self.status}, body={self.body[:400]!r})"


def send(url: str, method: str, path: str, body: Any = None, *, token: str | None = None,
         headers: dict[str, str] | None = None, raw: bytes | None = None, query: dict[str, Any] | None = None,
         timeout: float = 30) -> Response:
    """One request on a fresh connection. `body` is sent as JSON; `raw` as the exact bytes."""
    parts = urlsplit(url)
    connection = http_client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    if query:
        path += "?" + urlencode({key: value for key, value in query.items() if value is not None})
    try:
        connection.request(method, path, body=data, headers=sent)
        answer = connection.getresponse()
        return Response(answer.status, {key.lower(): value for key, value in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def assert_problem(response: Response, status: int, slug: str | None = None, exit_code: int | None = None
                   ) -> dict[str, Any]:
    """The answer is application/problem+json with a stable type, the status and the CLI's exit code."""
    assert response.status == status, response
    assert response.content_type == "application/problem+json", response.headers
    problem = response.json
    assert problem["status"] == status, problem
    assert problem["type"].startswith(PROBLEM_BASE), problem
    assert isinstance(problem["exit_code"], int), problem
    if slug is not None:
        assert problem["type"] == PROBLEM_BASE + slug, problem
    if exit_code is not None:
        assert problem["exit_code"] == exit_code, problem
    return problem


# -- the server --------------------------------------------------------------------------------------------
@dataclass
class Server:
    """`airgap-orch --ledger L serve --port 0 OPTIONS...` in a subprocess; stdout and stderr go to files."""

    ledger: Path
    options: tuple[str, ...] = ()
    startup_timeout: float = 60
    url: str = ""
    pid: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.ledger.with_name(self.ledger.name + f".serve-{time.monotonic_ns()}.out")
        self.stderr_path = self.stdout_path.with_suffix(".err")

    def start(self) -> Server:
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                _cli_command(self.ledger, ["serve", "--port", "0", *self.options]), stdout=stdout, stderr=stderr,
                stdin=subprocess.DEVNULL, env=cli_env())
        deadline = time.monotonic() + self.startup_timeout
        while True:
            text = self.stdout_path.read_text(encoding="utf-8", errors="replace")
            if "\n" in text:
                break
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"serve printed nothing in {self.startup_timeout}s: {self.stderr()}")
            time.sleep(0.05)
        first_line = text.splitlines()[0]
        match = SERVING.match(first_line)
        assert match, first_line
        self.url, self.pid = match["url"], int(match["pid"])
        assert self.pid == self.process.pid
        return self

    def discovery(self) -> dict[str, Any]:
        return json.loads(self.ledger.with_name(self.ledger.name + ".server.json").read_text())

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
        return send(self.url, method, path, body, **kwargs)

    def ledger_info(self, token: str | None = None) -> dict[str, Any]:
        response = self.request("GET", "/v1/ledger", token=token)
        assert response.status == 200, response
        return response.json

    def metrics(self, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = self.request("GET", "/metrics", token=token)
        assert response.status == 200, response
        return parse_metrics(response.body.decode())

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def claim_and_ack(server: Server, token: str, count: int, **claim: Any) -> list[str]:
    """A worker's loop over HTTP, `count` times: claim one job (`claim`: more claim fields, e.g. queue), ack it;
    every answer must be 200 and the job end succeeded. Returns the job ids in order."""
    done = []
    for _ in range(count):
        answer = server.request("POST", "/v1/jobs/claim", {"worker_id": "w1", "limit": 1, **claim}, token=token)
        assert answer.status == 200, answer
        (lease,) = answer.json["leases"]
        ack = server.request("POST", f"/v1/jobs/{lease['job_id']}/ack", {"lease_id": lease["lease_id"]}, token=token)
        assert ack.status == 200 and ack.json["state"] == "succeeded", ack
        done.append(lease["job_id"])
    return done


@contextlib.contextmanager
def serving(ledger: Path, *options: str) -> Iterator[Server]:
    """A started server, stopped however the block ends; a clean block also needs a clean exit (0)."""
    server = Server(ledger, options).start()
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"serve exited with {code}: {server.stderr()[-2000:]}"


# -- Server-Sent Events --------------------------------------------------------------------------------------
class SseStream:
    """GET /events (or another stream: `path`) on its own connection; `next()` returns {"id", "event", "data"} or
    raises TimeoutError."""

    def __init__(self, url: str, *, token: str | None = None, query: dict[str, str] | None = None,
                 last_event_id: int | str | None = None, headers: dict[str, str] | None = None,
                 timeout: float = 20, path: str = "/events"):
        parts = urlsplit(url)
        self.connection = http_client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        headers = {"Accept": "text/event-stream", **(headers or {})}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        path = path + ("?" + urlencode(query) if query else "")
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.content_type = (self.response.getheader("Content-Type") or "").split(";")[0].strip()

    def next(self, timeout: float = 20) -> dict[str, Any]:
        """The next message (comments and keep-alives skipped)."""
        deadline = time.monotonic() + timeout
        message: dict[str, Any] = {}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete event in time")
            self.connection.sock.settimeout(remaining)
            try:
                line = self.response.readline()
            except OSError as exc:  # socket.timeout is an OSError
                raise TimeoutError("no complete event in time") from exc
            if not line:
                raise ConnectionError("the server closed the event stream")
            text = line.decode().rstrip("\r\n")
            if text == "":
                if message:
                    if "data" in message and message.get("event") != "gap":
                        message["data"] = json.loads(message["data"])
                    return message
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            message[name] = value.removeprefix(" ")

    def until(self, predicate, timeout: float = 30) -> list[dict[str, Any]]:
        """Every message up to and including the first for which predicate(message) is true."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            seen.append(message)
            if predicate(message):
                return seen

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> SseStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# -- Prometheus text format -----------------------------------------------------------------------------------
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, ((label, value), ...)): value}. Every line must be a comment or a well-formed sample."""
    samples = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            typed[name] = kind
            continue
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = tuple(sorted(_LABEL.findall(match["labels"] or "")))
        family = re.sub(r"_(bucket|sum|count)$", "", match["name"])
        assert match["name"] in typed or family in typed, f"sample without a # TYPE line: {line!r}"
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of a family's samples whose labels include `labels` (e.g. claims over every tenant, queue and type)."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= set(found))


def _bound(le: str) -> str:
    """A bucket bound as written here: "1" for prometheus_client's "1.0", "2.5", "+Inf"."""
    return le if le == "+Inf" else f"{float(le):g}"


def histogram(samples: dict, name: str) -> dict[str, float]:
    """{le: cumulative count} plus "count" and "sum" (bounds as "1", "2.5", "+Inf")."""
    buckets = {_bound(dict(labels)["le"]): value for (sample, labels), value in samples.items()
               if sample == f"{name}_bucket"}
    return {**buckets, "count": samples[(f"{name}_count", ())], "sum": samples[(f"{name}_sum", ())]}

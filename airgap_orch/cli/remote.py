"""The CLI's remote mode: one command sent to the server that owns the ledger through the one HTTP client
(sdk/client.py OrchClient) in its bounded mode, every wait bounded by --lock-timeout (README "Control plane"), and
its failures told as the CLI tells them: a server that does not show life within the bound is LedgerBusy (exit 6)
naming the server, saying what to check and whether it may still apply the command. The request is sent once:
unlike the SDK's workers, the CLI never resends (an operator retries on exit 6).

A bundle (`upload`) is streamed from its file in pieces, never read whole, after the server has answered
`Expect: 100-continue`: a refusal (no token or scope, a bad option, a bundle over its cap) comes before any of it is
sent.

A bundle the server answers (`download`: bundle export) is written as it arrives to a hidden file beside its
destination, checked against the size and sha256 the server's summary states, and only then given its name (never
replacing a file)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, LedgerBusy
from ..sdk.client import OrchClient, Server, ServerUnavailable

__all__ = ["Server", "call", "download", "events", "upload"]


def call(server: Server, token: str | None, name: str, params: dict[str, Any], *, bound: float) -> dict[str, Any]:
    """Run operation `name` on `server`; raises the OrchError its problem+json stands for, or LedgerBusy when it
    does not show life within `bound`."""
    client = _client(server, token, bound)
    try:
        return client.call(name, params)
    except ServerUnavailable as error:
        raise LedgerBusy(f"{error}{_advice(server, error)}", holder_pid=server.pid) from None


def events(server: Server, token: str | None, name: str, params: dict[str, Any], *, bound: float, idle: float,
           last_event_id: int | None = None) -> Iterator[dict[str, str]]:
    """The Server-Sent Events of streaming operation `name` on `server` (OrchClient.events), as they come; LedgerBusy
    when the server does not answer within `bound` or the stream stays silent longer than `idle`."""
    client = _client(server, token, bound)
    try:
        yield from client.events(name, params, last_event_id=last_event_id, idle=idle)
    except ServerUnavailable as error:
        raise LedgerBusy(f"{error}{_advice(server, error)}", holder_pid=server.pid) from None


def upload(server: Server, token: str | None, name: str, params: dict[str, Any], bundle: Path, *,
           bound: float, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run upload operation `name` (api.Route.upload) on `server` with the file `bundle` as its body;
    `progress(sent, size)` hears how much of it has gone."""
    from ..operations.files import open_readable

    client = _client(server, token, bound)
    with open_readable(bundle, "bundle") as source:
        try:
            return client.upload(name, params, source, progress=progress)
        except ServerUnavailable as error:
            raise LedgerBusy(f"{error}{_advice(server, error)}", holder_pid=server.pid) from None


def download(server: Server, token: str | None, name: str, params: dict[str, Any], out: Path, *,
             bound: float, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run download operation `name` (api.Route.download) on `server` and write the file it answers to `out`
    (refused before anything is sent if `out` exists); its result, with `bundle` naming `out`."""
    import hashlib

    from ..errors import VerificationFailed
    from ..operations import files

    files.refuse_existing(out, "bundle export")
    client = _client(server, token, bound)
    with files.partial_file(out) as (partial, sink):
        digest = _Hashing(sink, hashlib.sha256())
        try:
            result = client.download(name, params, digest, progress=progress)  # type: ignore[arg-type]
        except ServerUnavailable as error:
            raise LedgerBusy(f"{error}{_advice(server, error)}", holder_pid=server.pid) from None
        if result.get("size") != result["received"] or result.get("file_sha256") != digest.hash.hexdigest():
            raise VerificationFailed(f"the bundle {server.describe()} sent does not match the size and sha256 it "
                                     "states; nothing was written: run the export again with --reissue "
                                     f"{result.get('sequence')}")
        sink.flush()
        os.fsync(sink.fileno())
        files.publish(partial, out)
    result.pop("received")
    return {**result, "bundle": str(out)}


class _Hashing:
    """A file that hashes what is written to it."""

    def __init__(self, file: Any, hash: Any):
        self.file, self.hash = file, hash

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.file.write(data)


def _client(server: Server, token: str | None, bound: float) -> OrchClient:
    try:
        return OrchClient(server, token, bound=bound)
    except ValueError as error:
        raise InvalidInput(f"{error}; check --server or $AIRGAP_ORCH_SERVER") from None


def _advice(server: Server, error: ServerUnavailable) -> str:
    if error.stage == "unreachable":
        if server.pid is not None:
            return "; is it running? check the server, retry, or raise --lock-timeout"
        return ("; is `airgap-orch serve` running there? check --server / $AIRGAP_ORCH_SERVER, retry, or raise "
                "--lock-timeout")
    if error.stage == "closed":
        return ": it may have stopped" + ("; it may have applied the command: check before retrying"
                                          if error.may_have_applied else "; retry")
    return (": it may be stopped or hung; check it, then retry or raise --lock-timeout"
            + ("; if it resumes it may still apply this command" if error.may_have_applied else ""))

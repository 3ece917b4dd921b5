"""The CLI's remote mode: one command sent to the server that owns the ledger through the one HTTP client
(sdk/client.py OrchClient) in its bounded mode, every wait bounded by --lock-timeout (README "Control plane"), and
its failures told as the CLI tells them: a server that does not show life within the bound is LedgerBusy (exit 6)
naming the server, saying what to check and whether it may still apply the command. The request is sent once:
unlike the SDK's workers, the CLI never resends (an operator retries on exit 6)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput, LedgerBusy
from ..sdk.client import OrchClient, Server, ServerUnavailable

__all__ = ["Server", "call"]


def call(server: Server, token: str | None, name: str, params: dict[str, Any], *, bound: float) -> dict[str, Any]:
    """Run operation `name` on `server`; raises the OrchError its problem+json stands for, or LedgerBusy when it
    does not show life within `bound`."""
    try:
        client = OrchClient(server, token, bound=bound)
    except ValueError as error:
        raise InvalidInput(f"{error}; check --server or $AIRGAP_ORCH_SERVER") from None
    try:
        return client.call(name, params)
    except ServerUnavailable as error:
        raise LedgerBusy(f"{error}{_advice(server, error)}", holder_pid=server.pid) from None


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

"""`airgap-orch whoami`: who the server takes the token (--token, $AIRGAP_ORCH_TOKEN) for: subject, tenants, scopes."""

from __future__ import annotations

import click

from ..errors import OrchError
from .context import emit, fail, invoke, json_option


@click.command("whoami")
@json_option
def whoami() -> None:
    """The token's subject, tenants and scopes as the server sees them (locally: an operator with every scope)."""
    try:
        result = invoke("auth.whoami", {})
    except OrchError as error:
        fail(error)
    emit(result)

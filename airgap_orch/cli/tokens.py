"""`airgap-orch tokens issue`: bearer tokens signed offline with a private key."""

from __future__ import annotations

from pathlib import Path

import click

from .. import auth
from ..auth.scopes import checked_scopes
from .context import command, settings
from .keys import passphrase_file_option, passphrase_prompt_option, read_passphrase


@click.group("tokens")
def group() -> None:
    """Bearer tokens for the server, issued offline."""


@command(group, "issue")
@click.option("--subject", required=True, help="Who holds the token (the actor in history and audit).")
@click.option("--tenant", "tenants", multiple=True, required=True,
              help="A tenant whose jobs the token may see and touch (repeat).")
@click.option("--scope", "scopes", multiple=True, required=True,
              help=f"A scope to grant (repeat): {', '.join(auth.SCOPES)}.")
@click.option("--expires", required=True, help="Lifetime like 30m, 12h or 7d; at most 366d.")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The private key (NAME.key.pem) that signs the token.")
@passphrase_file_option
@passphrase_prompt_option
def issue(subject: str, tenants: tuple[str, ...], scopes: tuple[str, ...], expires: str, key_path: Path,
          passphrase_file: Path | None, passphrase_prompt: bool) -> dict | None:
    """Print a signed token (with --json: {"token": ...})."""
    lifetime = auth.parse_duration(expires)
    checked_scopes(scopes)  # refuse a typo before asking for a passphrase
    passphrase = read_passphrase(passphrase_file, passphrase_prompt, confirm=False)
    private_key = auth.load_private_key(key_path, passphrase)
    token = auth.issue_token(private_key, subject=subject, tenants=tenants, scopes=scopes,
                             expires_in=lifetime)
    if settings().json:
        return {"token": token}
    click.echo(token)
    return None

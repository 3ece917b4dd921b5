"""`airgap-orch keys generate`: Ed25519 key pairs that sign bearer tokens."""

from __future__ import annotations

from pathlib import Path

import click

from .. import auth
from .context import command

passphrase_file_option = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Read the private key's passphrase from this file (one trailing newline is dropped).")
passphrase_prompt_option = click.option(
    "--passphrase-prompt", is_flag=True, help="Ask for the private key's passphrase on the terminal.")


def read_passphrase(passphrase_file: Path | None, prompt: bool, *, confirm: bool) -> bytes | None:
    """The passphrase from a file or a hidden prompt; never from argv. None when neither is asked for."""
    if passphrase_file is not None and prompt:
        raise click.UsageError("use --passphrase-file or --passphrase-prompt, not both")
    if passphrase_file is not None:
        return auth.read_passphrase_file(passphrase_file)
    if prompt:
        # The prompt goes to stderr so that stdout stays one clean result (--json).
        return click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm, err=True).encode()
    return None


@click.group("keys")
def group() -> None:
    """Ed25519 key pairs that sign bearer tokens."""


@command(group, "generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for NAME.key.pem and NAME.pub.pem (created 0700 if missing).")
@click.option("--name", required=True, help="File name stem: letters, digits, '.', '_', '-'.")
@passphrase_file_option
@passphrase_prompt_option
def generate(out_dir: Path, name: str, passphrase_file: Path | None, passphrase_prompt: bool) -> dict:
    """Write a new key pair; the private key is created 0600 and never overwrites a file."""
    passphrase = read_passphrase(passphrase_file, passphrase_prompt, confirm=True)
    pair = auth.generate_key_pair(out_dir, name, passphrase)
    return {"private_key": str(pair.private_key_path), "public_key": str(pair.public_key_path),
            "key_id": pair.key_id, "encrypted": pair.encrypted}

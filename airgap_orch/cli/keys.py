"""`airgap-orch keys generate`: Ed25519 key pairs that sign bearer tokens, trust roots and bundles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import auth
from ..auth.keys import MAX_KEY_FILE_BYTES
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


def load_private_keys(paths: Sequence[Path], passphrase_file: Path | None, prompt: bool
                      ) -> list[tuple[Path, Ed25519PrivateKey]]:
    """Load each private key: an encrypted one with the passphrase from --passphrase-file (the same for every
    key) or, with --passphrase-prompt, one asked for per key; an unencrypted one as it is."""
    if passphrase_file is not None and prompt:
        raise click.UsageError("use --passphrase-file or --passphrase-prompt, not both")
    shared = auth.read_passphrase_file(passphrase_file) if passphrase_file is not None else None
    loaded = []
    for path in paths:
        passphrase = None
        if _encrypted(path):
            passphrase = shared
            if prompt:
                passphrase = click.prompt(f"Passphrase for {path}", hide_input=True, err=True).encode()
        loaded.append((path, auth.load_private_key(path, passphrase)))
    return loaded


def _encrypted(path: Path) -> bool:
    """Whether the file looks like an encrypted PKCS8 PEM (auth.load_private_key says what is wrong otherwise)."""
    try:
        with Path(path).open("rb") as file:
            return b"ENCRYPTED PRIVATE KEY" in file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError:
        return False


@click.group("keys")
def group() -> None:
    """Ed25519 key pairs that sign bearer tokens, trust roots, bundles and time anchors."""


@command(group, "generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for NAME.key.pem and NAME.pub.pem (created 0700 if missing).")
@click.option("--name", required=True, help="File name stem: letters, digits, '.', '_', '-'.")
@passphrase_file_option
@passphrase_prompt_option
def generate(out_dir: Path, name: str, passphrase_file: Path | None, passphrase_prompt: bool) -> dict:
    """Write a new key pair; the private key is created 0600 and never overwrites a file.

    One kind of key serves every signature: bearer tokens (`tokens issue`, `serve --token-key`), trust roots
    (`trust sign`), bundles (`bundle export --key`, `bundle sign`) and their time anchors (`--timestamp-key`).
    Trust roots name keys by TUF key id (`trust show`), not by the key_id printed here."""
    passphrase = read_passphrase(passphrase_file, passphrase_prompt, confirm=True)
    pair = auth.generate_key_pair(out_dir, name, passphrase)
    return {"private_key": str(pair.private_key_path), "public_key": str(pair.public_key_path),
            "key_id": pair.key_id, "encrypted": pair.encrypted}

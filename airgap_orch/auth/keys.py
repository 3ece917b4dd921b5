"""Ed25519 token-signing keys: generate a pair on disk, load it back, name it by key id.

The private key file is created exclusively with mode 0600 from its first byte (no chmod afterwards),
PEM PKCS8, encrypted when a passphrase is given. The public key sits beside it as NAME.pub.pem.
Passphrases come from a file or a prompt, never from argv; no error message carries a key or passphrase.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import InvalidInput
from ..operations.files import read_capped

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_KEY_FILE_BYTES = 16 * 1024
MAX_PASSPHRASE_BYTES = 1024
PRIVATE_KEY_SUFFIX = ".key.pem"
PUBLIC_KEY_SUFFIX = ".pub.pem"


@dataclass(frozen=True)
class KeyPair:
    """Where `generate_key_pair` wrote a pair, and the key id tokens signed by it carry."""

    private_key_path: Path
    public_key_path: Path
    key_id: str
    encrypted: bool


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 hex of the raw 32-byte public key: stable across PEM re-encodings."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_key_pair(out_dir: Path, name: str, passphrase: bytes | None = None) -> KeyPair:
    """Write NAME.key.pem (0600, exclusive) and NAME.pub.pem in `out_dir`; refuse to overwrite either."""
    if not NAME_PATTERN.match(name):
        raise InvalidInput(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    if passphrase is not None:
        _check_passphrase(passphrase)
    out_dir = Path(out_dir)
    private_path = out_dir / f"{name}{PRIVATE_KEY_SUFFIX}"
    public_path = out_dir / f"{name}{PUBLIC_KEY_SUFFIX}"
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise InvalidInput(f"{path} already exists; refusing to overwrite it")
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot create key directory {out_dir}: {exc.strerror}") from None

    private_key = Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase is not None
                  else serialization.NoEncryption())
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            encryption)
    public_key = private_key.public_key()
    public_pem = public_key.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_exclusive(private_path, private_pem, 0o600)
    try:
        _write_exclusive(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink()  # we created it a moment ago; leave no half pair behind
        raise
    return KeyPair(private_path, public_path, key_id(public_key), passphrase is not None)


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load a PEM PKCS8 Ed25519 private key; InvalidInput (without key material) on any problem."""
    data = _read_key_file(Path(path), "private key")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise InvalidInput(f"private key {path} is encrypted; pass --passphrase-file F or "
                               "--passphrase-prompt") from None
        raise InvalidInput(f"private key {path} is not encrypted; drop the passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        if passphrase is not None:
            raise InvalidInput(f"cannot decrypt private key {path}: wrong passphrase") from None
        raise InvalidInput(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"private key {path} is not an Ed25519 key")
    return key


def load_public_key(source: Path | bytes) -> Ed25519PublicKey:
    """Load a PEM Ed25519 public key from a file path or from the PEM bytes themselves."""
    if isinstance(source, bytes | bytearray):
        data, what = bytes(source), "public key"
    else:
        data, what = _read_key_file(Path(source), "public key"), f"public key {source}"
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(f"{what} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{what} is not an Ed25519 key")
    return key


def read_passphrase_file(path: Path) -> bytes:
    """The file's bytes without one trailing newline (as `echo secret > F` leaves it)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PASSPHRASE_BYTES + 3)
    except OSError as exc:
        raise InvalidInput(f"cannot read passphrase file {path}: {exc.strerror}") from None
    passphrase = data.removesuffix(b"\n").removesuffix(b"\r")
    _check_passphrase(passphrase, f"passphrase file {path}")
    return passphrase


def _check_passphrase(passphrase: bytes, what: str = "passphrase") -> None:
    if not passphrase:
        raise InvalidInput(f"{what} is empty; omit the passphrase option for an unencrypted key")
    if len(passphrase) > MAX_PASSPHRASE_BYTES:
        raise InvalidInput(f"{what} is longer than {MAX_PASSPHRASE_BYTES} bytes")


def _read_key_file(path: Path, what: str) -> bytes:
    return read_capped(path, MAX_KEY_FILE_BYTES, what, hint="not a PEM key")


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never follow a planted symlink or replace a file; the mode applies at creation.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise InvalidInput(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise InvalidInput(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink()  # ours since os.open above; a truncated key file is worse than none
        raise

"""Bearer tokens: issued offline with an Ed25519 private key, verified by the server with public keys.

Format (version 1), all ASCII, at most MAX_TOKEN_CHARS characters:

    ao1.<base64url(claims)>.<base64url(signature)>

`claims` is canonical JSON (sorted keys, no spaces) matching schemas/token-claims.schema.json:
{v, kid, sub, tenants, scopes, iat, exp, jti}. The Ed25519 signature covers the ASCII bytes of
`ao1.<base64url(claims)>`, so the version prefix is signed too. base64url is unpadded (RFC 4648 §5).

`TokenVerifier.verify` checks, in this order, and raises NotAuthorized at the first failure:
length and shape, signature by one of the trusted keys (before any JSON is parsed), claims schema,
key id, issue time (allowing DEFAULT_CLOCK_SKEW for the issuer's clock), expiry (no allowance).
Messages never carry the token, its claims or its signature.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import clock, schemas, validation
from ..errors import InvalidInput, NotAuthorized
from ..validation import canonical_json
from .keys import key_id, load_public_key
from .scopes import checked_scopes

TOKEN_PREFIX = "ao1."
TOKEN_VERSION = 1
MAX_TOKEN_CHARS = 4096
MAX_TOKEN_LIFETIME = timedelta(days=366)
DEFAULT_CLOCK_SKEW = timedelta(seconds=60)
VERIFIED_CACHE_ENTRIES = 1024

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for, and what it may do. Times are naive UTC, like `clock.now()`."""

    subject: str
    tenants: tuple[str, ...]
    scopes: tuple[str, ...]
    expires_at: datetime
    key_id: str
    token_id: str


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '12h', '7d' (validation.duration_seconds) -> timedelta; at most MAX_TOKEN_LIFETIME."""
    duration = timedelta(seconds=validation.duration_seconds(text, "duration", example="30m, 12h, 7d"))
    _check_lifetime(duration)
    return duration


def issue_token(private_key: Ed25519PrivateKey, *, subject: str, tenants: Sequence[str],
                scopes: Sequence[str], expires_in: timedelta, now: datetime | None = None) -> str:
    """Sign a token for `subject` over `tenants` with `scopes`, valid from `now` for `expires_in`."""
    _check_lifetime(expires_in)
    issued_at = int(_unix(now if now is not None else clock.now()))
    claims = {
        "v": TOKEN_VERSION,
        "kid": key_id(private_key.public_key()),
        "sub": subject,
        "tenants": list(dict.fromkeys(tenants)),
        "scopes": list(checked_scopes(scopes)),
        "iat": issued_at,
        "exp": issued_at + int(expires_in.total_seconds()),
        "jti": secrets.token_hex(16),
    }
    schemas.validate("token-claims", claims, "token")
    signing_input = TOKEN_PREFIX + _b64encode(canonical_json(claims).encode("utf-8"))
    signature = private_key.sign(signing_input.encode("ascii"))
    token = f"{signing_input}.{_b64encode(signature)}"
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidInput(f"the token would be {len(token)} characters; the limit is {MAX_TOKEN_CHARS}: "
                           "name fewer tenants")
    return token


class TokenVerifier:
    """Verify tokens against the public keys the server trusts (PEM files or PEM bytes).

    A token that verified once is remembered (bounded; exact token text as the key), so a worker
    sending the same token on every request costs one dict lookup and the time checks, not an
    Ed25519 verification (~0.35 ms on the 2-core reference machine). Safe to share between threads.
    """

    def __init__(self, public_keys: Iterable[Path | bytes], *, clock_skew: timedelta = DEFAULT_CLOCK_SKEW):
        keys = [load_public_key(source) for source in public_keys]
        if not keys:
            raise InvalidInput("no token keys given; name at least one trusted public key")
        self._keys = {key_id(key): key for key in keys}
        self._clock_skew = clock_skew.total_seconds()
        self._verified: dict[str, tuple[Principal, int, int]] = {}

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, token: str, now: datetime | None = None) -> Principal:
        """The token's Principal at `now` (default clock.now()), or NotAuthorized saying what was wrong."""
        if not isinstance(token, str) or not token:
            raise NotAuthorized("token missing")
        verified = self._verified.get(token)
        if verified is None:
            verified = self._verify_signed(token)
            if len(self._verified) >= VERIFIED_CACHE_ENTRIES:
                self._verified.clear()
            self._verified[token] = verified
        principal, issued_at, expires_at = verified
        current = _unix(now if now is not None else clock.now())
        if issued_at > current + self._clock_skew:
            raise NotAuthorized("token not yet valid (issued in the future: check the issuer's clock)")
        if current >= expires_at:
            raise NotAuthorized("token expired")
        return principal

    def _verify_signed(self, token: str) -> tuple[Principal, int, int]:
        """Everything but the time checks: shape, signature, then (signed bytes only) claims."""
        if len(token) > MAX_TOKEN_CHARS:
            raise NotAuthorized(f"token longer than {MAX_TOKEN_CHARS} characters")
        if not token.isascii():
            raise NotAuthorized("token malformed: not ASCII")
        if not token.startswith(TOKEN_PREFIX):
            raise NotAuthorized("token format not recognized (expected an ao1. token)")
        parts = token[len(TOKEN_PREFIX):].split(".")
        if len(parts) != 2:
            raise NotAuthorized("token malformed: expected ao1.<claims>.<signature>")
        claims_part, signature_part = parts
        if not _BASE64URL.fullmatch(claims_part):
            raise NotAuthorized("token claims are not base64url")
        signature = _b64decode(signature_part, "signature")
        if len(signature) != _SIGNATURE_BYTES:
            raise NotAuthorized("token signature invalid")
        signer = self._signer((TOKEN_PREFIX + claims_part).encode("ascii"), signature)

        # Only signed bytes are decoded and parsed from here on.
        try:
            claims = json.loads(_b64decode(claims_part, "claims"))
        except (ValueError, RecursionError):
            raise NotAuthorized("token claims are not JSON") from None
        try:
            schemas.validate("token-claims", claims, "token claims")
        except InvalidInput as exc:
            raise NotAuthorized(str(exc)) from None
        if claims["kid"] != signer:
            raise NotAuthorized("token key id does not match the key that signed it")
        issued_at, expires_at = claims["iat"], claims["exp"]
        if expires_at <= issued_at or expires_at - issued_at > MAX_TOKEN_LIFETIME.total_seconds():
            raise NotAuthorized("token lifetime invalid")
        principal = Principal(
            subject=claims["sub"],
            tenants=tuple(claims["tenants"]),
            scopes=tuple(claims["scopes"]),
            expires_at=datetime.fromtimestamp(expires_at, UTC).replace(tzinfo=None),
            key_id=signer,
            token_id=claims["jti"],
        )
        return principal, issued_at, expires_at

    def _signer(self, signing_input: bytes, signature: bytes) -> str:
        # Tokens carry no key hint outside the signed claims, so try each trusted key (a handful at most).
        for candidate, public_key in self._keys.items():
            try:
                public_key.verify(signature, signing_input)
            except InvalidSignature:
                continue
            return candidate
        raise NotAuthorized("token signature invalid or not made by a trusted key")


def _check_lifetime(duration: timedelta) -> None:
    if duration.total_seconds() < 1:
        raise InvalidInput("token lifetime must be at least 1s")
    if duration > MAX_TOKEN_LIFETIME:
        raise InvalidInput(f"token lifetime must be at most {MAX_TOKEN_LIFETIME.days}d")


def _unix(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # naive times are UTC throughout (airgap_orch.clock)
    return moment.timestamp()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    if not _BASE64URL.fullmatch(text):
        raise NotAuthorized(f"token {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise NotAuthorized(f"token {what} is not base64url") from None
    if _b64encode(data) != text:  # one token, one spelling: refuse non-canonical trailing bits
        raise NotAuthorized(f"token {what} is not canonical base64url")
    return data

"""Authentication and scopes: Ed25519 keys, offline-issued bearer tokens, and what each scope allows.

For the server, the whole surface is:

    verifier = TokenVerifier([Path("ops.pub.pem")])     # once, from `serve --token-key` (repeatable)
    principal = verifier.verify(token)                  # NotAuthorized -> 401
    require(principal, scope_for("jobs.claim"))         # ScopeMissing  -> 403
    can_see_tenant(principal, job["tenant"])            # False         -> 404 (not 403)

Issuing (`issue_token`) and key files (`generate_key_pair`, `load_private_key`) serve the CLI.
"""

from .keys import KeyPair, generate_key_pair, key_id, load_private_key, load_public_key, read_passphrase_file
from .scopes import OPERATION_SCOPES, SCOPES, ScopeMissing, can_see_tenant, require, scope_for
from .tokens import MAX_TOKEN_CHARS, Principal, TokenVerifier, issue_token, parse_duration

__all__ = [
    "MAX_TOKEN_CHARS",
    "OPERATION_SCOPES",
    "SCOPES",
    "KeyPair",
    "Principal",
    "ScopeMissing",
    "TokenVerifier",
    "can_see_tenant",
    "generate_key_pair",
    "issue_token",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_duration",
    "read_passphrase_file",
    "require",
    "scope_for",
]

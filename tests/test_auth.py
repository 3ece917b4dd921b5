"""Keys, tokens and scopes: real Ed25519 keys on disk, real signatures, the real CLI in a subprocess."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap_orch import api, schemas
from airgap_orch.auth import (
    MAX_TOKEN_CHARS,
    OPERATION_SCOPES,
    SCOPES,
    KeyPair,
    Principal,
    ScopeMissing,
    TokenVerifier,
    can_see_tenant,
    generate_key_pair,
    issue_token,
    key_id,
    load_private_key,
    parse_duration,
    require,
    scope_for,
)
from airgap_orch.auth.scopes import SITE_WIDE_OPERATIONS
from airgap_orch.errors import InvalidInput, NotAuthorized, exit_code_for, http_problem

NOW = datetime(2030, 1, 1, 12, 0, 0)
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)  # the CLI subprocess inherits it
    yield
    os.umask(previous)


@pytest.fixture
def pair(tmp_path: Path) -> KeyPair:
    return generate_key_pair(tmp_path / "keys", "ops")


@pytest.fixture
def signer(pair: KeyPair) -> Ed25519PrivateKey:
    return load_private_key(pair.private_key_path)


@pytest.fixture
def verifier(pair: KeyPair) -> TokenVerifier:
    return TokenVerifier([pair.public_key_path])


def issue(private_key: Ed25519PrivateKey, *, scopes=("orch:read",), tenants=("acme",), lifetime="1h",
          now: datetime = NOW) -> str:
    return issue_token(private_key, subject="alice", tenants=list(tenants), scopes=list(scopes),
                       expires_in=parse_duration(lifetime), now=now)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_raw(private_key: Ed25519PrivateKey, claims_bytes: bytes) -> str:
    """Build a token by hand from the README's format description, with arbitrary claim bytes."""
    signing_input = "ao1." + b64(claims_bytes)
    return f"{signing_input}.{b64(private_key.sign(signing_input.encode()))}"


def claims_of(token: str) -> dict:
    return json.loads(unb64(token.split(".")[1]))


def refusal(verifier: TokenVerifier, token: str, now: datetime = NOW) -> str:
    with pytest.raises(NotAuthorized) as caught:
        verifier.verify(token, now)
    assert not isinstance(caught.value, ScopeMissing)
    message = str(caught.value)
    assert "\n" not in message
    for part in token.split("."):
        if len(part) > 8:
            assert part not in message, "a token error message must not echo the token"
    return message


# ---------------------------------------------------------------- keys generate


def test_keys_generate_writes_private_0600_and_public_0644_with_the_key_id(tmp_path, umask_022):
    result = run_cli(None, "keys", "generate", "--out", str(tmp_path / "keys"), "--name", "ops", "--json")
    assert result.code == 0, result
    assert set(result.json) == {"private_key", "public_key", "key_id", "encrypted"}
    private_path, public_path = Path(result.json["private_key"]), Path(result.json["public_key"])
    assert private_path == tmp_path / "keys" / "ops.key.pem"
    assert public_path == tmp_path / "keys" / "ops.pub.pem"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert result.json["encrypted"] is False
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    private_key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    assert isinstance(private_key, Ed25519PrivateKey)
    public_key = serialization.load_pem_public_key(public_path.read_bytes())
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert result.json["key_id"] == hashlib.sha256(raw).hexdigest()
    assert private_key.public_key() == public_key


def test_private_key_is_created_0600_even_under_a_permissive_umask(tmp_path):
    previous = os.umask(0)
    try:
        pair = generate_key_pair(tmp_path, "ops")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(pair.private_key_path.stat().st_mode) == 0o600


def test_keys_generate_refuses_to_overwrite_a_pre_created_private_key(tmp_path):
    existing = tmp_path / "ops.key.pem"
    existing.write_text("keep me")
    result = run_cli(None, "keys", "generate", "--out", str(tmp_path), "--name", "ops")
    assert result.code == 1, result
    assert result.stderr.strip().count("\n") == 0
    assert "already exists" in result.stderr
    assert existing.read_text() == "keep me"
    assert not (tmp_path / "ops.pub.pem").exists()


def test_keys_generate_refuses_when_the_public_key_file_exists_and_writes_nothing(tmp_path):
    (tmp_path / "ops.pub.pem").write_text("keep me")
    result = run_cli(None, "--json", "keys", "generate", "--out", str(tmp_path), "--name", "ops")
    assert result.code == 1, result
    assert json.loads(result.stderr)["error"]["exit_code"] == 1
    assert not (tmp_path / "ops.key.pem").exists()
    assert (tmp_path / "ops.pub.pem").read_text() == "keep me"


def test_keys_generate_does_not_follow_a_planted_symlink(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    (tmp_path / "ops.key.pem").symlink_to(target)
    with pytest.raises(InvalidInput, match="already exists"):
        generate_key_pair(tmp_path, "ops")
    assert target.read_text() == "keep me"


def test_keys_generate_refuses_a_name_that_is_a_path(tmp_path):
    result = run_cli(None, "keys", "generate", "--out", str(tmp_path), "--name", "../escape")
    assert result.code == 1, result
    assert not (tmp_path.parent / "escape.key.pem").exists()


def test_encrypted_key_round_trip_with_a_passphrase_file(tmp_path, umask_022):
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text("correct horse battery\n")
    generated = run_cli(None, "keys", "generate", "--out", str(tmp_path), "--name", "ops",
                        "--passphrase-file", str(passphrase_file), "--json")
    assert generated.code == 0, generated
    assert generated.json["encrypted"] is True
    private_path = Path(generated.json["private_key"])
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # The trailing newline of the file is not part of the passphrase.
    serialization.load_pem_private_key(private_path.read_bytes(), password=b"correct horse battery")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(private_path.read_bytes(), password=None)

    issue_args = ("tokens", "issue", "--subject", "ci", "--tenant", "acme", "--scope", "orch:read",
                  "--expires", "1h", "--key", str(private_path))
    issued = run_cli(None, *issue_args, "--passphrase-file", str(passphrase_file), "--json")
    assert issued.code == 0, issued
    principal = TokenVerifier([Path(generated.json["public_key"])]).verify(issued.json["token"])
    assert principal.key_id == generated.json["key_id"]
    for result in (generated, issued):
        assert "correct horse" not in result.stdout + result.stderr

    without = run_cli(None, *issue_args)
    assert without.code == 1, without
    assert "encrypted" in without.stderr

    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("not it")
    wrong = run_cli(None, *issue_args, "--passphrase-file", str(wrong_file))
    assert wrong.code == 1, wrong
    assert "wrong passphrase" in wrong.stderr
    assert "not it" not in wrong.stderr and "correct horse" not in wrong.stderr


def test_passphrase_prompt_is_hidden_and_confirmed(tmp_path):
    generated = run_cli(None, "keys", "generate", "--out", str(tmp_path), "--name", "ops",
                        "--passphrase-prompt", "--json", input="typed secret\ntyped secret\n")
    assert generated.code == 0, generated
    assert generated.json["encrypted"] is True  # stdout is the JSON alone: the prompt went to stderr
    load_private_key(Path(generated.json["private_key"]), b"typed secret")

    mismatch = run_cli(None, "keys", "generate", "--out", str(tmp_path), "--name", "other",
                       "--passphrase-prompt", input="one\ntwo\n")
    assert mismatch.code != 0
    assert not (tmp_path / "other.key.pem").exists()


def test_passphrase_is_never_taken_from_argv(tmp_path):
    for command in (("keys", "generate"), ("tokens", "issue")):
        help_text = run_cli(None, *command, "--help").stdout
        assert set(re.findall(r"--passphrase[\w-]*", help_text)) == {"--passphrase-file", "--passphrase-prompt"}
    refused = run_cli(None, "keys", "generate", "--out", str(tmp_path), "--name", "ops", "--passphrase", "x")
    assert refused.code == 2, refused
    assert not (tmp_path / "ops.key.pem").exists()


def test_passphrase_file_and_prompt_together_is_a_usage_error(tmp_path):
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text("secret")
    result = run_cli(None, "keys", "generate", "--out", str(tmp_path), "--name", "ops",
                     "--passphrase-file", str(passphrase_file), "--passphrase-prompt")
    assert result.code == 2, result
    assert not (tmp_path / "ops.key.pem").exists()


def test_empty_passphrase_file_is_refused(tmp_path):
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text("\n")
    with pytest.raises(InvalidInput, match="empty"):
        generate_key_pair(tmp_path, "ops", b"")
    result = run_cli(None, "keys", "generate", "--out", str(tmp_path), "--name", "ops",
                     "--passphrase-file", str(passphrase_file))
    assert result.code == 1, result
    assert not (tmp_path / "ops.key.pem").exists()


# ---------------------------------------------------------------- tokens issue (CLI)


def test_tokens_issue_json_is_exactly_the_token_and_it_verifies(tmp_path, pair):
    result = run_cli(None, "tokens", "issue", "--subject", "worker-7", "--tenant", "acme", "--tenant", "globex",
                     "--scope", "orch:worker", "--scope", "orch:read", "--expires", "12h",
                     "--key", str(pair.private_key_path), "--json")
    assert result.code == 0, result
    assert set(result.json) == {"token"}
    principal = TokenVerifier([pair.public_key_path]).verify(result.json["token"])
    assert principal.subject == "worker-7"
    assert principal.tenants == ("acme", "globex")
    assert set(principal.scopes) == {"orch:worker", "orch:read"}
    assert principal.key_id == pair.key_id
    claims = claims_of(result.json["token"])
    assert claims["exp"] - claims["iat"] == 12 * 3600


def test_tokens_issue_without_json_prints_the_bare_token(pair):
    result = run_cli(None, "tokens", "issue", "--subject", "alice", "--tenant", "acme", "--scope", "orch:read",
                     "--expires", "30m", "--key", str(pair.private_key_path))
    assert result.code == 0, result
    token = result.stdout.strip()
    assert result.stdout.count("\n") == 1 and token.startswith("ao1.")
    assert TokenVerifier([pair.public_key_path]).verify(token).subject == "alice"


@pytest.mark.parametrize("scope", ["orch:root", "read", "orch:READ"])  # orch:admin is a scope now
def test_unknown_scope_is_refused_at_issue_time_with_exit_1(pair, scope):
    result = run_cli(None, "tokens", "issue", "--subject", "alice", "--tenant", "acme", "--scope", "orch:read",
                     "--scope", scope, "--expires", "1h", "--key", str(pair.private_key_path))
    assert result.code == 1, result
    assert "unknown scope" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("duration", ["0m", "0d", "-5m", "12", "1w", "367d", "1.5h", ""])
def test_bad_durations_are_refused_at_issue_time_with_exit_1(pair, duration):
    result = run_cli(None, "--json", "tokens", "issue", "--subject", "alice", "--tenant", "acme",
                     "--scope", "orch:read", "--expires", duration, "--key", str(pair.private_key_path))
    assert result.code == 1, result
    assert json.loads(result.stderr)["error"]["type"] == "InvalidInput"
    assert result.stdout == ""


def test_parse_duration_units_and_bounds():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("366d") == timedelta(days=366)
    for bad in ("0s", "367d", "8785h", "-1d", "1d2h", "٣d", "1d\n1d"):
        with pytest.raises(InvalidInput):
            parse_duration(bad)


def test_issue_refuses_a_bad_tenant_or_subject(signer):
    with pytest.raises(InvalidInput, match="tenants"):
        issue(signer, tenants=["has space"])
    with pytest.raises(InvalidInput, match="sub"):
        issue_token(signer, subject="al ice\n", tenants=["acme"], scopes=["orch:read"],
                    expires_in=timedelta(hours=1), now=NOW)


def test_issue_refuses_a_token_over_the_length_limit(signer):
    tenants = [f"t{number:03d}-" + "x" * 120 for number in range(40)]
    with pytest.raises(InvalidInput, match="limit"):
        issue(signer, tenants=tenants)


# ---------------------------------------------------------------- token format and verification


def test_token_format_is_the_documented_one(signer, pair):
    token = issue(signer, scopes=["orch:worker", "orch:read"], tenants=["acme", "globex"])
    prefix, claims_part, signature_part = token.split(".")
    assert prefix == "ao1"
    claims_bytes = unb64(claims_part)
    claims = json.loads(claims_bytes)
    assert claims_bytes == json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    assert set(claims) == {"v", "kid", "sub", "tenants", "scopes", "iat", "exp", "jti"}
    assert claims["v"] == 1 and claims["kid"] == pair.key_id and claims["sub"] == "alice"
    assert claims["tenants"] == ["acme", "globex"]
    assert claims["scopes"] == ["orch:read", "orch:worker"]  # table order
    assert claims["exp"] - claims["iat"] == 3600
    schemas.validate("token-claims", claims, "claims")
    signer.public_key().verify(unb64(signature_part), f"ao1.{claims_part}".encode())  # raises if not
    assert "=" not in token and len(token) <= MAX_TOKEN_CHARS


def test_issued_token_verifies_to_its_principal(signer, verifier, pair):
    token = issue(signer, scopes=["orch:operate", "orch:read"], tenants=["acme"])
    principal = verifier.verify(token, NOW + timedelta(minutes=59))
    assert principal == Principal(subject="alice", tenants=("acme",), scopes=("orch:read", "orch:operate"),
                                  expires_at=NOW + timedelta(hours=1), key_id=pair.key_id,
                                  token_id=claims_of(token)["jti"])
    with pytest.raises(AttributeError):
        principal.subject = "mallory"  # frozen
    assert token not in repr(principal)


def test_two_tokens_for_the_same_claims_have_distinct_ids(signer):
    assert claims_of(issue(signer))["jti"] != claims_of(issue(signer))["jti"]


def test_tampered_claims_are_refused(signer, verifier):
    token = issue(signer, tenants=["acme"])
    _, claims_part, signature_part = token.split(".")
    claims = claims_of(token)
    claims["tenants"] = ["acme", "globex"]
    forged_claims = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    forged = f"ao1.{b64(forged_claims)}.{signature_part}"
    assert "signature" in refusal(verifier, forged)
    # Flipping one character of the claims text is enough too.
    flipped = claims_part[:10] + ("A" if claims_part[10] != "A" else "B") + claims_part[11:]
    assert "signature" in refusal(verifier, f"ao1.{flipped}.{signature_part}")


def test_tampered_signature_is_refused(signer, verifier):
    token = issue(signer)
    _, claims_part, signature_part = token.split(".")
    signature = bytearray(unb64(signature_part))
    signature[5] ^= 0x01
    assert "signature" in refusal(verifier, f"ao1.{claims_part}.{b64(bytes(signature))}")
    assert "signature" in refusal(verifier, f"ao1.{claims_part}.{b64(bytes(64))}")
    assert "signature" in refusal(verifier, f"ao1.{claims_part}.{b64(bytes(signature[:63]))}")


def test_token_signed_by_an_untrusted_key_is_refused(tmp_path, verifier):
    stranger = load_private_key(generate_key_pair(tmp_path / "stranger", "ops").private_key_path)
    assert "signature" in refusal(verifier, issue(stranger))


def test_verifier_trusts_every_key_it_is_given(tmp_path, pair, signer):
    second = generate_key_pair(tmp_path / "next", "ops-2026")
    second_signer = load_private_key(second.private_key_path)
    verifier = TokenVerifier([pair.public_key_path, second.public_key_path.read_bytes()])
    assert set(verifier.key_ids) == {pair.key_id, second.key_id}
    assert verifier.verify(issue(signer), NOW).key_id == pair.key_id
    assert verifier.verify(issue(second_signer), NOW).key_id == second.key_id
    only_second = TokenVerifier([second.public_key_path])
    refusal(only_second, issue(signer))


def test_verifier_needs_at_least_one_valid_public_key(tmp_path, pair):
    with pytest.raises(InvalidInput):
        TokenVerifier([])
    with pytest.raises(InvalidInput, match="not a PEM public key"):
        TokenVerifier([pair.private_key_path])


def test_expired_token_is_refused(signer, verifier):
    token = issue(signer, lifetime="1h")
    assert verifier.verify(token, NOW + timedelta(minutes=59, seconds=59)).subject == "alice"
    assert refusal(verifier, token, NOW + timedelta(hours=1)) == "token expired"
    assert refusal(verifier, token, NOW + timedelta(days=30)) == "token expired"


def test_expiry_follows_the_settable_clock(signer, verifier, manual_clock):
    manual_clock.current = NOW
    token = issue(signer, lifetime="30m")
    assert verifier.verify(token).subject == "alice"  # verified once, then remembered
    manual_clock.advance(30 * 60)
    with pytest.raises(NotAuthorized, match="expired"):
        verifier.verify(token)


def test_token_issued_in_the_future_is_refused_beyond_the_clock_skew(signer, verifier):
    token = issue(signer, now=NOW + timedelta(minutes=5))
    assert "not yet valid" in refusal(verifier, token, NOW)
    assert verifier.verify(token, NOW + timedelta(minutes=4, seconds=30)).subject == "alice"  # within 60 s
    assert "not yet valid" in refusal(verifier, token, NOW)  # and a remembered token is rechecked


def test_signature_is_checked_before_the_claims_are_parsed(tmp_path, signer, verifier):
    stranger = Ed25519PrivateKey.generate()
    assert "signature" in refusal(verifier, sign_raw(stranger, b"{not json"))
    assert "not JSON" in refusal(verifier, sign_raw(signer, b"{not json"))


def test_signed_claims_must_still_match_the_schema_and_the_signing_key(pair, signer, verifier):
    good = claims_of(issue(signer))

    def signed(**changes) -> str:
        return sign_raw(signer, json.dumps({**good, **changes}).encode())

    assert verifier.verify(signed(), NOW).subject == "alice"
    assert "scopes" in refusal(verifier, signed(scopes=["orch:root"]))
    assert "v" in refusal(verifier, signed(v=2))
    assert "tenants" in refusal(verifier, signed(tenants=[]))
    assert "key id" in refusal(verifier, signed(kid="0" * 64))
    assert "lifetime" in refusal(verifier, signed(exp=good["iat"]))
    assert "lifetime" in refusal(verifier, signed(exp=good["iat"] + 367 * 86400))
    assert "token claims" in refusal(verifier, sign_raw(signer, b"[]"))


@pytest.mark.parametrize("token", [
    "", "garbage", "ao1.", "ao1..", "ao2.e30.AAAA", "Bearer ao1.e30.AAAA", "ao1.e30", "ao1.e30.AAAA.AAAA",
    "ao1.e3 0.AAAA", "ao1.e30=.AAAA", "ao1.e30.AAAA=", "ao1.é30.AAAA", "ao1." + "A" * MAX_TOKEN_CHARS,
])
def test_malformed_tokens_are_refused(verifier, token):
    refusal(verifier, token)


def test_non_canonical_signature_encoding_is_refused(signer, verifier):
    token = issue(signer)
    _, claims_part, signature_part = token.split(".")
    # 64 bytes -> 86 characters whose last one carries 2 unused bits; setting them keeps the bytes the same.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature_part[-1])
    respelled = signature_part[:-1] + alphabet[last | 0b11 if last & 0b11 == 0 else last & ~0b11]
    assert unb64(respelled) == unb64(signature_part) and respelled != signature_part
    assert "canonical" in refusal(verifier, f"ao1.{claims_part}.{respelled}")
    assert verifier.verify(token, NOW).subject == "alice"


def test_non_text_token_is_refused(verifier):
    with pytest.raises(NotAuthorized):
        verifier.verify(b"ao1.e30.AAAA", NOW)  # type: ignore[arg-type]
    with pytest.raises(NotAuthorized):
        verifier.verify(None, NOW)  # type: ignore[arg-type]


# ---------------------------------------------------------------- scopes


def test_missing_scope_raises_scope_missing_a_not_authorized(signer, verifier):
    principal = verifier.verify(issue(signer, scopes=["orch:worker"]), NOW)
    require(principal, "orch:worker")
    with pytest.raises(ScopeMissing, match="orch:operate") as caught:
        require(principal, "orch:operate")
    assert isinstance(caught.value, NotAuthorized)
    assert exit_code_for(caught.value) == 7
    assert http_problem(caught.value)[0] == 403
    assert http_problem(NotAuthorized("token expired"))[0] == 401
    with pytest.raises(ValueError):
        require(principal, "orch:typo")


def test_worker_scope_allows_only_lease_operations():
    allowed = {operation for operation, scope in OPERATION_SCOPES.items() if scope == "orch:worker"}
    assert allowed == {"jobs.claim", "jobs.heartbeat", "jobs.ack", "jobs.ack_many", "jobs.fail", "jobs.release"}


def test_every_operation_has_one_known_scope():
    assert set(OPERATION_SCOPES) == {route.name for route in api.ROUTES} | {"events", "metrics"}
    # None: a valid token and no scope (api.ANY_TOKEN), for whoami alone: it tells a token only its own claims
    assert set(OPERATION_SCOPES.values()) <= set(SCOPES) | {None}
    assert [name for name, scope in OPERATION_SCOPES.items() if scope is None] == ["auth.whoami"]
    assert scope_for("jobs.list") == "orch:read"
    assert scope_for("jobs.enqueue") == "orch:operate"
    with pytest.raises(ValueError):
        scope_for("drop_table")
    with pytest.raises(TypeError):
        OPERATION_SCOPES["jobs.claim"] = "orch:read"  # type: ignore[index]


def test_scope_schema_enum_matches_the_scope_table():
    enum = schemas.load("token-claims")["properties"]["scopes"]["items"]["enum"]
    assert enum == list(SCOPES)
    assert all(doc and "\n" not in doc for doc in SCOPES.values())


def test_can_see_tenant_only_for_named_tenants(signer, verifier):
    principal = verifier.verify(issue(signer, tenants=["acme", "globex"]), NOW)
    assert can_see_tenant(principal, "acme") and can_see_tenant(principal, "globex")
    assert not can_see_tenant(principal, "initech")
    assert not can_see_tenant(principal, "acm")


def test_readme_scope_table_matches_the_code():
    section = README.read_text(encoding="utf-8").split("## Keys and tokens", 1)[1]
    rows = re.findall(r"^\| `(orch:[a-z]+)` \| ([^|]+) \|$", section, flags=re.MULTILINE)
    assert [scope for scope, _ in rows] == list(SCOPES)
    for scope, allows in rows:
        assert allows.strip() == SCOPES[scope]
    # orch:admin has no operation of its own: it names the ones whose totals it widens to the whole site
    assert set(re.findall(r"`([a-z_.]+)`", SCOPES["orch:admin"])) == SITE_WIDE_OPERATIONS
    # every other scope is needed by some operation (each route names its own: api.py, the OpenAPI document)
    # (whoami names none: any valid token may ask it, README "Keys and tokens")
    assert set(OPERATION_SCOPES.values()) - {None} == set(SCOPES) - {"orch:admin"}


def test_key_id_is_the_sha256_of_the_raw_public_key(pair):
    public_key = load_private_key(pair.private_key_path).public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(public_key) == pair.key_id == hashlib.sha256(raw).hexdigest()


def test_token_lifetimes_and_backfill_steps_share_one_duration_grammar():
    from airgap_orch.orchestrator.backfills import parse_step

    for text, seconds in (("90s", 90), ("30m", 1800), ("12h", 43_200), ("7d", 604_800)):
        assert parse_step(text) == seconds
        assert parse_duration(text) == timedelta(seconds=seconds)
    for bad in ("0s", "007d", "1.5h", "1d2h", "-1d", "h", "1w", "٣d", ""):
        with pytest.raises(InvalidInput, match="positive whole number and a unit s, m, h or d"):
            parse_step(bad)
        with pytest.raises(InvalidInput, match="positive whole number and a unit s, m, h or d"):
            parse_duration(bad)

"""`bundle plan | import --trust ROOT.json` while `serve` owns the ledger (issue 15, "Trust"): the root travels ahead
of the bundle in the upload's body (query trust_bytes=N: the first N bytes are the root), and the commands behave as
they do locally: with nothing pinned a successful import pins the root and says so, a refused one pins nothing; with
a root pinned the root given must be the pinned one or an older one, refused otherwise with the local command's
line and exit code. A trust_bytes the body or the root cap cannot hold is refused in one line (400, exit 1). Real
server subprocesses on loopback, the real CLI, real keys (the fixtures of test_bundle_cli.py)."""

from __future__ import annotations

import http.client
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from server_fixtures import Keys, Response, assert_problem, serving
from test_airgap_server import (  # noqa: F401 (fixtures)
    AIRGAP_SCOPES,
    bundle_of,
    keys,
    run,
    source,
    target,
    uploads_left,
)
from test_bundle_cli import cli, holders, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import audit_entries, state

from airgap_orch.bundle.limits import MAX_ROOT_BYTES
from airgap_orch.bundle.tarfmt import read_index


def _operator(keys: Keys) -> str:  # noqa: F811
    return keys.issue("operator", ["local"], AIRGAP_SCOPES)


def _tampered(bundle: Path, out: Path) -> Path:
    """The bundle with one bit of its jobs table flipped (its signature and Merkle root no longer match)."""
    with bundle.open("rb") as file:
        jobs = read_index(file).member("data/jobs.parquet")
    data = bytearray(bundle.read_bytes())
    data[jobs.data_offset + jobs.size // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def _rotated(holders, root_v1: Path, out: Path) -> Path:  # noqa: F811
    """Version 2 of the root: site-c's threshold lowered, site-a's key kept (bundles signed by a1 still verify)."""
    ok(cli("trust", "rotate", str(root_v1), "--out", str(out), "--site-threshold", "site-c=1", "--json"))
    holders.sign_root(out, "r1", "r2", previous=root_v1)
    return out


def _forked(holders, out: Path) -> Path:  # noqa: F811
    """Another version 1: same site keys, other root keys (a root this ledger never pinned)."""
    ok(cli("trust", "init", "--out", str(out), "--root-key", holders.public("r3"), "--root-threshold", "1",
           "--timestamp-key", holders.public("ts"), "--site", f"site-a={holders.public('a1')}", "--expires", "300d",
           "--json"))
    holders.sign_root(out, "r3")
    return out


def _chunked(url: str, token: str, path: str, query: dict, data: bytes) -> Response:
    """An upload without a declared size (Transfer-Encoding: chunked), so the server finds its end by reading."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", f"{path}?{urlencode(query)}")
        connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for start in range(0, len(data), 1024):
            chunk = data[start:start + 1024]
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
        answer = connection.getresponse()
        return Response(answer.status, {key.lower(): value for key, value in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def test_import_through_the_server_with_trust_into_an_unpinned_ledger_pins_the_root_and_says_so(
        holders, source, target, root_v1, keys, tmp_path):  # noqa: F811
    out = bundle_of(source, holders, tmp_path / "a.bundle")
    token = _operator(keys)
    with serving(target, "--token-key", str(keys.public_key)):
        planned = ok(run(target, token, "bundle", "plan", str(out), "--trust", str(root_v1), "--json"))
        assert planned["plan"]["pin_trust_root"] == 1 and planned["plan"]["source_site"] == "site-a"
        assert "pins trust root version 1 (from --trust)" in ok(
            run(target, token, "bundle", "plan", str(out), "--trust", str(root_v1)))
        refused(run(target, token, "trust", "show"), 1, "no trust root is pinned")  # a plan writes nothing
        done = ok(run(target, token, "bundle", "import", str(out), "--trust", str(root_v1), "--plan-digest",
                      planned["plan_digest"], "--json"))
        assert done["imported"] is True and done["pinned_trust_root"] == 1
        assert done["messages"][0] == "pinned trust root version 1 (from --trust) with this import"
        shown = ok(run(target, token, "trust", "show", "--json"))
        assert shown["version"] == 1 and shown["pinned_by"] == "token:operator (bundle import --trust)"
        assert ok(run(target, token, "airgap", "status", "--json"))["trust_root"]["version"] == 1
    pinned_here = ok(cli("trust", "show", "--json", ledger=target))
    local_v1 = ok(cli("trust", "pin", str(root_v1), "--json", ledger=new_site(tmp_path)))
    assert pinned_here["fingerprint"] == local_v1["fingerprint"]  # the root the file holds, byte for byte
    after = state(target)
    assert after["trust_roots"] == [1] and after["floors"] == [("site-a", 1)]
    assert [entry["details"]["outcome"] for entry in audit_entries(target)] == ["imported"]
    assert not uploads_left(target)


def new_site(tmp_path: Path) -> Path:
    from test_bundle_cli import new_ledger

    return new_ledger(tmp_path / "elsewhere.duckdb", "site-b")


def test_a_refused_import_through_the_server_with_trust_pins_nothing(holders, source, target, root_v1, keys,  # noqa: F811
                                                                    tmp_path):
    out = bundle_of(source, holders, tmp_path / "a.bundle")
    tampered = _tampered(out, tmp_path / "tampered.bundle")
    token = _operator(keys)
    before = state(target)
    with serving(target, "--token-key", str(keys.public_key)):
        line = refused(run(target, token, "bundle", "import", str(tampered), "--trust", str(root_v1)), 4,
                       "data/jobs.parquet")
        refused(run(target, token, "trust", "show"), 1, "no trust root is pinned")
    assert state(target) == before  # no root, no floor, no mirror rows
    entries = audit_entries(target)
    assert len(entries) == 1 and entries[0]["details"]["outcome"] == "refused"
    assert entries[0]["details"]["reason_code"] == "merkle:hash-mismatch"
    assert not uploads_left(target)
    # The same refusal as the local command's, line for line.
    assert refused(cli("bundle", "import", str(tampered), "--trust", str(root_v1), ledger=target), 4) == line
    assert state(target) == before


def test_trust_through_the_server_must_be_the_pinned_root_or_an_older_one(holders, source, target, root_v1, keys,  # noqa: F811
                                                                          tmp_path):
    out = bundle_of(source, holders, tmp_path / "a.bundle")
    v2 = _rotated(holders, root_v1, tmp_path / "root-v2.json")
    fork = _forked(holders, tmp_path / "root-v1-fork.json")
    token = _operator(keys)
    ok(cli("trust", "pin", str(root_v1), ledger=target))
    lines = {}
    with serving(target, "--token-key", str(keys.public_key)):
        lines["newer"] = refused(run(target, token, "bundle", "import", str(out), "--trust", str(v2)), 1,
                                 "--trust is version 2, newer than the pinned version 1")
        lines["fork"] = refused(run(target, token, "bundle", "plan", str(out), "--trust", str(fork)), 4,
                                "--trust version 1 is not the root this ledger pinned as version 1")
        assert ok(run(target, token, "trust", "show", "--json"))["version"] == 1
        ok(run(target, token, "trust", "pin", str(v2), "--reason", "rotation", "--json"))
        # An older root than the pinned one: verification starts from the pinned one, nothing more is pinned.
        done = ok(run(target, token, "bundle", "import", str(out), "--trust", str(root_v1), "--json"))
        assert done["imported"] is True and done["pinned_trust_root"] is None and done["messages"] == []
        assert ok(run(target, token, "trust", "show", "--json"))["version"] == 2
    assert state(target)["trust_roots"] == [1, 2]
    # The local command refuses both the same way, with the same line and exit code.
    assert refused(cli("bundle", "plan", str(out), "--trust", str(fork), ledger=target), 4) == lines["fork"]
    elsewhere = new_site(tmp_path)
    ok(cli("trust", "pin", str(root_v1), ledger=elsewhere))
    assert refused(cli("bundle", "import", str(out), "--trust", str(v2), ledger=elsewhere), 1) == lines["newer"]


def test_trust_bytes_beyond_the_body_or_the_root_cap_is_refused_in_one_line(holders, source, target, root_v1,  # noqa: F811
                                                                             keys, tmp_path):  # noqa: F811
    out = bundle_of(source, holders, tmp_path / "a.bundle")
    token = _operator(keys)
    root = root_v1.read_bytes()
    octets = {"Content-Type": "application/octet-stream"}
    before = state(target)
    with serving(target, "--token-key", str(keys.public_key)) as server:
        for path in ("/v1/bundles/plan", "/v1/bundles/import"):
            # Declared sizes: refused from the head, before any of the body is read.
            short = server.request("POST", path, raw=root[:100], token=token, headers=octets,
                                   query={"trust_bytes": len(root)})
            problem = assert_problem(short, 400, "invalid-input", 1)
            assert f"inside the {len(root)} bytes of trust root that query parameter trust_bytes names" in \
                problem["detail"] and "\n" not in problem["detail"]
            for wrong in (MAX_ROOT_BYTES + 1, 0, -1):
                over = server.request("POST", path, raw=root + out.read_bytes(), token=token, headers=octets,
                                      query={"trust_bytes": wrong})
                problem = assert_problem(over, 400, "invalid-input", 1)
                assert f"query parameter trust_bytes is {wrong}; a trust root ahead of the bundle is 1 to " \
                       f"{MAX_ROOT_BYTES} bytes" == problem["detail"]
            # No declared size: the body's end, read inside the root, is refused the same way.
            chunked = _chunked(server.url, token, path, {"trust_bytes": len(root)}, root[:-1])
            problem = assert_problem(chunked, 400, "invalid-input", 1)
            assert f"the body ends after {len(root) - 1} bytes, inside the {len(root)} bytes" in problem["detail"]
            # The root is bytes in the body, never a path the server would read.
            for name in ("trust", "trust_root"):
                named = server.request("POST", path, raw=out.read_bytes(), token=token, headers=octets,
                                       query={name: str(root_v1)})
                assert "unknown query parameter" in assert_problem(named, 400, "invalid-input", 1)["detail"]
        # A framed body, chunked: the root, then the bundle, planned.
        framed = _chunked(server.url, token, "/v1/bundles/plan", {"trust_bytes": len(root)}, root + out.read_bytes())
        assert framed.status == 200 and framed.json["plan"]["pin_trust_root"] == 1, framed
        # The CLI refuses a root file over the cap before it sends anything, in one line.
        big = tmp_path / "big-root.json"
        big.write_bytes(b" " * (MAX_ROOT_BYTES + 1))
        refused(run(target, token, "bundle", "import", str(out), "--trust", str(big)), 1,
                f"larger than {MAX_ROOT_BYTES} bytes")
        assert server.request("GET", "/healthz").status == 200
    assert state(target) == before and audit_entries(target) == []
    assert not uploads_left(target)

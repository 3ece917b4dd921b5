"""Issue 15, "What moves": a bundle's idempotency keys, job dependencies, sources, backfills and backfill windows
become read-only mirrors at the target (mirror_rows, migration 0016), like its policies: replaced by a later full
bundle, merged by key (keys, dependencies) or replaced (the tables that travel whole) by an incremental one,
untouched by a refused import, counted by `bundle plan` and `bundle list`, shown by `bundle mirrors`. Real CLI
subprocesses, real keys and ledgers (the fixtures of test_bundle_import.py)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from export_fixtures import populate  # noqa: F401 (used by the source fixture)
from server_fixtures import ALL_SCOPES, Keys, serving
from test_bundle_cli import cli, export, holders, new_ledger, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import bundle, source, state, target  # noqa: F401 (fixtures)

from airgap_orch.bundle.tables import BY_NAME
from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch
from airgap_orch.operations import jobs as job_ops

ROW_TABLES = ("idempotency_keys", "job_dependencies", "sources", "backfills", "backfill_windows")


def _plain(value):
    return value.isoformat() if isinstance(value, datetime) else value


def source_rows(ledger: Path, table: str) -> dict[str, dict]:
    """The source ledger's rows of a table, by mirror key (order columns joined by '/'), as the bundle's columns."""
    spec = BY_NAME[table]
    names = spec.schema.names
    with Ledger.open(ledger, lock_timeout=5) as opened:
        rows = opened._con.execute(f"SELECT {', '.join(names)} FROM {spec.source}").fetchall()
    out = {}
    for row in rows:
        values = dict(zip(names, (_plain(value) for value in row), strict=True))
        out["/".join(str(values[column]) for column in spec.order)] = values
    return out


def mirrored(ledger: Path, site: str = "site-a") -> dict[str, dict[str, dict]]:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        rows = opened._con.execute("SELECT kind, key, row_json FROM mirror_rows WHERE source_site = ?",
                                   [site]).fetchall()
    out: dict[str, dict[str, dict]] = {name: {} for name in ROW_TABLES}
    for kind, key, row_json in rows:
        out[kind][key] = json.loads(row_json)
    return out


def test_a_full_import_mirrors_keys_dependencies_sources_backfills_and_windows(holders, source, target,  # noqa: F811
                                                                                root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    planned = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), "--json", ledger=target))
    tables = {table["table"]: table for table in planned["plan"]["tables"]}
    expected = {name: source_rows(source, name) for name in ROW_TABLES}
    for name in ROW_TABLES:
        assert expected[name], name  # the fixture has rows of each
        assert (tables[name]["action"], tables[name]["mirror"], tables[name]["rows"], tables[name]["replaces"]) == (
            "mirrored", "mirror_rows", len(expected[name]), 0), name
    ok(cli("bundle", "import", str(out), "--plan-digest", planned["plan_digest"], "--trust", str(root_v1),
           ledger=target))
    assert mirrored(target) == expected
    counts = ok(cli("bundle", "list", "--json", ledger=target))["mirrors"]["site-a"]
    assert {name: counts[name] for name in ROW_TABLES} == {name: len(expected[name]) for name in ROW_TABLES}
    shown = ok(cli("bundle", "mirrors", "--source", "site-a", "--kind", "sources", "--json", ledger=target))
    assert shown["counts"] == {"site-a": {"sources": 1}} and shown["truncated"] is False
    assert [(row["table"], row["key"], row["row"]) for row in shown["rows"]] == [
        ("sources", "nvd", expected["sources"]["nvd"])]
    everything = ok(cli("bundle", "mirrors", "--json", ledger=target))
    assert len(everything["rows"]) == sum(len(rows) for rows in expected.values())
    refused(cli("bundle", "mirrors", "--kind", "quotas", ledger=target), 1, "--kind", "airgap policies")
    # read-only: the target's own tables did not get them
    with Ledger.open(target, lock_timeout=5) as opened:
        assert opened._con.execute("SELECT count(*) FROM sources").fetchone()[0] == 0
        assert opened._con.execute("SELECT count(*) FROM backfills").fetchone()[0] == 0


def test_a_later_full_bundle_replaces_the_mirrored_rows(holders, source, target, root_v1, tmp_path):  # noqa: F811
    ok(cli("bundle", "import", str(bundle(source, holders, tmp_path / "1.bundle")), "--trust", str(root_v1),
           ledger=target))
    with Ledger.open(source, lock_timeout=5) as ledger:
        dispatch.run(ledger, "sources.add", {"tenant": "globex", "name": "osv", "type": "advisory.feed",
                                              "reason": "second"})
        job_ops.enqueue(ledger, {"tenant": "acme", "project": "web", "type": "scan", "idempotency_key": "later"})
    second = bundle(source, holders, tmp_path / "2.bundle")
    planned = ok(cli("bundle", "plan", str(second), "--json", ledger=target))
    tables = {table["table"]: table for table in planned["plan"]["tables"]}
    assert tables["idempotency_keys"]["replaces"] == len(source_rows(source, "idempotency_keys")) - 1
    ok(cli("bundle", "import", str(second), ledger=target))
    held = mirrored(target)
    assert held == {name: source_rows(source, name) for name in ROW_TABLES}
    assert set(held["sources"]) == {"nvd", "osv"} and "site-a/acme/later" in held["idempotency_keys"]


def test_an_incremental_bundle_merges_keys_and_dependencies_and_replaces_whole_tables(holders, source,  # noqa: F811
                                                                                      target, root_v1,  # noqa: F811
                                                                                      tmp_path):
    ok(cli("bundle", "import", str(bundle(source, holders, tmp_path / "1.bundle")), "--trust", str(root_v1),
           ledger=target))
    first = mirrored(target)
    with Ledger.open(source, lock_timeout=5) as ledger:
        parent = job_ops.enqueue(ledger, {"tenant": "acme", "project": "web", "type": "scan",
                                          "idempotency_key": "inc-1"})["job_id"]
        job_ops.enqueue(ledger, {"tenant": "acme", "project": "web", "type": "report", "idempotency_key": "inc-2",
                                 "depends_on": [parent]})
        dispatch.run(ledger, "sources.add", {"tenant": "globex", "name": "osv", "type": "advisory.feed",
                                              "reason": "second"})
    second = tmp_path / "2.bundle"
    ok(export(source, second, holders, "--incremental", "--json"))
    planned = ok(cli("bundle", "plan", str(second), "--json", ledger=target))
    tables = {table["table"]: table for table in planned["plan"]["tables"]}
    assert planned["plan"]["kind"] == "incremental"
    assert (tables["idempotency_keys"]["action"], tables["idempotency_keys"]["adds"]) == ("merged", 2)
    assert (tables["job_dependencies"]["action"], tables["job_dependencies"]["adds"]) == ("merged", 1)
    assert (tables["sources"]["action"], tables["sources"]["rows"], tables["sources"]["replaces"]) == (
        "mirrored", 2, 1)
    ok(cli("bundle", "import", str(second), ledger=target))
    held = mirrored(target)
    # the incremental bundle carries only the new keys and edges: the held ones stay, the new ones join them
    assert held["idempotency_keys"] == source_rows(source, "idempotency_keys")
    assert set(first["idempotency_keys"]) < set(held["idempotency_keys"])
    assert held["job_dependencies"] == source_rows(source, "job_dependencies")
    assert len(held["job_dependencies"]) == len(first["job_dependencies"]) + 1
    assert any(key.endswith(f"/{parent}") for key in held["job_dependencies"])
    assert held["sources"] == source_rows(source, "sources") and set(held["sources"]) == {"nvd", "osv"}
    assert held["backfills"] == source_rows(source, "backfills")
    assert held["backfill_windows"] == source_rows(source, "backfill_windows")


def test_a_refused_import_leaves_the_mirrored_rows_unchanged(holders, source, target, root_v1,  # noqa: F811
                                                             tmp_path):
    ok(cli("bundle", "import", str(bundle(source, holders, tmp_path / "1.bundle")), "--trust", str(root_v1),
           ledger=target))
    before, rows_before = state(target), mirrored(target)
    with Ledger.open(source, lock_timeout=5) as ledger:
        dispatch.run(ledger, "sources.add", {"tenant": "globex", "name": "osv", "type": "advisory.feed",
                                              "reason": "second"})
    other = tmp_path / "c.bundle"
    ok(export(source, other, holders, "--json", target="site-c"))
    refused(cli("bundle", "import", str(other), ledger=target), 5)
    assert state(target) == before and "mirror_rows" in before
    assert mirrored(target) == rows_before and set(rows_before["sources"]) == {"nvd"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    return Keys(tmp_path_factory.mktemp("server-keys"))


def test_bundle_mirrors_goes_through_the_server_that_owns_the_ledger(holders, source, target, root_v1,  # noqa: F811
                                                                     keys, tmp_path):
    ok(cli("bundle", "import", str(bundle(source, holders, tmp_path / "1.bundle")), "--trust", str(root_v1),
           ledger=target))
    windows = source_rows(source, "backfill_windows")
    assert len(windows) > 2
    token = keys.issue("operator", ["local"], (*ALL_SCOPES, "orch:airgap"))
    reader = keys.issue("reader", ["local"], ALL_SCOPES)
    with serving(target, "--token-key", str(keys.public_key)):
        shown = ok(cli("--token", token, "bundle", "mirrors", "--kind", "backfill_windows", "--limit", "2", "--json",
                       ledger=target))
        assert shown["counts"] == {"site-a": {"backfill_windows": len(windows)}} and shown["truncated"] is True
        assert [(row["key"], row["row"]) for row in shown["rows"]] == sorted(windows.items())[:2]
        refused(cli("--token", token, "bundle", "mirrors", "--kind", "jobs", ledger=target), 1, "--kind")
        refused(cli("--token", reader, "bundle", "mirrors", ledger=target), 7)


def test_bundle_mirrors_pages_with_a_cursor_that_ends_where_the_rows_end(holders, source, target, root_v1,  # noqa: F811
                                                                         keys, tmp_path):
    """GET /v1/bundles/mirrors answers a page and a next_cursor; following the cursors lists every mirrored row
    once, in (source site, table, key) order, and the last page has no cursor. An edited cursor is refused."""
    ok(cli("bundle", "import", str(bundle(source, holders, tmp_path / "1.bundle")), "--trust", str(root_v1),
           ledger=target))
    every = sorted((kind, key) for kind, rows in mirrored(target).items() for key in rows)
    assert len(every) > 5
    token = keys.issue("operator", ["local"], (*ALL_SCOPES, "orch:airgap"))
    with serving(target, "--token-key", str(keys.public_key)) as server:
        seen, cursor, pages = [], None, 0
        while True:
            query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            answer = server.request("GET", "/v1/bundles/mirrors", token=token, query=query)
            assert answer.status == 200, answer
            page = answer.json
            assert len(page["rows"]) <= 2
            seen += [(row["table"], row["key"]) for row in page["rows"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == every and pages == -(-len(every) // 2)
        edited = server.request("GET", "/v1/bundles/mirrors", token=token,
                                query={"limit": "2", "cursor": "WyJqb2JzIiwiYSJd"})
        assert edited.status == 400 and "cursor" in edited.json["detail"]

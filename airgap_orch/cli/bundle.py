"""`airgap-orch bundle export | inspect | verify | sign`: signed, verifiable snapshots of the ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .. import clock, validation
from ..errors import InvalidInput
from .context import command, fail, invoke, progress_bar, settings
from .keys import load_private_keys, passphrase_file_option, passphrase_prompt_option
from .paging import invoke_listing

FILE = click.Path(dir_okay=False, path_type=Path)


@click.group("bundle")
def group() -> None:
    """Signed, compressed, verifiable snapshots of the ledger that cross the air gap."""


@command(group, "export")
@click.option("--out", required=True, type=FILE, help="The bundle file to write (never replaces a file).")
@click.option("--target", "target_site", required=True, metavar="SITE",
              help="The site the bundle is for (each target has its own sequence).")
@click.option("--key", "key_paths", multiple=True, type=FILE,
              help="A PRIVATE key of this site that signs the manifest (repeat; more later with `bundle sign`). "
                   "Required, except for --reissue of a bundle already written.")
@click.option("--timestamp-key", "timestamp_paths", multiple=True, type=FILE,
              help="A PRIVATE key of the trust root's timestamp role that signs the time anchor (repeat). "
                   "Required, except for --reissue of a bundle already written.")
@click.option("--tenant", help="Export this tenant's rows only.")
@click.option("--created-at", help="The bundle's time (ISO 8601, UTC if no offset; default now): the time anchor's.")
@click.option("--trust", "root_paths", multiple=True, type=FILE, metavar="ROOT.json",
              help="A trust root to carry (repeat): the rotations the target may not hold yet.")
@click.option("--incremental", is_flag=True,
              help="Carry only what changed since the latest export to --target (its base); default: a full bundle.")
@click.option("--base", "base_sequence", type=click.IntRange(min=1), metavar="SEQ",
              help="Cut an incremental bundle from this earlier export to --target (implies --incremental).")
@click.option("--handoff", is_flag=True,
              help="Hand pending, never-started jobs over to --target first: they become handed_off here (committed "
                   "before the file is written) and claimable jobs there.")
@click.option("--backfill", "backfills", multiple=True, metavar="ID",
              help="With --handoff: hand over this backfill's pending windows (repeat).")
@click.option("--queue", "queues", multiple=True, metavar="Q",
              help="With --handoff: hand over this queue's pending jobs (repeat). Neither --queue nor --backfill: "
                   "every pending job.")
@click.option("--reissue", type=click.IntRange(min=1), metavar="SEQ",
              help="Write the bundle of this sequence to --target again, byte for byte (lost media).")
@click.option("--reason", help="Why --handoff (recorded in the hand-off's audit entry).")
@passphrase_file_option
@passphrase_prompt_option
def export(out: Path, target_site: str, key_paths: tuple[Path, ...], timestamp_paths: tuple[Path, ...],
           tenant: str | None, created_at: str | None, root_paths: tuple[Path, ...], incremental: bool,
           base_sequence: int | None, handoff: bool, backfills: tuple[str, ...], queues: tuple[str, ...],
           reissue: int | None, reason: str | None, passphrase_file: Path | None,
           passphrase_prompt: bool) -> dict | None:
    """Write a bundle of the ledger (jobs, history, idempotency keys, limits, sources, backfills, audit log),
    read in one consistent snapshot, signed by this site's keys with a signed time anchor: FULL by default,
    INCREMENTAL with --incremental or --base; --handoff hands pending jobs to the target; --reissue writes an
    earlier bundle again. While `serve` owns the ledger the server exports, signing with the keys it was started
    with (serve --bundle-key, --timestamp-key), and the bundle streams back to --out."""
    from ..operations import bundles as ops
    from ..operations import trust as trust_ops

    through_server = settings().server_target() is not None
    if through_server and (key_paths or timestamp_paths):
        raise InvalidInput("--key and --timestamp-key stay off a server: the server that owns the ledger signs with "
                           "the keys it was started with (serve --bundle-key, --timestamp-key); drop them, or stop "
                           "the server and export locally")
    if not through_server and reissue is None and not key_paths:
        raise click.UsageError("Missing option '--key'.")
    if not through_server and reissue is None and not timestamp_paths:
        raise click.UsageError("Missing option '--timestamp-key'.")
    keys = (load_private_keys([*key_paths, *timestamp_paths], passphrase_file, passphrase_prompt)
            if key_paths or timestamp_paths else [])
    local = {"signing_keys": [ops.SigningKey(str(path), key) for path, key in keys[:len(key_paths)]],
             "timestamp_keys": [ops.SigningKey(str(path), key) for path, key in keys[len(key_paths):]]}
    params = {"target": target_site, "tenant": tenant, "created_at": created_at, "incremental": incremental,
              "base": base_sequence, "reissue": reissue, "handoff": handoff, "backfills": list(backfills),
              "queues": list(queues), "reason": reason,
              "roots": [_root_text(trust_ops.read_root(path), path) for path in root_paths]}
    params = {key: value for key, value in params.items() if value not in (None, False, [])}
    with progress_bar("receiving bundle" if through_server else "exporting rows") as bar:
        result = invoke("bundles.export", params, download=out, local=local, progress=bar)
    if settings().json:
        return result
    if result["reissued"] and not result.get("first_file"):
        click.echo(f"wrote {result['bundle']} ({result['size']} bytes): bundle {result['sequence']} to "
                   f"{result['target_site']} again, sha256 {result['file_sha256']} as recorded at export")
        return None
    kind = result["kind"] + (f" (base {result['base_sequence']})" if result["base_sequence"] else "")
    click.echo(f"wrote {result['bundle']} ({result['size']} bytes): {kind} bundle {result['bundle_id']}")
    click.echo(f"{result['source_site']} -> {result['target_site']}, sequence {result['sequence']}, created "
               f"{result['created_at']}" + (f", tenant {result['tenant']}" if result["tenant"] else ""))
    click.echo("rows: " + ", ".join(f"{table} {rows}" for table, rows in result["row_counts"].items()))
    if result["handed_off"]:
        click.echo(f"handed over {result['handed_off']} jobs to {result['target_site']} (handed_off here)")
    if result["trust_roots"]:
        click.echo("carries trust root versions " + ", ".join(map(str, result["trust_roots"])))
    click.echo(f"self-check: {result['self_check']}")
    return None


def _root_text(data: bytes, path: Path) -> str:
    """A root to carry, as the text a server is sent (read here, capped: a server never gets a path)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"trust root {path} is not UTF-8 JSON") from None


@command(group, "inspect")
@click.argument("bundle_path", metavar="BUNDLE", type=FILE)
def inspect(bundle_path: Path) -> dict | None:
    """Print what a bundle says about itself, UNVERIFIED (no signature or hash is checked)."""
    from ..operations import bundles as ops

    result = ops.inspect(bundle_path)
    if settings().json:
        return result
    click.echo(f"{result['warning']}")
    click.echo(f"bundle {result['bundle']}, {result['size']} bytes, {len(result['members'])} members")
    for member in result["members"]:
        click.echo(f"  {member['size']:>12}  {member['name']}")
    click.echo(f"signatures by keyids: {', '.join(result['signature_keyids']) or 'none'}")
    click.echo(f"time anchor: {json.dumps(result['time_anchor'])}")
    click.echo("manifest (UNVERIFIED):")
    click.echo(json.dumps(result["manifest"], indent=2, sort_keys=True))
    return None


@command(group, "verify")
@click.argument("bundle_path", metavar="BUNDLE", type=FILE)
@click.option("--trust", "root_path", type=FILE, metavar="ROOT.json",
              help="Verify against this trust root, without a ledger (default: the ledger's pinned root).")
@click.option("--target", "target_site", metavar="SITE",
              help="The site the bundle must be addressed to (default: the ledger's site; none with --trust).")
@click.option("--staleness", type=click.Choice(["strict", "warn", "disabled"]), default="warn", show_default=True,
              help="strict refuses a bundle older than the budget (7 days + 1 day grace); warn only says so.")
@click.option("--now", help="Judge times as of this ISO 8601 time instead of the local clock.")
def verify(bundle_path: Path, root_path: Path | None, target_site: str | None, staleness: str,
           now: str | None) -> dict | None:
    """Run every verification step and print each result; exit 4 (verification failed) or 5 (refused by
    policy: expired root, stale, another target) at the first failing step."""
    from ..bundle.errors import BundleError
    from ..operations import bundles as ops

    moment = validation.timestamp(now, "--now") if now is not None else clock.now()
    pinned, target_site = _trust(root_path, target_site)
    try:
        with progress_bar("verifying bundle") as bar:
            verified = ops.verify(bundle_path, pinned_root=pinned, target_site=target_site, now=moment,
                                  staleness=staleness, progress=bar)
    except BundleError as error:
        _print_checks(ops.checks(error.checks), {"ok": False, "reason_code": error.reason_code})
        fail(error)
        return None
    summary = ops.verified_summary(verified)
    if settings().json:
        return summary
    _print_checks(summary["checks"], None)
    if summary["staleness"]["warning"]:
        click.echo(f"warning: {summary['staleness']['message']}", err=True)
    click.echo(f"verified: {summary['kind']} bundle {summary['bundle_id']}, {summary['source_site']} -> "
               f"{summary['target_site']}, sequence {summary['sequence']}, created {summary['created_at']}")
    return None


@command(group, "sign")
@click.argument("bundle_path", metavar="BUNDLE", type=FILE)
@click.option("--key", "key_path", required=True, type=FILE, help="Your PRIVATE key of the bundle's source site.")
@click.option("--out", required=True, type=FILE, help="Where to write the signed bundle (never replaces a file).")
@click.option("--trust", "root_path", type=FILE, metavar="ROOT.json",
              help="Verify against this trust root (default: the ledger's pinned root).")
@passphrase_file_option
@passphrase_prompt_option
def sign(bundle_path: Path, key_path: Path, out: Path, root_path: Path | None, passphrase_file: Path | None,
         passphrase_prompt: bool) -> dict | None:
    """Verify BUNDLE (every step but the site threshold), then write it to --out with your signature added:
    for sites whose threshold needs more than one key."""
    from ..operations import bundles as ops

    pinned, _ = _trust(root_path, None)
    [(path, key)] = load_private_keys([key_path], passphrase_file, passphrase_prompt)
    result = ops.sign(bundle_path, out, key=ops.SigningKey(str(path), key), pinned_root=pinned, now=clock.now())
    if settings().json:
        return result
    state = "threshold met" if result["threshold_met"] else "below threshold: more keys of the site must sign"
    click.echo(f"wrote {result['bundle']}: {result['signatures']} of {result['site_threshold']} signatures of site "
               f"{result['source_site']} ({state})")
    return None


def _trust(root_path: Path | None, target_site: str | None) -> tuple[bytes, str | None]:
    """(the root to verify from, the target site): --trust needs no ledger; otherwise the pinned root and this
    site, from the ledger or the server that owns it."""
    from ..operations import trust as trust_ops

    if root_path is not None:
        return trust_ops.read_root(root_path), target_site
    pinned = invoke("trust.root", {})
    return pinned["root"].encode("utf-8"), target_site or pinned["site_id"]


def _print_checks(checks: list[dict[str, Any]], failure: dict[str, Any] | None) -> None:
    if settings().json:
        if failure is not None:
            click.echo(json.dumps({**failure, "checks": checks}))
        return
    width = max((len(check["name"]) for check in checks), default=0)
    for check in checks:
        click.echo(f"  {'ok' if check['ok'] else 'FAIL':<4}  {check['name']:<{width}}  {check['detail']}")


# --- import side (operations/bundle_import.py) ---------------------------------------------------------------

_STALENESS = click.Choice(["strict", "warn", "disabled"])


def _print_plan(plan: dict[str, Any]) -> None:
    base = f" on base {plan['base_sequence']}" if plan.get("base_sequence") else ""
    click.echo(f"{plan['kind']} bundle {plan['bundle_id']}: {plan['source_site']} -> {plan['target_site']}, "
               f"sequence {plan['sequence']}{base} (floor {plan['floor']}), created {plan['created_at']}")
    if plan.get("tenant"):
        click.echo(f"tenant bundle: {plan['tenant']} only; the other tenants' history and audit entries are hashes "
                   "only")
    for table in plan["tables"]:
        if "adds" in table:
            more = f"updates {table['updates']}" if "updates" in table else f"already held {table['already_held']}"
            where = f" into {table['mirror']} (adds {table['adds']}, {more})"
        else:
            where = f" into {table['mirror']} (replacing {table['replaces']})" if table["mirror"] else ""
        if table["action"] == "applied":  # the authority's rows are applied and also kept as its mirror
            where = f", and mirrored{where}"
        note = f" ({table['note']})" if table.get("note") else ""
        changes = table.get("changes")
        applied = (" (" + ", ".join(f"{count} {what.replace('_', ' ')}" for what, count in changes.items()) + ")"
                   if changes else "")
        click.echo(f"  {table['table']:<20} {table['rows']:>8} rows  {table['action']}{applied}{note}{where}")
    handoff = plan.get("handoff")
    if handoff:
        click.echo(f"hands over {handoff['jobs']} jobs as local jobs here ({handoff['backfill_windows']} backfill "
                   f"windows); {handoff['already_local']} already local, {len(handoff['key_held'])} whose "
                   "idempotency key a local job holds")
    if plan["pin_trust_root"] is not None:
        click.echo(f"pins trust root version {plan['pin_trust_root']} (from --trust)")
    if plan["store_trust_roots"]:
        click.echo("stores trust root versions " + ", ".join(map(str, plan["store_trust_roots"])))


def _refused_checks(error: Any) -> None:
    from ..operations import bundles as ops

    if error.checks:
        _print_checks(ops.checks(error.checks), {"ok": False, "reason_code": error.reason_code})


@command(group, "plan")
@click.argument("bundle_path", metavar="BUNDLE", type=FILE)
@click.option("--trust", "root_path", type=FILE, metavar="ROOT.json",
              help="With nothing pinned: the root to verify from. With a root pinned: the pinned one or older.")
@click.option("--staleness", type=_STALENESS, help="Default: the ledger's setting (`airgap staleness`), else warn.")
@click.option("--force", is_flag=True, help="Override staleness (needs --reason; audited on import).")
@click.option("--reason", help="Why --force.")
def plan(bundle_path: Path, root_path: Path | None, staleness: str | None, force: bool,
         reason: str | None) -> dict | None:
    """Dry run of `bundle import`: verify BUNDLE fully, then print what would be mirrored or skipped per table,
    and the plan digest to pass to `bundle import --plan-digest`. Writes nothing."""
    result = _import_step("bundles.plan", bundle_path, root_path,
                          {"staleness": staleness, "force": force, "reason": reason})
    if _shown_plan(result):
        click.echo(f"plan digest: {result['plan_digest']}")
    return result if settings().json else None


def _shown_plan(result: dict | None) -> bool:
    """For people: the plan and any staleness warning; False (nothing more to say) when refused, already
    imported, or with --json."""
    if result is None or settings().json:
        return False
    if result["already_imported"]:
        click.echo(result["message"])
        return False
    _print_plan(result["plan"])
    if result["staleness"]["warning"]:
        click.echo(f"warning: {result['staleness']['message']}", err=True)
    return True


def _import_step(name: str, bundle_path: Path, root_path: Path | None, params: dict[str, Any]) -> dict | None:
    """Run a plan or import where the ledger lives: the server that owns it (the bundle streams to it as the
    request body, a --trust root ahead of it), else the local ledger. Either way the operation gets the root's
    bytes, read here (capped), never its path. A local refusal prints its checks, then the one-line error."""
    from ..bundle.errors import BundleError
    from ..operations import trust as trust_ops

    if root_path is not None:
        params = {**params, "trust_root": trust_ops.read_root(root_path)}
    try:
        remote = settings().server() is not None
        with progress_bar("sending bundle" if remote else "copying and verifying bundle") as bar:
            return invoke(name, {key: value for key, value in params.items() if value is not None}, upload=bundle_path,
                          progress=bar)
    except BundleError as error:
        _refused_checks(error)
        fail(error)
        return None


@command(group, "import")
@click.argument("bundle_path", metavar="BUNDLE", type=FILE)
@click.option("--plan-digest", help="Refuse (exit 3) unless the plan is still the one `bundle plan` printed.")
@click.option("--trust", "root_path", type=FILE, metavar="ROOT.json",
              help="With nothing pinned: the root to verify from, pinned by a successful import. With a root "
                   "pinned: the pinned one or older.")
@click.option("--staleness", type=_STALENESS,
              help="strict refuses a bundle older than the budget; warn only says so. Default: the ledger's "
                   "setting (`airgap staleness`), else warn.")
@click.option("--force", is_flag=True, help="Override staleness (needs --reason; audited).")
@click.option("--reason", help="Why --force.")
def import_(bundle_path: Path, plan_digest: str | None, root_path: Path | None, staleness: str | None, force: bool,
            reason: str | None) -> dict | None:
    """Verify a bundle from another site (full, or incremental on a base imported here) and import it in one
    transaction: its jobs, history and policies as read-only mirrors, the jobs it hands over as local jobs, its
    floor and time anchor; refusals are audited and quarantined."""
    result = _import_step("bundles.import", bundle_path, root_path,
                          {"plan_digest": plan_digest, "staleness": staleness, "force": force, "reason": reason})
    if not _shown_plan(result):
        return result if settings().json else None
    for message in result["messages"]:
        click.echo(message)
    click.echo(f"imported bundle {result['bundle_id']} from {result['source_site']}, sequence {result['sequence']}")
    return None


@command(group, "list")
def list_() -> dict | None:
    """The bundles this ledger imported and exported, the latest refused imports, and the mirrors per source
    site."""
    result = invoke("bundles.list", {})
    if settings().json:
        return result
    click.echo(f"imports: {len(result['imports'])}")
    for row in result["imports"]:
        passed = sum(1 for check in row.get("checks", []) if check.get("ok"))
        click.echo(f"  {row['source_site']} #{row['sequence']} {row['kind']} {row['bundle_id']} {row['outcome']} "
                   f"at {row['imported_at']}, {passed} of {len(row.get('checks', []))} checks passed")
    click.echo(f"exports: {len(result['exports'])}")
    for row in result["exports"]:
        base = f" (base {row['base_sequence']})" if row.get("base_sequence") else ""
        handed = f", hands over {row['handed_off']} jobs" if row.get("handed_off") else ""
        click.echo(f"  {row['target_site']} #{row['sequence']} {row['kind']}{base} {row['bundle_id']} at "
                   f"{row['exported_at']}{handed}")
    refused = result.get("refused_imports", [])
    total = result.get("refused_imports_total", len(refused))
    click.echo(f"refused imports: {total}" + (f" (the latest {len(refused)} shown)" if total > len(refused) else ""))
    for row in refused:
        failed = [check["name"] for check in row.get("checks", []) if not check.get("ok")]
        source = (f"{row['source_site']} #{row['sequence']}" if row.get("source_site")
                  else f"file {str(row.get('file_sha256'))[:16]}")
        click.echo(f"  {row['at']} {row['reason_code']} {source}"
                   + (f", failed check {', '.join(failed)}" if failed else "")
                   + f", quarantined as {row['quarantine_file']}")
    for site, counts in result["mirrors"].items():
        click.echo(f"mirror of {site}: {counts['jobs']} jobs, {counts['history']} history entries, "
                   f"{counts.get('audit_log', 0)} audit entries, {counts['policies']} policies, "
                   f"{counts.get('idempotency_keys', 0)} idempotency keys, {counts.get('job_dependencies', 0)} "
                   f"dependencies, {counts.get('sources', 0)} sources, {counts.get('backfills', 0)} backfills, "
                   f"{counts.get('backfill_windows', 0)} backfill windows")
    return None


@command(group, "mirrors")
@click.option("--source", "source_site", metavar="SITE", help="Only the rows mirrored from SITE.")
@click.option("--kind", metavar="TABLE", help="Only one table: idempotency_keys, job_dependencies, sources, "
              "backfills or backfill_windows.")
@click.option("--limit", type=int, default=1000, show_default=True,
              help="Rows to list at most (1 to 100,000), read a page at a time.")
def mirrors(source_site: str | None, kind: str | None, limit: int) -> dict | None:
    """Other sites' idempotency keys, dependencies, sources, backfills and windows, mirrored (read-only) from
    their bundles; policies: `airgap policies`."""
    result = invoke_listing("bundles.mirrors", {"source": source_site, "kind": kind}, limit)
    result["truncated"] = sum(sum(tables.values()) for tables in result["counts"].values()) > len(result["rows"])
    if settings().json:
        return result
    for site, tables in result["counts"].items():
        click.echo(f"mirror of {site}: " + ", ".join(f"{count} {table}" for table, count in tables.items()))
    for item in result["rows"]:
        click.echo(f"  {item['source_site']:<16} {item['table']:<18} {item['key']}")
    if result["truncated"]:
        click.echo(f"  (first {len(result['rows'])} rows; raise --limit, or narrow with --source / --kind)")
    return None


@click.group("airgap")
def airgap_group() -> None:
    """This site's air-gap state: trust root, time anchor, floors."""


@command(airgap_group, "status")
@click.option("--staleness", type=_STALENESS,
              help="strict exits 5 when the latest time anchor is past the budget. Default: the ledger's setting, "
                   "else warn.")
def status(staleness: str | None) -> dict | None:
    """The pinned trust root, the latest verified time anchor (drift, staleness, budget left) and the sequence
    floor of each source site; exit 5 past the budget in mode strict."""
    from ..operations import bundle_import as ops

    result = invoke("airgap.status", {"staleness": staleness} if staleness is not None else {})
    if settings().json:
        click.echo(json.dumps(result, default=str))
    else:
        root = result["trust_root"]
        click.echo(f"site {result['site_id']}; trust root: " + (
            "none pinned" if root is None else
            f"version {root['version']}, expires {root['expires']}" + (" (EXPIRED)" if root["expired"] else "")))
        click.echo(f"latest time anchor: {result['latest_anchor'] or 'none'}")
        if result["staleness"]:
            click.echo(f"staleness: {result['staleness']['state']} ({result['staleness']['mode']}): "
                       f"{result['staleness']['message']}")
        for floor in result["floors"]:
            click.echo(f"floor {floor['source_site']}: sequence {floor['sequence']} ({floor['imports']} imports)")
        authority = result["policy_authority"]
        click.echo("policy authority: " + ("none (bundles' policies are mirrored, not applied)" if authority is None
                                           else f"{authority['site']} (set by {authority['set_by']} at "
                                                f"{authority['set_at']}: {authority['reason']})"))
    if result["refused"]:
        fail(ops.status_refusal(result))
    return None


@command(airgap_group, "staleness")
@click.argument("mode", type=_STALENESS)
@click.option("--reason", help="Why (audited).")
def staleness_setting(mode: str, reason: str | None) -> dict | None:
    """Set this ledger's default staleness mode for `bundle plan | import` and `airgap status` (audited)."""
    result = invoke("airgap.staleness", {"mode": mode, "reason": reason} if reason else {"mode": mode})
    if settings().json:
        return result
    click.echo(f"staleness mode {result['staleness']} (was {result['previous']})")
    return None


@airgap_group.group("authority")
def authority_group() -> None:
    """The site whose bundles' quotas, rate limits and concurrency limits this site APPLIES on import (others'
    stay mirrors: `airgap policies`)."""


def _print_authority(result: dict[str, Any]) -> None:
    authority = result["policy_authority"]
    click.echo("policy authority: " + ("none" if authority is None else
                                       f"{authority['site']} (set by {authority['set_by']} at {authority['set_at']}: "
                                       f"{authority['reason']})"))


@command(authority_group, "set")
@click.argument("site", metavar="SITE")
@click.option("--reason", help="Why (required; audited).")
def authority_set(site: str, reason: str | None) -> dict | None:
    """Apply the policies of SITE's bundles from the next import on (audited)."""
    result = invoke("airgap.authority_set", {"site": site, "reason": reason} if reason else {"site": site})
    if settings().json:
        return result
    _print_authority(result)
    return None


@command(authority_group, "clear")
@click.option("--reason", help="Why (required; audited).")
def authority_clear(reason: str | None) -> dict | None:
    """No policy authority: every bundle's policies stay mirrors (rows applied before stay as they are)."""
    result = invoke("airgap.authority_clear", {"reason": reason} if reason else {})
    if settings().json:
        return result
    click.echo(f"policy authority cleared (was {result['previous']})")
    return None


@command(authority_group, "show")
def authority_show() -> dict | None:
    """This site's policy authority, if any."""
    result = invoke("airgap.authority_show", {})
    if settings().json:
        return result
    _print_authority(result)
    return None


@command(airgap_group, "policies")
@click.option("--source", "source_site", metavar="SITE", help="Only the policies mirrored from SITE.")
def policies(source_site: str | None) -> dict | None:
    """The policies other sites' bundles carried (mirrors), and whether each is the row this site applies."""
    result = invoke("airgap.policies", {"source": source_site} if source_site is not None else {})
    if settings().json:
        return result
    _print_authority(result)
    for item in result["policies"]:
        issuer = f" issued by {item['issuer_site']} v{item['issuer_version']}" if "issuer_site" in item else ""
        click.echo(f"  {item['source_site']:<16} {item['table']:<18} {item['key']:<32} "
                   f"{'applied' if item['applied'] else 'mirrored'}{issuer}")
    return None

"""The policy authority (issue 15): which other site's policies this site APPLIES, and applying them on import.

Quotas, rate limits and concurrency limits carry the site that issued them and a per-issuer version (migration
0013; a change made here is issued by this site at version = its revision). A site applies the policies of a
bundle only when the bundle's source site is its policy authority (`airgap authority set SITE --reason R`,
audited); otherwise they stay in mirror_policies, shown by `airgap policies` but not applied. Breakers (runtime
state that is each site's own) and pauses (no revision) are always mirrored only.

The rule, per incoming row of a policy table, inside the import's one transaction:
- a row the bundle says this site issued is skipped: this site holds its own rows;
- a key this site has no row for is added;
- a held row from the same issuer at the same or a newer per-issuer version is kept (a version never moves
  backwards, whatever path the row took: an authority may relay rows another site issued);
- otherwise the incoming row replaces the held one, also a row issued here: designating an authority means its
  rows win for the keys it carries (the audit entry keeps what was replaced). Keys only this site has stay.
A key the bundle does not carry is never removed: a `--tenant` bundle carries one tenant's rows and its manifest
does not say so, so absence is not deletion (deletions do not travel yet).
Every applied row counts as a local change (revision + 1) and refills its token bucket; one `policy.apply` audit
entry lists what changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from .. import clock, validation
from ..bundle.errors import PayloadError
from ..errors import InvalidInput, NotFound
from ..ledger import Ledger, Transaction
from ..orchestrator import audit, flow

# Applied tables: (the key column, the put query, the bucket prefix whose level restarts full, or None).
APPLIED: dict[str, tuple[str, str, str | None]] = {
    "quotas": ("tenant", "quota_put", "quota"),
    "rate_limits": ("scope", "rate_limit_put", "rate"),
    "concurrency_limits": ("limit_key", "concurrency_limit_put", None),
}
MIRRORED_ONLY = ("circuit_breakers", "pauses")
ADDED, REPLACED, KEPT, OWN = "added", "replaced", "kept (held version is the same or newer)", "skipped (issued here)"

RowsOf = Callable[[str], Iterable[dict[str, Any]]]


# --- the authority ------------------------------------------------------------------------------------------

def authority(read: Transaction) -> dict[str, Any] | None:
    rows = read.fetch("policy_authority_get")
    if not rows:
        return None
    site, reason, set_at, set_by = rows[0]
    return {"site": site, "reason": reason, "set_at": clock.iso(set_at), "set_by": set_by}


def set_authority(ledger: Ledger, site: Any, *, reason: Any, actor: str = "cli") -> dict[str, Any]:
    """Designate `site` this site's policy authority (audited); its bundles' policies are applied from the next
    import on. Checks run before the transaction, so a refusal leaves the ledger as it was."""
    checked_reason, _ = validation.reason_and_ticket(reason, None)
    checked = validation.site_id(site)
    if checked == ledger.site_id:
        raise InvalidInput(f"{checked} is this site; its own policies always apply. Name the site whose policies "
                           "this site should apply")
    before = authority(ledger.read())
    with ledger.transaction() as tx:
        tx.execute("policy_authority_put", authority_site=checked, reason=checked_reason, set_at=clock.now(),
                   set_by=actor)
        audit.append(tx, "policy.authority.set", actor=actor, reason=checked_reason, target=checked,
                     details={"from": before["site"] if before else None, "to": checked})
    return {"policy_authority": authority(ledger.read()), "previous": before["site"] if before else None}


def clear_authority(ledger: Ledger, *, reason: Any, actor: str = "cli") -> dict[str, Any]:
    """No policy authority: every bundle's policies stay mirrors. Rows applied earlier stay as they are."""
    checked_reason, _ = validation.reason_and_ticket(reason, None)
    before = authority(ledger.read())
    if before is None:
        raise NotFound("this site has no policy authority; see `airgap authority show`")
    with ledger.transaction() as tx:
        tx.execute("policy_authority_delete")
        audit.append(tx, "policy.authority.clear", actor=actor, reason=checked_reason, target=before["site"],
                     details={"from": before["site"], "to": None})
    return {"policy_authority": None, "previous": before["site"]}


def show_authority(ledger: Ledger) -> dict[str, Any]:
    return {"site_id": ledger.site_id, "policy_authority": authority(ledger.read())}


# --- plan and apply -----------------------------------------------------------------------------------------

def _issuer(row: dict[str, Any], source_site: str) -> tuple[str, int]:
    """(issuer site, per-issuer version) of an incoming row; a member in the layout before migration 0013 has
    neither column: its rows were issued by the source at their revision."""
    site = row.get("issuer_site") or source_site
    version = row.get("issuer_version")
    return site, int(version if version is not None else row["revision"])


def _held(found: flow.Limits, table: str) -> dict[str, dict[str, Any]]:
    return {"quotas": found.quotas, "rate_limits": found.rates, "concurrency_limits": found.concurrency_rows}[table]


def _decide(local_site: str, source_site: str, table: str, incoming: Iterable[dict[str, Any]],
            held: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per incoming row: its key, issuer, version, what happens (ADDED, REPLACED, KEPT, OWN), what it
    replaces, and (for ADDED and REPLACED) the row to write."""
    key_column = APPLIED[table][0]
    out = []
    for row in incoming:
        if row.get("record_version") != flow.RECORD_VERSION:
            raise PayloadError("policy", f"{table} row {row.get(key_column)!r} from {source_site} has record "
                               f"version {row.get('record_version')}; this site reads version {flow.RECORD_VERSION}")
        key = row[key_column]
        site, version = _issuer(row, source_site)
        old = held.get(key)
        before = None if old is None else {"issuer_site": old["issuer_site"], "issuer_version": old["issuer_version"]}
        if site == local_site:
            change = OWN
        elif old is None:
            change = ADDED
        elif old["issuer_site"] == site and (old["issuer_version"] or 0) >= version:
            change = KEPT
        else:
            change = REPLACED
        entry: dict[str, Any] = {"table": table, "key": key, "issuer_site": site, "issuer_version": version,
                                 "change": change, "before": before}
        if change in (ADDED, REPLACED):
            entry["row"] = {**row, "issuer_site": site, "issuer_version": version,
                            "revision": 1 if old is None else old["revision"] + 1}
        out.append(entry)
    return out


def _summary(decisions: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"added": 0, "replaced": 0, "kept": 0, "issued_here": 0}
    names = {ADDED: "added", REPLACED: "replaced", KEPT: "kept", OWN: "issued_here"}
    for decision in decisions:
        counts[names[decision["change"]]] += 1
    return counts


def plan(read: Transaction, local_site: str, source_site: str, rows_of: RowsOf) -> dict[str, Any]:
    """What an import of `source_site`'s policies does here: `applies` (is it the authority), per policy table
    its action (and a note saying why not applied) and, when applied, how many rows are added, replaced, kept."""
    designated = authority(read)
    applies = designated is not None and designated["site"] == source_site
    note = None if applies else (
        f"{source_site} is not the policy authority; `airgap authority set {source_site} --reason R`")
    tables: dict[str, dict[str, Any]] = {}
    found = flow.limits(read) if applies else None
    for table in APPLIED:
        if found is None:
            tables[table] = {"action": "mirrored, not applied", "note": note}
            continue
        decisions = _decide(local_site, source_site, table, rows_of(table), _held(found, table))
        tables[table] = {"action": "applied", "note": None, "changes": _summary(decisions)}
    for table in MIRRORED_ONLY:
        tables[table] = {"action": "mirrored, not applied",
                         "note": "never applied: " + ("breaker state is each site's own" if table == "circuit_breakers"
                                                      else "pauses carry no version")}
    return {"authority": designated["site"] if designated else None, "applies": applies, "tables": tables}


def apply(tx: Transaction, source_site: str, sequence: int, rows_of: RowsOf, *, actor: str) -> list[dict[str, Any]]:
    """Inside the import's transaction: apply the bundle's policy rows if `source_site` is this site's policy
    authority (module docstring), with one `policy.apply` audit entry; returns the changes (empty otherwise)."""
    designated = authority(tx)
    if designated is None or designated["site"] != source_site:
        return []
    found = flow.limits(tx)
    decisions = [entry for table in APPLIED
                 for entry in _decide(tx.site_id, source_site, table, rows_of(table), _held(found, table))]
    for entry in decisions:
        if "row" not in entry:
            continue
        _, query, bucket = APPLIED[entry["table"]]
        tx.execute(query, **entry.pop("row"))
        if bucket is not None:
            tx.execute("bucket_level_delete", bucket=f"{bucket}:{entry['key']}")  # changed limits start full
    flow.forget(tx)
    audit.append(tx, "policy.apply", actor=actor, reason=f"{source_site} is this site's policy authority",
                 target=f"{source_site}#{sequence}",
                 details={"source_site": source_site, "sequence": sequence, "summary": _summary(decisions),
                          "changes": decisions})
    return decisions


# --- showing the mirrors ------------------------------------------------------------------------------------

def mirrored(ledger: Ledger, *, source_site: str | None = None) -> dict[str, Any]:
    """Every mirrored policy row (per source site, table and key) and whether the row this site enforces for
    that key is this one (same issuer and per-issuer version)."""
    if source_site is not None:
        validation.site_id(source_site, "--source")
    read = ledger.read()
    found = flow.limits(read)
    out = []
    for site, kind, key, row_json in read.fetch("mirror_policies_list", source_site=source_site):
        row = json.loads(row_json)
        item: dict[str, Any] = {"source_site": site, "table": kind, "key": key, "row": row, "applied": False}
        if kind in APPLIED:
            issuer, version = _issuer(row, site)
            held = _held(found, kind).get(row[APPLIED[kind][0]])
            item.update(issuer_site=issuer, issuer_version=version,
                        applied=held is not None and (held["issuer_site"], held["issuer_version"]) == (issuer, version))
        out.append(item)
    return {"site_id": ledger.site_id, "policy_authority": authority(read), "policies": out}

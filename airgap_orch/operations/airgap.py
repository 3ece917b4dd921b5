"""The air-gap operations both doors reach by name: trust root show and pin, bundle export, plan, import and list,
air-gap status and staleness mode, the policy authority and the mirrored policies. Each calls the public function of
operations/trust.py, bundles.py, bundle_import.py or bundle_policies.py; these adapters only map the JSON params (a
root as text, a bundle as a file path) to their arguments.

`bundle` (plan, import) is a path the door chose: the CLI's file on the local path, the server's temporary copy
of the uploaded body (api.Route.upload) on the HTTP path. HTTP never names a file: the server sets `bundle` itself
and takes no other params but the route's query. `trust_root` (plan, import: --trust) is a root document's bytes,
never a path: the CLI reads its file; a server takes them from the head of the body (api.UPLOAD_ROOT_LENGTH).
So for `bundles.export` (api.Route.download): `out` is the CLI's --out locally and a private temporary file on the
server, which streams it back; `signing_keys` and `timestamp_keys` are the keys the CLI loaded (--key,
--timestamp-key) or those `serve` holds (--bundle-key, --timestamp-key), never a request's. Reading, verifying and
planning a bundle write nothing; an import writes in one transaction at its end (Ledger.transaction, which the
server's writer takes for each of its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bundle.limits import MAX_ROOT_BYTES
from ..errors import Forbidden, InvalidInput, NotFound
from ..ledger import Ledger
from .registry import operation

# trust.py and bundle_import.py load TUF, cryptography and pyarrow: imported in the functions below, so that the
# CLI's other commands (which load this module through dispatch.py) stay quick.


@operation("trust.show")
def trust_show(ledger: Ledger, *, actor: str = "cli", tenants: Any = None) -> dict[str, Any]:
    from . import trust

    return trust.show(ledger)


@operation("trust.root")
def trust_root(ledger: Ledger, *, actor: str = "cli", tenants: Any = None) -> dict[str, Any]:
    """The pinned root itself (checked again against its own threshold) and this site: `bundle verify` and `bundle
    sign` verify with it when no --trust is given."""
    from . import trust

    root = trust.pinned(ledger)
    if root is None:
        raise NotFound("no trust root is pinned in this ledger; pass --trust ROOT.json or pin one with `trust pin`")
    return {"site_id": ledger.site_id, "version": root.version, "fingerprint": trust.fingerprint(root),
            "root": root.data.decode("utf-8")}


@operation("trust.pin")
def trust_pin(ledger: Ledger, *, roots: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
              tenants: Any = None) -> dict[str, Any]:
    """`roots`: root.json documents as text (the CLI reads them from files; HTTP carries them in the body)."""
    from . import trust

    if not isinstance(roots, list) or not roots:
        raise InvalidInput("roots must be a list of root.json documents as text")
    return trust.pin(ledger, _root_documents(roots), reason=reason, actor=actor)


@operation("bundles.list")
def bundles_list(ledger: Ledger, *, actor: str = "cli", tenants: Any = None) -> dict[str, Any]:
    from . import bundle_import

    return bundle_import.list_bundles(ledger)


@operation("bundles.mirrors")
def bundles_mirrors(ledger: Ledger, *, source: Any = None, kind: Any = None, limit: Any = 1000, cursor: Any = None,
                    actor: str = "cli", tenants: Any = None) -> dict[str, Any]:
    from . import bundle_import

    return bundle_import.list_mirrors(ledger, source_site=source, kind=kind, limit=limit, cursor=cursor)


@operation("bundles.export")
def bundles_export(ledger: Ledger, *, out: str, target: Any, signing_keys: Any = (), timestamp_keys: Any = (),
                   tenant: Any = None, created_at: Any = None, incremental: Any = False, base: Any = None,
                   reissue: Any = None, handoff: Any = False, backfills: Any = (), queues: Any = (),
                   roots: Any = (), reason: Any = None, ticket: Any = None, progress: Any = None, actor: str = "cli",
                   tenants: Any = None, server_keys: Any = False) -> dict[str, Any]:
    """`roots`: root.json documents as text to carry (the CLI reads them from --trust files). `server_keys` (set by
    the server, never a request's: the body's schema has no such field): the keys are the server's."""
    from . import bundles

    if tenants is not None:  # a token's tenants only (auth/scopes.py: orch:admin reaches the whole site)
        if tenant is None:
            raise Forbidden("a bundle of every tenant needs a token with orch:admin; or export one of the token's "
                            "tenants with --tenant")
        if tenant not in tenants:
            raise NotFound(f"no tenant {str(tenant)[:128]!r} among the token's tenants")
    carried = _root_documents(roots)
    return bundles.export(ledger, out=Path(out), target_site=target, signing_keys=list(signing_keys),
                          timestamp_keys=list(timestamp_keys), tenant=tenant, created_at=created_at,
                          progress=progress, incremental=_flag(incremental, "incremental"), base_sequence=base,
                          handoff=_flag(handoff, "handoff"), handoff_backfills=list(backfills),
                          handoff_queues=list(queues), reissue=reissue,
                          roots=carried, reason=reason, actor=actor,
                          server_keys=server_keys is True)


@operation("bundles.plan")
def bundles_plan(ledger: Ledger, *, bundle: str, trust_root: Any = None, staleness: str | None = None,
                 force: Any = False, reason: Any = None, ticket: Any = None, actor: str = "cli",
                 tenants: Any = None, progress: Any = None) -> dict[str, Any]:
    """`progress` (local only: a callable the CLI's bar is; HTTP carries no such param)."""
    from . import bundle_import

    return bundle_import.plan(ledger, Path(bundle), trust_root=_root_bytes(trust_root),
                              staleness=_mode(staleness), force=_flag(force), reason=reason, progress=progress)


@operation("bundles.import")
def bundles_import(ledger: Ledger, *, bundle: str, trust_root: Any = None, plan_digest: str | None = None,
                   staleness: str | None = None, force: Any = False, reason: Any = None, ticket: Any = None,
                   actor: str = "cli", tenants: Any = None, progress: Any = None) -> dict[str, Any]:
    from . import bundle_import

    return bundle_import.import_bundle(ledger, Path(bundle), trust_root=_root_bytes(trust_root),
                                       plan_digest_expected=plan_digest, staleness=_mode(staleness),
                                       force=_flag(force), reason=reason, actor=actor, progress=progress)


@operation("airgap.status")
def airgap_status(ledger: Ledger, *, staleness: str | None = None, actor: str = "cli",
                  tenants: Any = None) -> dict[str, Any]:
    from . import bundle_import

    return bundle_import.status(ledger, staleness=_mode(staleness))


@operation("airgap.staleness")
def airgap_staleness(ledger: Ledger, *, mode: str, reason: Any = None, ticket: Any = None, actor: str = "cli",
                     tenants: Any = None) -> dict[str, Any]:
    from . import bundle_import

    return bundle_import.set_staleness(ledger, _mode(mode), reason=reason, actor=actor)


def _mode(value: Any) -> str | None:
    if value is not None and value not in ("strict", "warn", "disabled"):
        raise InvalidInput(f"staleness mode {str(value)[:40]!r} must be strict, warn or disabled")
    return value


def _root_documents(roots: Any) -> list[bytes]:
    """Root.json documents sent as text (`trust pin`, the roots a bundle export carries): each as UTF-8 bytes within
    the root cap; a list of anything else is InvalidInput naming the item."""
    if not isinstance(roots, list | tuple) or not all(isinstance(root, str) for root in roots):
        raise InvalidInput("roots must be a list of root.json documents as text")
    documents = []
    for index, text in enumerate(roots):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"trust root {index + 1} is not UTF-8 text").at(index) from None
        if len(data) > MAX_ROOT_BYTES:
            raise InvalidInput(f"trust root {index + 1} is larger than {MAX_ROOT_BYTES} bytes").at(index)
        documents.append(data)
    return documents


def _root_bytes(value: Any) -> bytes | None:
    """A --trust root as bytes (never a path: nothing here reads a file a request names), within the root cap."""
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise InvalidInput("trust_root must be a root.json document's bytes")
    if not value or len(value) > MAX_ROOT_BYTES:
        raise InvalidInput(f"the --trust root must be 1 to {MAX_ROOT_BYTES} bytes, not {len(value)}")
    return value


def _flag(value: Any, what: str = "force") -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false")
    return value


@operation("airgap.authority_show")
def airgap_authority_show(ledger: Ledger, *, actor: str = "cli", tenants: Any = None) -> dict[str, Any]:
    from . import bundle_policies

    return bundle_policies.show_authority(ledger)


@operation("airgap.authority_set")
def airgap_authority_set(ledger: Ledger, *, site: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
                         tenants: Any = None) -> dict[str, Any]:
    from . import bundle_policies

    return bundle_policies.set_authority(ledger, site, reason=reason, actor=actor)


@operation("airgap.authority_clear")
def airgap_authority_clear(ledger: Ledger, *, reason: Any = None, ticket: Any = None, actor: str = "cli",
                           tenants: Any = None) -> dict[str, Any]:
    from . import bundle_policies

    return bundle_policies.clear_authority(ledger, reason=reason, actor=actor)


@operation("airgap.policies")
def airgap_policies(ledger: Ledger, *, source: Any = None, actor: str = "cli", tenants: Any = None) -> dict[str, Any]:
    from . import bundle_policies

    return bundle_policies.mirrored(ledger, source_site=source)

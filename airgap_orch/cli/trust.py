"""`airgap-orch trust init | sign | rotate | pin | show`: the TUF trust root that bundles verify against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInput
from .context import command, invoke, settings
from .keys import load_private_keys, passphrase_file_option, passphrase_prompt_option

FILE = click.Path(dir_okay=False, path_type=Path)
THRESHOLD = click.IntRange(min=1, max=32)


@click.group("trust")
def group() -> None:
    """The trust root (a TUF root.json): which keys sign roots, time anchors and each site's bundles."""


def _role_options(function: Any, *, rotating: bool) -> Any:
    """--ROLE-key/--ROLE-threshold for the four TUF roles, --site/--site-threshold and --expires."""
    function = click.option("--expires", default="365d", show_default=True,
                            help="Lifetime (e.g. 365d) or an ISO 8601 time.")(function)
    function = click.option("--site-threshold", "site_thresholds", multiple=True, metavar="SITE=N",
                            help="Distinct keys of SITE that must sign its bundles (default 1).")(function)
    function = click.option("--site", "sites", multiple=True, metavar="SITE=PUB.pem[,PUB.pem]",
                            help="Bind public keys to a source site: they sign its bundles (repeat per site)."
                            + (" Given, the site's keys are replaced." if rotating else ""))(function)
    roles = (("root", None), ("targets", "the root keys"), ("timestamp", None), ("snapshot", "the timestamp keys"))
    for role, default in reversed(roles):
        if rotating:
            key_help = f"A PUBLIC key of the {role} role (repeat); given, the role's keys are replaced."
            threshold_help = f"Distinct {role} keys that must sign (default: unchanged)."
        else:
            key_help = f"A PUBLIC key (NAME.pub.pem) of the {role} role (repeat)." + (
                f" Default: {default}." if default else "")
            threshold_help = f"Distinct {role} keys that must sign (default 1" + (
                f"; with {default}, their threshold)." if default else ").")
        function = click.option(f"--{role}-threshold", type=THRESHOLD, help=threshold_help)(function)
        function = click.option(f"--{role}-key", f"{role}_keys", multiple=True, type=FILE,
                                required=not rotating and default is None, help=key_help)(function)
    return function


def _init_options(function: Any) -> Any:
    return _role_options(function, rotating=False)


def _rotate_options(function: Any) -> Any:
    return _role_options(function, rotating=True)


@command(group, "init")
@click.option("--out", required=True, type=FILE, help="Where to write root.json (never replaces a file).")
@_init_options
def init(out: Path, root_keys: tuple[Path, ...], root_threshold: int | None, targets_keys: tuple[Path, ...],
         targets_threshold: int | None, timestamp_keys: tuple[Path, ...], timestamp_threshold: int | None,
         snapshot_keys: tuple[Path, ...], snapshot_threshold: int | None, sites: tuple[str, ...],
         site_thresholds: tuple[str, ...], expires: str) -> dict | None:
    """Write trust root version 1, UNSIGNED, from PUBLIC keys only; then each root key holder runs
    `trust sign` on their own machine until the root threshold is met."""
    from ..operations import trust as ops

    roles = {
        "root": (root_keys, root_threshold or 1),
        "targets": (targets_keys or root_keys, targets_threshold or (1 if targets_keys else root_threshold or 1)),
        "timestamp": (timestamp_keys, timestamp_threshold or 1),
        "snapshot": (snapshot_keys or timestamp_keys,
                     snapshot_threshold or (1 if snapshot_keys else timestamp_threshold or 1)),
    }
    return _show(ops.init(out, roles=roles, sites=ops.site_roles(sites, site_thresholds), expires=expires),
                 f"wrote {out}")


@command(group, "sign")
@click.argument("root_path", metavar="ROOT", type=FILE)
@click.option("--key", "key_path", required=True, type=FILE, help="Your PRIVATE root key (NAME.key.pem).")
@click.option("--previous", type=FILE, help="The trusted root this one rotates from (to sign with its keys and see "
                                            "how far both thresholds are met).")
@click.option("--out", type=FILE, help="Write the signed root here instead of back to ROOT.")
@passphrase_file_option
@passphrase_prompt_option
def sign(root_path: Path, key_path: Path, previous: Path | None, out: Path | None, passphrase_file: Path | None,
         passphrase_prompt: bool) -> dict | None:
    """Add one signature (yours) to a trust root; a key that signed before is replaced, not counted twice."""
    from ..operations import trust as ops

    [(_, key)] = load_private_keys([key_path], passphrase_file, passphrase_prompt)
    result = ops.sign(root_path, key, previous=previous, out=out)
    return _show(result, f"signed {result['root']}")


@command(group, "rotate")
@click.argument("root_path", metavar="ROOT", type=FILE)
@click.option("--out", required=True, type=FILE, help="Where to write the new version (never replaces a file).")
@_rotate_options
@click.option("--remove-site", "remove_sites", multiple=True, metavar="SITE", help="Unbind a site (repeat).")
def rotate(root_path: Path, out: Path, root_keys: tuple[Path, ...], root_threshold: int | None,
           targets_keys: tuple[Path, ...], targets_threshold: int | None, timestamp_keys: tuple[Path, ...],
           timestamp_threshold: int | None, snapshot_keys: tuple[Path, ...], snapshot_threshold: int | None,
           sites: tuple[str, ...], site_thresholds: tuple[str, ...], expires: str,
           remove_sites: tuple[str, ...]) -> dict | None:
    """Write version N+1 of the trusted root ROOT, UNSIGNED, with the changes given; it becomes valid once a
    threshold of version N's root keys (`trust sign --previous ROOT`) AND of its own root keys have signed it."""
    from ..operations import trust as ops

    roles = {"root": (root_keys or None, root_threshold), "targets": (targets_keys or None, targets_threshold),
             "timestamp": (timestamp_keys or None, timestamp_threshold),
             "snapshot": (snapshot_keys or None, snapshot_threshold)}
    result = ops.rotate(root_path, out, roles=roles, sites=ops.site_roles(sites, site_thresholds),
                        remove_sites=remove_sites, expires=expires)
    return _show(result, f"wrote {out} (rotates version {result['rotates']})")


@command(group, "pin")
@click.argument("root_paths", metavar="ROOT...", nargs=-1, required=True, type=FILE)
@click.option("--reason", help="Why (recorded in the audit log).")
def pin(root_paths: tuple[Path, ...], reason: str | None) -> dict | None:
    """Verify trust root(s) and pin them in the ledger: the first must meet its own root threshold (check the
    printed fingerprint with the issuer out of band); a later version must rotate from the pinned one."""
    from ..operations import trust as ops

    roots = []
    for path in root_paths:  # read here (capped): a server is sent the documents, never a path
        try:
            roots.append(ops.read_root(path).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"trust root {path} is not UTF-8 JSON") from None
    result = invoke("trust.pin", {"roots": roots, "reason": reason} if reason else {"roots": roots})
    return _show(result, result["message"])


@command(group, "show")
def show() -> dict | None:
    """The pinned trust root: version, fingerprint, expiry, roles and sites with thresholds and key ids."""
    result = invoke("trust.show", {})
    heading = f"pinned by {result['pinned_by']} at {result['pinned_at']}" + (" (EXPIRED)" if result["expired"] else "")
    return _show(result, heading)


def _show(result: dict[str, Any], heading: str) -> dict | None:
    if settings().json:
        return result
    click.echo(heading)
    click.echo(f"trust root version {result['version']}, expires {result['expires']}")
    click.echo(f"fingerprint {result['fingerprint']}")
    signatures = result.get("signatures")
    if signatures is not None:
        line = f"signatures: {signatures['by_own_root_keys']} of {signatures['own_threshold']} own root keys"
        if "by_previous_root_keys" in signatures:
            line += (f", {signatures['by_previous_root_keys']} of {signatures['previous_threshold']} root keys of "
                     "the previous version")
        click.echo(line + ("" if result["complete"] else "  (incomplete: more holders must `trust sign` it)"))
    click.echo("roles:")
    for name, role in result["roles"].items():
        click.echo(f"  {name:<10} threshold {role['threshold']}  keys {', '.join(role['keyids'])}")
    click.echo("sites:" if result["sites"] else "sites: none bound")
    for name, role in result["sites"].items():
        click.echo(f"  {name:<10} threshold {role['threshold']}  keys {', '.join(role['keyids'])}")
    return None

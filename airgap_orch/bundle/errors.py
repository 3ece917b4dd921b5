"""The bundle error tree. Each error names its cause twice: its class (what a caller catches, and through
`airgap_orch.errors.EXIT_CODES` the exit code) and `reason_code`, a stable "family:detail" string that
quarantine records and reports carry.

    BundleError (OrchError)                        reason_code = "<family>:<detail>"
    ├── BundleVerificationError (VerificationFailed, exit 4): the bytes are not what a trusted writer made
    │   ├── TarFormatError          tar:*       archive structure (headers, padding, names, end marker)
    │   ├── SizeLimitError          size:*      a size or count cap (the writer never exceeds one)
    │   ├── EnvelopeError           dsse:*      DSSE envelope: canonical form, payload type, signatures
    │   ├── MerkleError             merkle:*    member hashes or the RFC 6962 Merkle root
    │   ├── SchemaError             schema:*    a document does not have the shape its schema requires
    │   ├── RotationError           rotation:*  trust root chain: versions, keyids, thresholds
    │   ├── AnchorError             anchor:*    time anchor: its signature, or it belongs to another bundle
    │   ├── PayloadError            payload:*   a member's content disagrees with the manifest (Parquet footer,
    │   │                                       page headers, schema, codec) or does not decode
    │   └── ChainError              chain:*     an imported hash chain (history) does not recompute from genesis
    └── BundlePolicyError (PolicyRefused, exit 5): verified, but policy refuses it
        ├── RollbackError           rollback:*  older than what this site already holds
        ├── StalenessError          staleness:* time anchor too old for the staleness budget, or in the future
        ├── ExpiredError            expiry:*    trust metadata past its expiry
        └── TargetError             target:*    the bundle is addressed to another site

A detail is lower-case words joined by '-', e.g. "dsse:threshold", "tar:padding". Messages are one line
and never carry key material. An error raised by `verify.verify_bundle` carries `checks`: the steps that
passed before it, then the failed one, for `bundle verify` to print.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ..errors import OrchError, PolicyRefused, VerificationFailed

_DETAIL = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class BundleError(OrchError):
    """Base of every bundle error; `reason_code` is "<family>:<detail>"."""

    family: ClassVar[str] = "bundle"
    checks: tuple[Any, ...] = ()  # verify.Check records up to and including the failed step
    # A step after "source-site" failed: the manifest its source site's keys signed names the bundle (source_site,
    # sequence, bundle_id, payload_sha256), so a refusal's evidence can say which bundle it was. None before.
    signed_manifest: dict[str, Any] | None = None

    def __init__(self, detail: str, message: str):
        if not _DETAIL.fullmatch(detail):
            raise ValueError(f"reason detail {detail!r} must be lower-case words joined by '-'")
        super().__init__(message)
        self.detail = detail
        self.reason_code = f"{self.family}:{detail}"


class BundleVerificationError(BundleError, VerificationFailed):
    """Hash, signature, schema, structure or chain check failed (exit 4)."""


class BundlePolicyError(BundleError, PolicyRefused):
    """Verified, but refused by policy: rollback, staleness, expiry (exit 5)."""


class TarFormatError(BundleVerificationError):
    family = "tar"


class SizeLimitError(BundleVerificationError):
    family = "size"


class EnvelopeError(BundleVerificationError):
    family = "dsse"


class MerkleError(BundleVerificationError):
    family = "merkle"


class SchemaError(BundleVerificationError):
    family = "schema"


class RotationError(BundleVerificationError):
    family = "rotation"


class AnchorError(BundleVerificationError):
    family = "anchor"


class PayloadError(BundleVerificationError):
    family = "payload"


class ChainError(BundleVerificationError):
    family = "chain"


class RollbackError(BundlePolicyError):
    family = "rollback"


class StalenessError(BundlePolicyError):
    family = "staleness"
    verdict: Any = None  # the anchor.TimeVerdict that refused the bundle


class ExpiredError(BundlePolicyError):
    family = "expiry"


class TargetError(BundlePolicyError):
    family = "target"

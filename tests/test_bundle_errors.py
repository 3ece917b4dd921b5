"""The bundle error tree maps onto the project's exit codes and carries quarantine reason codes."""

from __future__ import annotations

import pytest

from airgap_orch.bundle import errors as bundle_errors
from airgap_orch.errors import OrchError, PolicyRefused, VerificationFailed, exit_code_for, http_problem

VERIFICATION = [bundle_errors.TarFormatError, bundle_errors.SizeLimitError, bundle_errors.EnvelopeError,
                bundle_errors.MerkleError, bundle_errors.SchemaError, bundle_errors.RotationError,
                bundle_errors.AnchorError, bundle_errors.PayloadError]
POLICY = [bundle_errors.RollbackError, bundle_errors.StalenessError, bundle_errors.ExpiredError,
          bundle_errors.TargetError]


@pytest.mark.parametrize("cls", VERIFICATION)
def test_verification_errors_exit_4_with_their_family_prefix(cls):
    error = cls("some-detail", "what went wrong")
    assert isinstance(error, VerificationFailed) and isinstance(error, bundle_errors.BundleError)
    assert exit_code_for(error) == 4
    assert http_problem(error)[0] == 422
    assert error.reason_code == f"{cls.family}:some-detail"
    assert str(error) == "what went wrong"


@pytest.mark.parametrize("cls", POLICY)
def test_policy_errors_exit_5_with_their_family_prefix(cls):
    error = cls("too-old", "refused")
    assert isinstance(error, PolicyRefused) and isinstance(error, OrchError)
    assert exit_code_for(error) == 5
    assert error.reason_code == f"{cls.family}:too-old"


def test_families_are_distinct_and_match_the_documented_prefixes():
    families = [cls.family for cls in VERIFICATION + POLICY]
    assert families == ["tar", "size", "dsse", "merkle", "schema", "rotation", "anchor", "payload",
                        "rollback", "staleness", "expiry", "target"]


@pytest.mark.parametrize("detail", ["", "Upper", "two words", "trailing-", "a:b", "newline\n"])
def test_reason_detail_must_be_lower_case_words(detail):
    with pytest.raises(ValueError):
        bundle_errors.EnvelopeError(detail, "x")

"""The staleness budget as numbers: age, budget left, drift, the latest anchor that never moves backwards,
and the exact boundaries of the 7-day budget and 1-day grace in each mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airgap_orch.bundle.anchor import StalenessPolicy, assess_time, enforce_time
from airgap_orch.bundle.errors import StalenessError
from airgap_orch.errors import exit_code_for

ANCHOR = datetime(2030, 1, 1, 12, 0, 0)
TICK = timedelta(microseconds=1)
STRICT, WARN, DISABLED = StalenessPolicy("strict"), StalenessPolicy("warn"), StalenessPolicy("disabled")


def verdict(age: timedelta, policy: StalenessPolicy = STRICT, latest: datetime | None = None):  # type: ignore[no-untyped-def]
    return assess_time(ANCHOR, local_now=ANCHOR + age, latest_anchor=latest, policy=policy)


@pytest.mark.parametrize("age, policy, state, refused", [
    (timedelta(0), STRICT, "fresh", False),
    (timedelta(days=7), STRICT, "fresh", False),
    (timedelta(days=7) + TICK, STRICT, "grace", False),
    (timedelta(days=8), STRICT, "grace", False),
    (timedelta(days=8) + TICK, STRICT, "stale", True),
    (timedelta(days=8) + TICK, WARN, "stale", False),
    (timedelta(days=7) + TICK, WARN, "grace", False),
    (timedelta(days=400), DISABLED, "unchecked", False),
])
def test_budget_boundaries(age, policy, state, refused):
    result = verdict(age, policy)
    assert (result.state, result.refused) == (state, refused)
    assert result.age == age and result.budget_left == timedelta(days=8) - age
    assert result.warning == (state in ("grace", "stale") and not refused)


def test_a_refused_verdict_raises_staleness_with_exit_5_and_carries_the_numbers():
    result = verdict(timedelta(days=9))
    with pytest.raises(StalenessError) as caught:
        enforce_time(result)
    assert (caught.value.reason_code, exit_code_for(caught.value)) == ("staleness:stale", 5)
    assert caught.value.verdict is result and result.budget_left == -timedelta(days=1)
    enforce_time(verdict(timedelta(days=8)))  # grace: no error


def test_age_counts_from_the_latest_anchor_when_the_clock_is_behind_it():
    # the local clock was set back; a newer anchor this site verified earlier still dates the bundle
    result = assess_time(ANCHOR, local_now=ANCHOR, latest_anchor=ANCHOR + timedelta(days=9), policy=STRICT)
    assert result.best_known_time == ANCHOR + timedelta(days=9) and result.refused
    assert result.latest_anchor == ANCHOR + timedelta(days=9)  # an older anchor never moves it back


def test_the_latest_anchor_moves_forward_only():
    assert verdict(timedelta(hours=1)).latest_anchor == ANCHOR
    assert verdict(timedelta(hours=1), latest=ANCHOR - timedelta(days=1)).latest_anchor == ANCHOR
    assert verdict(timedelta(hours=1), latest=ANCHOR + timedelta(minutes=30)).latest_anchor == (
        ANCHOR + timedelta(minutes=30))


@pytest.mark.parametrize("policy", [STRICT, WARN, DISABLED])
def test_an_anchor_ahead_of_the_clock_beyond_the_bound_is_refused_in_every_mode(policy):
    within = verdict(-timedelta(minutes=5), policy)
    assert not within.refused and within.drift == timedelta(minutes=5) and within.latest_anchor == ANCHOR
    ahead = verdict(-timedelta(minutes=5) - TICK, policy, latest=ANCHOR - timedelta(days=2))
    assert (ahead.state, ahead.refused) == ("future", True)
    assert ahead.latest_anchor == ANCHOR - timedelta(days=2)  # a refused future anchor is not remembered
    with pytest.raises(StalenessError) as caught:
        enforce_time(ahead)
    assert caught.value.reason_code == "staleness:future"


def test_a_forced_future_anchor_is_accepted_and_becomes_the_latest():
    forced = verdict(-timedelta(days=1), StalenessPolicy(allow_future_anchor=True))
    assert (forced.state, forced.refused, forced.warning) == ("future", False, True)
    assert forced.latest_anchor == ANCHOR and forced.age == -timedelta(days=1)


def test_aware_times_are_taken_as_utc():
    aware = assess_time(ANCHOR.replace(tzinfo=UTC), local_now=(ANCHOR + timedelta(days=1)).replace(tzinfo=UTC),
                        latest_anchor=None)
    assert aware.age == timedelta(days=1) and aware.anchor_time.tzinfo is None


def test_policy_values_are_checked():
    with pytest.raises(ValueError):
        StalenessPolicy("lenient")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StalenessPolicy(warn_after=-timedelta(days=1))
    assert StalenessPolicy(warn_after=timedelta(days=2), grace=timedelta(hours=6)).refuse_after == timedelta(
        days=2, hours=6)

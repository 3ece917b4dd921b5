"""Jobs owned by another site import as read-only mirrors (issue 15 "What moves"): never claimed, cancelled or
replayed at the target. Asked to, the target says the job is a mirror and which site owns it (exit 5 for a change,
exit 1 for `jobs show`), and nothing changes. Real CLI subprocesses and keys (the fixtures of test_bundle_cli.py)."""

from __future__ import annotations

from test_bundle_cli import cli, holders, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import bundle, source, state, target  # noqa: F401 (fixtures)

from airgap_orch.ledger import Ledger


def mirrored(target, state_name: str) -> str:  # noqa: F811
    with Ledger.open(target, lock_timeout=5) as opened:
        return opened._con.execute("SELECT job_id FROM mirror_jobs WHERE state = ? ORDER BY job_id LIMIT 1",
                                   [state_name]).fetchone()[0]


def test_a_mirrored_job_is_never_claimed_cancelled_or_replayed_here(holders, source, target, root_v1,  # noqa: F811
                                                                     tmp_path):
    out = bundle(source, holders, tmp_path / "full.bundle")
    ok(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target))
    before = state(target)
    queued, dead = mirrored(target, "queued"), mirrored(target, "succeeded")

    refused(cli("jobs", "cancel", queued, "--reason", "not ours", ledger=target), 5,
            f"job {queued} is a read-only mirror of site site-a's job", "do it at site-a")
    refused(cli("jobs", "replay", dead, "--reason", "retry", ledger=target), 5, "read-only mirror", "never replayed")
    refused(cli("deadletter", "replay", dead, "--reason", "retry", ledger=target), 5, "read-only mirror")
    refused(cli("jobs", "show", queued, ledger=target), 1, f"no local job {queued}", "mirror of site site-a")
    refused(cli("jobs", "ack", queued, "--lease", "00000000-0000-4000-8000-000000000000", ledger=target), 5,
            "read-only mirror")
    claimed = ok(cli("jobs", "claim", "--worker-id", "w", "--limit", "100", "--json", ledger=target))
    assert queued not in {lease["job_id"] for lease in claimed["leases"]}
    assert state(target)["mirror_jobs"] == before["mirror_jobs"]
    # an id that is neither local nor mirrored is simply not found
    refused(cli("jobs", "cancel", "01a24a4f-0000-7000-8000-000000000000", "--reason", "x", ledger=target), 1,
            "no job")

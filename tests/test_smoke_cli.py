from __future__ import annotations


def test_enqueue_then_show_round_trips_through_the_cli(cli):
    created = cli("--json", "jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan",
                  "--payload", '{"image": "nginx:1.27"}')
    assert created.code == 0, created
    job_id = created.json["job_id"]
    shown = cli("jobs", "show", job_id, "--json")
    assert shown.code == 0, shown
    assert shown.json["state"] == "queued"
    assert shown.json["payload"] == {"image": "nginx:1.27"}
    assert [entry["event_type"] for entry in shown.json["history"]] == ["job.created"]

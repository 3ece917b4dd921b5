"""Child program: one of several client processes racing through one server (real parallelism, no shared lock).

usage: python racing_client.py URL NAME KEYS

Prints "ready" once imported and waits for a line on stdin (the parent sends it to every racer at once, so they
start together however long each took to start), enqueues KEYS jobs with the shared idempotency keys
race-0 .. race-{KEYS-1} in a shuffled order, then claims and acks until a claim finds nothing.
Prints one JSON object: {"name", "enqueued": {key: [job_id, created]}, "acked": [job_id...], "refused": [...]}.
"""

from __future__ import annotations

import json
import random
import sys

from airgap_orch.errors import OrchError
from airgap_orch.sdk.client import OrchClient


def main() -> None:
    url, name, keys = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = OrchClient(url, timeout=30.0)
    order = list(range(keys))
    random.Random(name).shuffle(order)
    print("ready", flush=True)
    sys.stdin.readline()
    enqueued = {}
    for number in order:
        spec = {"tenant": "acme", "project": "race", "type": "race", "payload": {"n": number},
                "idempotency_key": f"race-{number}"}
        answer = client.call("jobs.enqueue", {"spec": spec})
        enqueued[spec["idempotency_key"]] = [answer["job_id"], answer["created"]]
    acked, refused = [], []
    while True:
        leases = client.call("jobs.claim", {"worker_id": name, "limit": 3, "lease_seconds": 60})["leases"]
        if not leases:
            break
        for lease in leases:
            try:
                client.call("jobs.ack", {"job_id": lease["job_id"], "lease_id": lease["lease_id"]})
                acked.append(lease["job_id"])
            except OrchError as error:
                refused.append([lease["job_id"], str(error)])
    print(json.dumps({"name": name, "enqueued": enqueued, "acked": acked, "refused": refused}))


if __name__ == "__main__":
    main()

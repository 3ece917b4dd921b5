"""orch.event.v1 envelopes (schemas/event-envelope.schema.json), built from history entries.

Envelopes are derived on the way out of the process; the hot path only writes history rows.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = "orch.event.v1"


def envelope(entry: dict[str, Any]) -> dict[str, Any]:
    """Envelope for one parsed history entry (history.parse)."""
    return {
        "schemaVersion": SCHEMA_VERSION,
        "eventId": entry["event_id"],
        "eventType": entry["event_type"],
        "occurredAt": entry["occurred_at"],
        "correlationId": entry.get("correlation_id"),
        "tenantId": entry["tenant"],
        "projectId": entry["project"],
        "idempotencyKey": f"orch-{entry['event_type']}-{entry['job_id']}-{entry['attempt']}",
        "actor": entry["actor"],
        "job": {
            "id": entry["job_id"],
            "type": entry["job_type"],
            "attempt": entry["attempt"],
            "leaseId": entry.get("lease_id"),
            "workerId": entry.get("worker_id"),
            "status": entry["to_state"],
            "reason": entry.get("reason"),
            "payloadDigest": entry["payload_digest"],
            "artifacts": entry["artifacts"],
        },
    }

"""The durable store: requests, per-system tasks, the audit trail, the outbox and leases."""

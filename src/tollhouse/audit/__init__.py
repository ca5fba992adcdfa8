"""The audit trail: one append-only, hash-chained log of what the gateway enforced and changed."""

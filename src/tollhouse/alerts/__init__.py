"""Alerts that reach people: Slack, email and signed webhooks, from a durable outbox."""

"""Chaos suite: many payments in flight while workers are killed and restarted, the broker
restarts and publishes are dropped; then every invariant of ARCHITECTURE.md is checked
against independent sources (the provider emulator, the Kafka logs, PostgreSQL)."""

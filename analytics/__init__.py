"""Analytical queries over the ClickHouse history (schemas/clickhouse.py)."""

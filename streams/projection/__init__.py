"""The projection: billing.events -> the PostgreSQL read models (``agent.py``)."""

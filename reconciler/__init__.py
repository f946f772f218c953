"""Reconciliation: prove our books equal the provider's and propose repairs for what differs.

``report`` holds the report line contract and the registry (CSV) import; ``matcher`` the pure
classifier both the nightly batch and the streaming agent are built on.
"""

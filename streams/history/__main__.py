"""``python -m streams.history worker -l info`` (settings from BILLING_* env)."""

from __future__ import annotations

from streams.history.app import main

if __name__ == "__main__":
    main()

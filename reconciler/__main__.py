"""``python -m reconciler --from 2026-11-24 --to 2026-11-25 [--registry FILE] [--wait]``
(see reconciler/cli.py)."""

from reconciler.cli import run

if __name__ == "__main__":
    run()

"""``python -m reconciler --from 2026-11-24 --to 2026-11-25 [--registry FILE] [--wait]``
(see reconciler/cli.py); like ``billing reconcile``, it reads the running local stack's
``.state/stack.env`` for the BILLING_* variables left unset."""

from billing.processes import load_stack_env
from reconciler.cli import run

if __name__ == "__main__":
    load_stack_env()
    run()

"""``python -m dashboard``: run the console (Streamlit, headless) on BILLING_DASHBOARD_HOST and
BILLING_DASHBOARD_PORT against BILLING_DASHBOARD_API_URL.

``python -m dashboard hash-password``: read a password (twice, not echoed; or one line from
stdin with ``--stdin``) and print the value for BILLING_DASHBOARD_ADMIN_PASSWORD_HASH.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from billing.config import ConsoleSettings

APP = Path(__file__).resolve().parent / "app.py"
ROOT = APP.parents[1]


def streamlit_argv(settings: ConsoleSettings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless=true",
        f"--server.address={settings.dashboard_host}",
        f"--server.port={settings.dashboard_port}",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=minimal",
    ]


def _run() -> int:
    settings = ConsoleSettings()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    argv = streamlit_argv(settings)
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)  # the same pid: a SIGTERM reaches Streamlit itself
    return 0  # not reached


def _hash_password(from_stdin: bool) -> int:
    from billing.passwords import hash_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Console password: ")
        if getpass.getpass("Again: ") != password:
            sys.stderr.write("the two passwords differ\n")
            return 2
    try:
        sys.stdout.write(hash_password(password) + "\n")
    except ValueError as exc:
        sys.stderr.write(f"refused: {exc}\n")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the console (the default)")
    hp = sub.add_parser("hash-password", help="print a BILLING_DASHBOARD_ADMIN_PASSWORD_HASH")
    hp.add_argument("--stdin", action="store_true", help="read the password from stdin")
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        return _hash_password(args.stdin)
    return _run()


if __name__ == "__main__":
    raise SystemExit(main())

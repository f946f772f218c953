"""Run a Faust worker: ``python -m streams worker -l info`` (settings from BILLING_* env)."""

from __future__ import annotations

from billing import logs
from billing.config import WorkerSettings
from streams.app import check_topics_at_start, create_app


def main() -> None:
    settings = WorkerSettings()
    logs.configure(settings, "worker")  # until Faust applies the same (streams/app.py)
    app = create_app(settings)  # builds, connects nothing: its tables name their changelogs
    check_topics_at_start(settings, app)
    app.main()


if __name__ == "__main__":
    main()

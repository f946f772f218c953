"""``python -m providers.emulator``: the YooKassa emulator on BILLING_EMULATOR_HOST/PORT,
credentials BILLING_YOOKASSA_SHOP_ID/SECRET_KEY, notifications to the API's webhook URL; its
objects are kept in BILLING_EMULATOR_STATE_PATH when set (the local stack sets it)."""

from __future__ import annotations

import logging

import uvicorn

from billing import logs
from billing.config import EmulatorSettings
from providers.emulator.app import Emulator, create_app
from providers.emulator.server import config_from_settings


def main() -> None:
    settings = EmulatorSettings()
    logs.configure(settings, "emulator")
    emulator = Emulator(config_from_settings(settings), state_path=settings.emulator_state_path)
    logging.getLogger(__name__).info(
        "YooKassa emulator on http://%s:%s/v3, notifications to %s",
        settings.emulator_host,
        settings.emulator_port,
        emulator.config.webhook_url or "(none)",
    )
    uvicorn.run(
        create_app(emulator),
        host=settings.emulator_host,
        port=settings.emulator_port,
        log_level="warning",
        log_config=None,  # ours (billing.logs)
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()

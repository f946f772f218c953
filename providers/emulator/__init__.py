"""A YooKassa API v3 emulator the official SDK talks to, with a control API for tests.

``EmulatorServer`` runs it in-process; ``python -m providers.emulator`` standalone.
"""

from providers.emulator.app import Emulator, create_app
from providers.emulator.faults import Fault, FaultBook
from providers.emulator.server import EmulatorServer, config_from_settings, free_port
from providers.emulator.store import EmulatorConfig, Store

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "Fault",
    "FaultBook",
    "Store",
    "config_from_settings",
    "create_app",
    "free_port",
]

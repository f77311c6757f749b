"""The NUS link over bleak: scan, connect robustly, send frames, receive typed messages.

Everything the field taught us about bleak on BlueZ lives here, once. The package's rooms:
:mod:`.settings` (how a link connects and waits: plain data), :mod:`.errors` (what a caller
handles), :mod:`.backend` (the seam to the stack), :mod:`.scanning` (finding devices) and
:mod:`.nus` (one connection). Import from here.

The names are loaded when first used, so that the settings (which an update's settings
hold, and the OTA core imports) come without bleak; ``from pytest_smartball.link import
NusLink`` works as ever.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .settings import LinkSettings

if TYPE_CHECKING:
    from .backend import SERVICES_RACE_FIXED_IN, BleBackend
    from .errors import (
        LINK_ERRORS,
        LINK_OR_TIMEOUT_ERRORS,
        STACK_ERRORS,
        ConnectFailed,
        DeviceNotFound,
        ForgetFailed,
        LinkError,
        LinkEvent,
        LinkLost,
        ResponseTimeout,
    )
    from .nus import SETTLE_POLL_S, NusLink
    from .scanning import SCANNER_START_STOP_S, Sighting, find_device, observe, scan

#: The names that need bleak, and their module.
_OVER_BLEAK = {
    "SERVICES_RACE_FIXED_IN": ".backend",
    "BleBackend": ".backend",
    "LINK_ERRORS": ".errors",
    "LINK_OR_TIMEOUT_ERRORS": ".errors",
    "STACK_ERRORS": ".errors",
    "ConnectFailed": ".errors",
    "DeviceNotFound": ".errors",
    "ForgetFailed": ".errors",
    "LinkError": ".errors",
    "LinkEvent": ".errors",
    "LinkLost": ".errors",
    "ResponseTimeout": ".errors",
    "SETTLE_POLL_S": ".nus",
    "NusLink": ".nus",
    "SCANNER_START_STOP_S": ".scanning",
    "Sighting": ".scanning",
    "find_device": ".scanning",
    "observe": ".scanning",
    "scan": ".scanning",
}


def __getattr__(name: str) -> object:
    module = _OVER_BLEAK.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


__all__ = [
    "LINK_ERRORS",
    "LINK_OR_TIMEOUT_ERRORS",
    "SCANNER_START_STOP_S",
    "SERVICES_RACE_FIXED_IN",
    "SETTLE_POLL_S",
    "STACK_ERRORS",
    "BleBackend",
    "ConnectFailed",
    "DeviceNotFound",
    "ForgetFailed",
    "LinkError",
    "LinkEvent",
    "LinkLost",
    "LinkSettings",
    "NusLink",
    "ResponseTimeout",
    "Sighting",
    "find_device",
    "observe",
    "scan",
]

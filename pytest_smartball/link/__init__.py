"""The NUS link over bleak: scan, connect robustly, send frames, receive typed messages.

Everything the field taught us about bleak on BlueZ lives here, once. The package's rooms:
:mod:`.errors` (what a caller handles), :mod:`.backend` (the seam to the stack),
:mod:`.scanning` (finding devices) and :mod:`.nus` (one connection). Import from here.
"""

from __future__ import annotations

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
from .nus import SETTLE_POLL_S, LinkSettings, NusLink
from .scanning import SCANNER_START_STOP_S, Sighting, find_device, observe, scan

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

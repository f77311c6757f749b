"""The OTA engine: flash one image onto one SmartBall, surviving drops, resets and resumes.

The package's rooms: the core, pure and without I/O (no bleak, no link, no asyncio):
:mod:`.states` (the states, their allowed transitions, the outcomes and event kinds),
:mod:`.decide` (every decision, a pure function over the small record of :mod:`.record`),
:mod:`.observations` (what the engine can see), :mod:`.window` (the transfer's credit and
waits), :mod:`.timeouts` (waits derived from the device's timing obligations),
:mod:`.settings` (how an update runs: the link's settings and the limits, held once) and
:mod:`.result` (events, result); and over the link: :mod:`.engine` (the I/O: it pumps
bytes and timeouts and asks the core what next).

The engine's names are loaded when first used, so that importing the core (this package's
``__init__`` runs first) does not load bleak; ``from pytest_smartball.ota import
OtaEngine`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .record import Limits
from .result import OtaEvent, OtaResult
from .settings import HealthCheck, HealthCheckFailed, OtaSettings
from .states import EventKind, FailureKind, Outcome, State

if TYPE_CHECKING:
    from .engine import OtaEngine, ProgressCallback

#: The names that live over the link, and their module.
_OVER_THE_LINK = {
    "OtaEngine": ".engine",
    "ProgressCallback": ".engine",
}


def __getattr__(name: str) -> object:
    module = _OVER_THE_LINK.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


__all__ = [
    "EventKind",
    "FailureKind",
    "HealthCheck",
    "HealthCheckFailed",
    "Limits",
    "OtaEngine",
    "OtaEvent",
    "OtaResult",
    "OtaSettings",
    "Outcome",
    "ProgressCallback",
    "State",
]

"""The OTA engine: flash one image onto one SmartBall, surviving drops, resets and resumes.

The package's rooms: the core, pure and without I/O (no bleak, no link, no asyncio):
:mod:`.states` (the states, their allowed transitions, the outcomes and event kinds),
:mod:`.decide` (every decision, a pure function over the small record of :mod:`.record`),
:mod:`.observations` (what the engine can see), :mod:`.window` (the transfer's credit and
waits), :mod:`.timeouts` (waits derived from the device's timing obligations); and over the
link: :mod:`.result` (settings, which hold the link's, events, result) and :mod:`.engine`
(the I/O: it pumps bytes and timeouts and asks the core what next).

The names of those two are loaded when first used, so that importing the core (this
package's ``__init__`` runs first) does not load bleak; ``from pytest_smartball.ota import
OtaEngine`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .states import EventKind, FailureKind, Outcome, State

if TYPE_CHECKING:
    from .engine import OtaEngine, ProgressCallback
    from .result import HealthCheck, HealthCheckFailed, OtaEvent, OtaResult, OtaSettings

#: The names that live over the link, and their module.
_OVER_THE_LINK = {
    "OtaEngine": ".engine",
    "ProgressCallback": ".engine",
    "HealthCheck": ".result",
    "HealthCheckFailed": ".result",
    "OtaEvent": ".result",
    "OtaResult": ".result",
    "OtaSettings": ".result",
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
    "OtaEngine",
    "OtaEvent",
    "OtaResult",
    "OtaSettings",
    "Outcome",
    "ProgressCallback",
    "State",
]

"""The OTA engine: flash one image onto one SmartBall, surviving drops, resets and resumes.

The package's rooms: :mod:`.states` (the states, their allowed transitions, the outcomes
and event kinds), :mod:`.decide` (every decision, a pure function over the small record of
:mod:`.record`), :mod:`.observations` (what the engine can see), :mod:`.window` (the
transfer's credit), :mod:`.timeouts` (waits derived from the device's timing obligations),
:mod:`.result` (settings, events, result) and :mod:`.engine` (the I/O).
"""

from __future__ import annotations

from .engine import OtaEngine, ProgressCallback
from .result import HealthCheck, HealthCheckFailed, OtaEvent, OtaResult, OtaSettings
from .states import EventKind, FailureKind, Outcome, State

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

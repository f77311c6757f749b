"""What the release page draws for one update, read from its ``--smartball-report`` record:
the engine's states as bands, the events worth a marker (drops, reconnects, resumes, the
reset...), and the erase and the acknowledged offset over time.

Pure: dicts in (the JSON report's ``updates[]``), small values out; the renderer
(:mod:`.render`) only lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The engine's terminal states: the ``link-lost`` after one is the engine closing its link
#: at the end, not a drop.
TERMINAL_STATES = ("succeeded", "failed", "unconfirmed", "reverted")

#: Event kinds that get a marker, and the marker's kind. ``link-lost`` is a drop until the
#: update ended (also when the host dropped it: a test's deliberate drop is one);
#: ``link-failure`` gets its own marker only when no drop explains it (a refused or
#: timed-out connect, a reply that never came).
MARKER_OF_EVENT = {
    "link-lost": "drop",
    "link-failure": "link-failure",
    "connected": "connect",
    "resume": "resume",
    "restart": "restart",
    "rewind": "rewind",
    "device-reset": "reset",
    "ready": "ready",
    "done": "done",
    "verified": "verified",
    "device-error": "device-error",
    "no-reset": "no-reset",
}

#: What a person reads for each marker kind (legend and tooltips).
MARKER_LABELS = {
    "drop": "link dropped",
    "link-failure": "link failure",
    "connect": "connected",
    "reconnect": "reconnected",
    "resume": "resumed",
    "restart": "restarted",
    "rewind": "rewound",
    "reset": "device reset",
    "ready": "erase done (READY)",
    "done": "verified by device (DONE)",
    "verified": "new image seen running",
    "device-error": "device error",
    "no-reset": "no reset",
}

#: What each engine state means on the page (README "Reading the report").
PHASE_LABELS = {
    "scanning": "scan",
    "connecting": "connect",
    "querying": "query",
    "aborting": "abort",
    "sending-manifest": "manifest",
    "starting": "start",
    "waiting-ready": "erase",
    "stabilising": "stabilise",
    "transferring": "transfer",
    "finishing": "verify",
    "rebooting": "reset",
    "health-checking": "health check",
    "confirming": "confirm",
    "recovering": "recover",
}

#: Two events this close (seconds) count as one moment (a drop and the failure it causes).
SAME_MOMENT_S = 0.0015


@dataclass(frozen=True, slots=True)
class Band:
    start: float
    end: float
    phase: str  # the engine state's value, e.g. "waiting-ready"

    @property
    def label(self) -> str:
        return PHASE_LABELS.get(self.phase, self.phase)


@dataclass(frozen=True, slots=True)
class Marker:
    t: float
    kind: str  # a key of MARKER_LABELS
    detail: str

    @property
    def label(self) -> str:
        return MARKER_LABELS.get(self.kind, self.kind)


@dataclass(frozen=True, slots=True)
class Point:
    t: float
    fraction: float  # of the phase's total, 0..1


def events(update: dict[str, Any]) -> list[dict[str, Any]]:
    """The update's events with times: ``timeline`` (every update, since report format 1
    with the release page); ``[]`` for a report written before it."""
    return list(update.get("timeline") or [])


def end_time(update: dict[str, Any]) -> float:
    """Where the update's time axis ends: its duration (events after it are drawn at it)."""
    return max(float(update.get("duration_s") or 0.0), 1e-3)


def bands(update: dict[str, Any]) -> list[Band]:
    """The engine's states as consecutive intervals, from its ``state`` events; the update
    starts scanning at 0 and ends at :func:`end_time`. Terminal states get no band."""
    end = end_time(update)
    out: list[Band] = []
    if not events(update):
        return out  # a report written before the release page: no times to draw
    phase, since = "scanning", 0.0
    for event in events(update):
        if event["kind"] != "state" or "->" not in event["detail"]:
            continue
        old, new = (part.strip() for part in event["detail"].split("->", 1))
        t = min(float(event["t"]), end)
        if t > since and old == phase:
            out.append(Band(since, t, phase))
        phase, since = new, t
    if phase in PHASE_LABELS and end > since:
        out.append(Band(since, end, phase))
    return out


def markers(update: dict[str, Any]) -> list[Marker]:
    """The events a person looks for on the timeline, at their times."""
    out: list[Marker] = []
    connects = 0
    after_reset = ended = False
    for event in events(update):
        if event["kind"] == "state" and event["detail"].rsplit("->", 1)[-1].strip() in (
            TERMINAL_STATES
        ):
            ended = True
        kind = MARKER_OF_EVENT.get(event["kind"])
        if kind is None:
            continue
        t = min(float(event["t"]), end_time(update))
        detail = str(event["detail"])
        if kind == "drop" and ended:
            continue  # the engine's own close after the end
        if kind == "link-failure" and any(
            m.kind == "drop" and abs(m.t - t) <= SAME_MOMENT_S for m in out
        ):
            continue  # the drop's consequence, already marked
        if kind == "connect":
            connects += 1
            # The connect after the device's planned reset is not a reconnect (the
            # report's ``reconnects`` does not count it either).
            if connects > 1 and not after_reset:
                kind = "reconnect"
            after_reset = False
        elif kind == "reset":
            after_reset = True
        out.append(Marker(t, kind, detail))
    return out


def progress(update: dict[str, Any], phase: str) -> list[Point]:
    """The ``progress`` samples of one phase ("erase" or "transfer") as fractions."""
    end = end_time(update)
    return [
        Point(min(float(s["t"]), end), s["done"] / s["total"] if s["total"] else 0.0)
        for s in update.get("progress") or []
        if s["phase"] == phase
    ]


def board_updates(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The report's updates per board (address, or "unknown board"), in report order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for update in report.get("updates") or []:
        out.setdefault(update.get("device") or "unknown board", []).append(update)
    return out

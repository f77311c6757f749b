"""What an update leaves behind: its event log and its result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..contract import codec as p
from .record import Record
from .states import EventKind, FailureKind, Outcome, State


@dataclass(frozen=True, slots=True)
class OtaEvent:
    time: float  # seconds since the update began (event-loop time)
    kind: EventKind
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.time:9.3f}s  {self.kind:<14} {self.detail}"


@dataclass(slots=True)
class OtaResult:
    """An update's figures. What the record owns (the outcome, its reason, the counts of
    connects, resumes, restarts, rewinds) is taken from it in one place, :meth:`follow`;
    the rest (bytes, times, events) is what the engine measured on the link."""

    outcome: Outcome = Outcome.FAILED
    #: Why the update FAILED (None when it succeeded or is UNCONFIRMED).
    failure: FailureKind | None = None
    #: The sentence for a FAILED or UNCONFIRMED update: what was hit, what the device holds.
    error: str = ""
    image_size: int = 0
    image_crc32: int = 0
    bytes_sent: int = 0
    bytes_resent: int = 0
    connects: int = 0
    #: Connections made again after a link failure (the planned one after the device
    #: resets into the new image is not counted).
    reconnects: int = 0
    #: Connect attempts that failed inside a connect (refused, timed out, or the link
    #: dropped as it was made), whether bleak-retry-connector then tried again or gave up;
    #: not in ``connects``. A link the device made and lost is one of the device's links.
    failed_connect_attempts: int = 0
    resumes: int = 0
    restarts: int = 0
    #: Times the device's STATUS moved the send position back (a refusal or a lost write).
    rewinds: int = 0
    duration_s: float = 0.0
    phase_s: dict[str, float] = field(default_factory=dict)
    #: The device's INFO when the update ended after the switch: what it runs now (and on a
    #: signed-only device its image state, security counter and trusted key).
    info_after: p.MsgInfo | None = None
    #: Signal strength of the device's advertisement when this update last found it.
    rssi_dbm: int | None = None
    events: list[OtaEvent] = field(default_factory=list)

    def follow(self, record: Record) -> None:
        """Take what the record owns. The engine calls it after each decision, not only at
        the end: the result is handed out when the engine is made (the plugin records it
        from then on, the CLI reads its connects when a Bluetooth error ends the run)."""
        self.outcome = record.outcome or Outcome.FAILED
        self.failure = record.failure
        self.error = record.error
        self.connects, self.reconnects = record.connects, record.reconnects
        self.resumes, self.restarts, self.rewinds = record.resumes, record.restarts, record.rewinds

    @property
    def success(self) -> bool:
        """The new image was seen running."""
        return self.outcome is Outcome.SUCCEEDED

    @property
    def unconfirmed(self) -> bool:
        return self.outcome is Outcome.UNCONFIRMED

    @property
    def image_state(self) -> str | None:
        """What a signed-only device said of its running image when the update ended
        (``confirmed``, ``test``: on trial, ``reverted``), None for a v1 device or when
        it was not seen after the switch."""
        info = self.info_after
        if info is None or not info.signed_only:
            return None
        try:
            return p.ImageState(info.image_state).name.lower()
        except ValueError:
            return f"unknown ({info.image_state})"

    @property
    def throughput_bps(self) -> float:
        transfer = self.phase_s.get(State.TRANSFERRING.value, 0.0)
        return self.image_size / transfer if transfer > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {"success": self.success, **asdict(self)}
        out["outcome"] = self.outcome.value
        out["failure"] = self.failure.value if self.failure else None
        out["throughput_bps"] = round(self.throughput_bps, 1)
        out["image_state"] = self.image_state
        for event in out["events"]:
            event["kind"] = str(event["kind"])
        return out

"""What an update leaves behind: its settings, its event log and its result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import protocol as p
from ..link import LinkSettings
from .record import Limits
from .states import EventKind, FailureKind, Outcome, State
from .timeouts import DEFAULT as DEFAULT_TIMEOUTS

#: A health check of the new image running on trial (signed-only devices): called with the
#: device's INFO (it runs the new image, image state TEST) while the engine holds no link
#: to it, so the check may connect to the device itself. True: healthy, confirm it; False
#: or an exception (:class:`HealthCheckFailed` says why): leave it unconfirmed.
HealthCheck = Callable[[p.MsgInfo], Awaitable[bool]]


class HealthCheckFailed(Exception):
    """A health check's "no", with the reason (one phrase) the update's sentence quotes."""


@dataclass(frozen=True, slots=True)
class OtaSettings:
    """How an update runs. The timeouts' defaults follow the device's timing obligations
    with a stated margin (:mod:`.timeouts`)."""

    link: LinkSettings = field(default_factory=LinkSettings)
    #: A pause after READY before the first DATA. READY means "send at full rate now"
    #: (P17), so none by default; kept for firmware that breaks that promise.
    stabilise_s: float = 0.0
    #: Longest silence while waiting for READY; MSG_OTA_PROGRESS counts as a sign of life.
    erase_silence_timeout_s: float = DEFAULT_TIMEOUTS.erase_silence_s
    #: Longest wait for an ACK with chunks in flight before asking for STATUS.
    ack_timeout_s: float = DEFAULT_TIMEOUTS.ack_s
    #: The same wait after the device refused DATA (see ``Timeouts.refusal_probe_s``).
    refusal_probe_s: float = DEFAULT_TIMEOUTS.refusal_probe_s
    #: Reply to a command such as INFO, STATUS or ABORT.
    reply_timeout_s: float = DEFAULT_TIMEOUTS.reply_s
    #: From FINISH to DONE (the device reads the whole image back for its CRC).
    verify_timeout_s: float = DEFAULT_TIMEOUTS.verify_s
    #: From DONE to the link dropping for the reset.
    reset_timeout_s: float = DEFAULT_TIMEOUTS.reset_s
    #: How long a vanished device (reset, advertising pause) is waited for.
    reappear_timeout_s: float = DEFAULT_TIMEOUTS.reappear_s
    #: Recoveries and re-syncs in a row without the device getting further.
    max_attempts_without_progress: int = 5
    #: A hard cap on recoveries whatever the progress, so nothing can loop forever.
    max_recoveries: int = 100
    #: Waits for a promised reset (after DONE) that did not come, before giving up.
    max_reset_waits: int = 2
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    #: Forget the device in the Bluetooth stack first (BlueZ: Adapter1.RemoveDevice, what
    #: ``bluetoothctl remove`` does), so no stale GATT cache is used.
    clear_cache: bool = False
    #: Proposed in CMD_OTA_START; the link's write size caps it further.
    chunk_size: int = p.MAX_DATA_CHUNK
    #: Ask for progressive erase (P18) when the device advertises it.
    progressive_erase: bool = True
    #: Signed-only devices: confirm the new image once it runs on trial (False: leave it on
    #: trial; the device returns to its old image at its next reset).
    confirm: bool = True
    #: Signed-only devices: checked before the confirm (see :data:`HealthCheck`).
    health_check: HealthCheck | None = None
    #: A health check still running after this long fails.
    health_check_timeout_s: float = 60.0

    def limits(self) -> Limits:
        return Limits(
            max_attempts_without_progress=self.max_attempts_without_progress,
            max_recoveries=self.max_recoveries,
            max_reset_waits=self.max_reset_waits,
            stabilise=self.stabilise_s > 0,
            progressive_erase=self.progressive_erase,
            confirm=self.confirm,
            health_check=self.health_check is not None,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
        )


@dataclass(frozen=True, slots=True)
class OtaEvent:
    time: float  # seconds since the update began (event-loop time)
    kind: EventKind
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.time:9.3f}s  {self.kind:<14} {self.detail}"


@dataclass(slots=True)
class OtaResult:
    #: The new image was seen running (``outcome is Outcome.SUCCEEDED``).
    success: bool = False
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

    def __post_init__(self) -> None:
        if self.success:  # a result built by hand from ``success`` alone
            self.outcome = Outcome.SUCCEEDED

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
        out = asdict(self)
        out["outcome"] = self.outcome.value
        out["failure"] = self.failure.value if self.failure else None
        out["throughput_bps"] = round(self.throughput_bps, 1)
        out["image_state"] = self.image_state
        for event in out["events"]:
            event["kind"] = str(event["kind"])
        return out

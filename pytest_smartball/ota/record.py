"""The record of one update: what it has done and what the device has said so far, the
budgets it runs with, and the events worth telling (:mod:`.decide` reads and returns it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..contract import codec as p
from ..contract.manifest import Manifest
from .states import EventKind, FailureKind, Outcome, State


class Commit(enum.IntEnum):
    """How far the switch to the new image may have gone (what a give-up may say)."""

    #: The device cannot switch to the new image: FINISH is not with it.
    NONE = 0
    #: Every byte was acknowledged and FINISH sent, no answer yet: the device may verify
    #: the image and reset into it.
    FINISH_SENT = 1
    #: The device said DONE (or STATUS COMPLETE for this image): it resets into it.
    VERIFIED = 2


@dataclass(frozen=True, slots=True)
class ImageId:
    size: int
    crc32: int
    source: str = "image"
    #: A signed image's manifest (what CMD_OTA_MANIFEST carries, with its signature).
    manifest: Manifest | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """The budgets and choices an update runs with (``OtaSettings.limits``)."""

    #: Recoveries and re-syncs in a row without the device getting further.
    max_attempts_without_progress: int = 5
    #: Recoveries in one update, whatever the progress.
    max_recoveries: int = 100
    #: Waits for a reset that DONE (or a committed switch) promised and that did not come.
    max_reset_waits: int = 2
    #: Resets after DONE that left the device on its old image (bootloader refused it).
    max_failed_activations: int = 2
    #: ACK timeouts in a row (no ACK moving forward) before the link counts as failed: the
    #: first asks STATUS, the second takes a repeated STATUS as credit (window.py).
    max_ack_timeouts: int = 3
    #: Rewinds without an ACK moving forward before the link counts as failed.
    max_rewinds_without_ack: int = 32
    #: Pause after READY (STABILISING) or straight on to the transfer (an update's
    #: ``OtaSettings.stabilise_s`` sets it).
    stabilise: bool = False
    #: Ask for progressive erase when the device offers it (P18).
    progressive_erase: bool = True
    #: Signed-only devices: confirm the new image once it runs (False: leave it on trial).
    confirm: bool = True
    #: Signed-only devices: a health check runs before the confirm (an update's
    #: ``OtaSettings.health_check`` sets it).
    health_check: bool = False
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0


@dataclass(frozen=True, slots=True)
class Said:
    """The last offset the device itself reported, and in which message."""

    offset: int
    message: str

    def __str__(self) -> str:
        return f"offset {self.offset} (in {self.message})"


@dataclass(frozen=True, slots=True)
class Record:
    """One update so far. Immutable: :func:`decide` returns a new one."""

    image: ImageId
    limits: Limits = Limits()
    state: State = State.SCANNING
    #: The device was found once: later scans wait for it to come back (reappear timeout)
    #: and not finding it is a link failure, not "not found".
    seen: bool = False
    fits_checked: bool = False
    capabilities: int = 0
    #: This update sent CMD_OTA_START at least once.
    session_opened: bool = False
    commit: Commit = Commit.NONE
    #: CRC-32 of another image whose switch the device committed (STATUS COMPLETE).
    other_commit: int | None = None
    #: Where the next transfer starts (the device's next_expected_offset).
    resume_offset: int = 0
    said: Said | None = None
    #: (rank, amount) of the furthest the device ever got: 1 erase, 2 receive, 3 verified.
    progress_mark: tuple[int, int] = (0, 0)
    attempts: int = 0
    recoveries: int = 0
    reset_waits: int = 0
    #: The device reset (the link ended in REBOOTING) and has not been asked STATUS since.
    reset_seen: bool = False
    failed_activations: int = 0
    #: In RECOVERING since a link failure: the next connect is a reconnect.
    reconnecting: bool = False
    #: In RECOVERING: the failed link is closed and the budgets were checked (the backoff
    #: may start).
    link_closed: bool = False
    #: Connected and not yet asked STATUS: a session found now is a resume.
    fresh_link: bool = False
    #: QUERYING: INFO answered, STATUS is next (the engine asks them in this order).
    info_answered: bool = False
    last_error: str = ""
    #: The health check passed on the new image (it is not run again after a reconnect).
    healthy: bool = False
    info: p.MsgInfo | None = None
    first_info: p.MsgInfo | None = None
    connects: int = 0
    reconnects: int = 0
    resumes: int = 0
    restarts: int = 0
    rewinds: int = 0
    #: In the transfer, since the last ACK that moved forward.
    ack_timeouts: int = 0
    rewinds_since_ack: int = 0
    outcome: Outcome | None = None
    failure: FailureKind | None = None
    error: str = ""

    @property
    def backoff_s(self) -> float:
        """The pause before the next scan in RECOVERING: doubling per fruitless attempt."""
        lim = self.limits
        doubling: float = 2.0 ** max(0, self.attempts - 1)
        return min(lim.backoff_max_s, lim.backoff_base_s * doubling)

    @property
    def signed_only(self) -> bool:
        """The device runs only signed images (it advertised SIGNED_IMAGES)."""
        return bool(self.capabilities & p.Capability.SIGNED_IMAGES)

    @property
    def status_with_info(self) -> bool:
        """QUERYING: CMD_OTA_STATUS goes out with CMD_INFO, sharing a connection event and
        a round trip, rather than after INFO's answer. Before a switch is asked for, STATUS
        is nearly always needed, so it goes along; INFO alone still ends the query when the
        image is too large for the device, when a signed-only device refuses it before
        anything is sent (:func:`~.signed.signed_refusal`: unsigned, another key, a lower
        security counter, an image on trial), or when the device already runs this very
        image on trial (left to confirm); STATUS's answer is then not waited for. After a
        switch is asked for, INFO alone may end the update (the new image runs), so STATUS
        waits for INFO's answer."""
        return self.commit is Commit.NONE

    @property
    def finish_owed(self) -> bool:
        """FINISHING: CMD_OTA_FINISH goes out, unless the device is verifying already (its
        STATUS said VERIFYING for this image): then only its DONE is waited for."""
        return self.commit is Commit.NONE

    @property
    def start_flags(self) -> int:
        """CMD_OTA_START's flags: only what the device advertised (P2, P3)."""
        if self.limits.progressive_erase and self.capabilities & p.Capability.PROGRESSIVE_ERASE:
            return int(p.StartFlag.PROGRESSIVE_ERASE)
        return 0


@dataclass(frozen=True, slots=True)
class Note:
    kind: EventKind
    detail: str = ""


Decision = tuple[Record, tuple[Note, ...]]

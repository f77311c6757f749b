"""The firmware's eraser: the whole staging area page by page after START (progress and
READY), and the page-erased report both erase modes share. It holds no state of its own
(the session counts its pages); the firmware it serves is reached through
:class:`EraserOwner` only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pytest_smartball.contract import codec as p

from .bugs import FirmwareBug as Bug
from .flash import PAGE_SIZE
from .flash_controller import FlashController
from .types import FirmwareEvent, FirmwareEventKind, FlashTimings, OtaSession, _FlashJob, to_us


class EraserOwner(Protocol):
    """What the eraser needs of its firmware: its state (READY moves it to RECEIVING), the
    session, the timings, the bugs, the flash controller, the clock, and its way out."""

    state: p.OtaState
    session: OtaSession | None
    timings: FlashTimings
    bugs: frozenset[Bug]
    flash_controller: FlashController
    _observe: Callable[[FirmwareEvent], None]

    def _now_us(self) -> int: ...
    def _at(self, when_us: int, action: Callable[..., None], *args: Any) -> None: ...
    def _call_out(self, callback: Callable[..., None], *args: Any) -> None: ...
    def _reply(self, msg: p.DeviceMessage) -> None: ...


class Eraser:
    """A firmware's erase after START, the page-erased report and READY."""

    def __init__(self, owner: EraserOwner) -> None:
        self._fw = owner

    # --- erasing (the whole image first) ----------------------------------------------

    def erase_next_page(self, s: OtaSession, page: int) -> None:
        """Page ``page`` after its share of idle time (field mode: the firmware yields to
        the radio between pages); its erase then stalls the CPU."""
        fw = self._fw
        idle = fw.timings.page_erase_time(s.pages) - fw.timings.page_stall_s(s.pages)
        job = _FlashJob(s, p.MsgType.CMD_OTA_START, page=page)
        job.after.append(lambda: self._page_erased_in_erasing(s, page))
        idle_us = to_us(idle)
        if idle_us > 0:
            fw._at(fw._now_us() + idle_us, self._queue_job_if_current, job)
        else:
            fw.flash_controller.queue(job)

    def _queue_job_if_current(self, job: _FlashJob) -> None:
        if job.session is self._fw.session:
            self._fw.flash_controller.queue(job)

    def _page_erased_in_erasing(self, s: OtaSession, page: int) -> None:
        fw = self._fw
        # A bug's switch is asked only where its deviation applies (the kill table counts
        # the tests in which a bug's deviation ran: smartball_sim.gate_probe).
        if fw.state != p.OtaState.ERASING and (
            s is not fw.session or Bug.READY_BEFORE_ERASE_DONE not in fw.bugs
        ):
            return  # erased after READY: only a firmware that sent READY early erases on
        if Bug.NO_ERASE_PROGRESS not in fw.bugs:
            progress = p.MsgOtaProgress(p.OtaPhase.ERASE, (page + 1) * PAGE_SIZE, s.total_erase)
            if Bug.PROGRESS_IN_IMAGE_BYTES in fw.bugs:
                done = min((page + 1) * PAGE_SIZE, s.image_size)
                progress = p.MsgOtaProgress(p.OtaPhase.ERASE, done, s.image_size)
            fw._reply(progress)
        self.page_erased(s)
        if page + 1 < s.pages:
            self.erase_next_page(s, page + 1)
        if fw.state == p.OtaState.ERASING and (
            page + 1 == s.pages or Bug.READY_BEFORE_ERASE_DONE in fw.bugs
        ):
            fw.state = p.OtaState.RECEIVING
            self.send_ready(s)

    def page_erased(self, s: OtaSession) -> None:
        s.pages_erased += 1
        event = FirmwareEvent(
            FirmwareEventKind.ERASE_PROGRESS, done=s.pages_erased * PAGE_SIZE, total=s.total_erase
        )
        self._fw._call_out(self._fw._observe, event)

    def send_ready(self, s: OtaSession) -> None:
        fw = self._fw
        if s is not fw.session or fw.state != p.OtaState.RECEIVING:
            return
        fw._reply(p.MsgOtaReady(s.max_chunk, s.window))
        fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.READY))

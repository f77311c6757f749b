"""SmartBallFirmware's erasing: the whole staging area page by page after START (progress
and READY), and the page-erased report both erase modes share."""

from __future__ import annotations

from pytest_smartball.contract import codec as p

from .bugs import FirmwareBug as Bug
from .flash import PAGE_SIZE
from .parts import FirmwareParts
from .types import FirmwareEvent, FirmwareEventKind, OtaSession, _FlashJob, to_us


class ErasingMixin(FirmwareParts):
    """SmartBallFirmware's erase after START, the page-erased report and READY."""

    # --- erasing (the whole image first) ----------------------------------------------

    def _erase_next_page(self, s: OtaSession, page: int) -> None:
        """Page ``page`` after its share of idle time (field mode: the firmware yields to
        the radio between pages); its erase then stalls the CPU."""
        idle = self.timings.page_erase_time(s.pages) - self.timings.page_stall_s(s.pages)
        job = _FlashJob(s, p.MsgType.CMD_OTA_START, page=page)
        job.after.append(lambda: self._page_erased_in_erasing(s, page))
        idle_us = to_us(idle)
        if idle_us > 0:
            self._at(self._now_us() + idle_us, self._queue_job_if_current, job)
        else:
            self.flash_controller.queue(job)

    def _queue_job_if_current(self, job: _FlashJob) -> None:
        if job.session is self.session:
            self.flash_controller.queue(job)

    def _page_erased_in_erasing(self, s: OtaSession, page: int) -> None:
        # A bug's switch is asked only where its deviation applies (the kill table counts
        # the tests in which a bug's deviation ran: smartball_sim.gate_probe).
        if self.state != p.OtaState.ERASING and (
            s is not self.session or Bug.READY_BEFORE_ERASE_DONE not in self.bugs
        ):
            return  # erased after READY: only a firmware that sent READY early erases on
        if Bug.NO_ERASE_PROGRESS not in self.bugs:
            progress = p.MsgOtaProgress(p.OtaPhase.ERASE, (page + 1) * PAGE_SIZE, s.total_erase)
            if Bug.PROGRESS_IN_IMAGE_BYTES in self.bugs:
                done = min((page + 1) * PAGE_SIZE, s.image_size)
                progress = p.MsgOtaProgress(p.OtaPhase.ERASE, done, s.image_size)
            self._reply(progress)
        self._page_erased(s)
        if page + 1 < s.pages:
            self._erase_next_page(s, page + 1)
        if self.state == p.OtaState.ERASING and (
            page + 1 == s.pages or Bug.READY_BEFORE_ERASE_DONE in self.bugs
        ):
            self.state = p.OtaState.RECEIVING
            self._send_ready(s)

    def _page_erased(self, s: OtaSession) -> None:
        s.pages_erased += 1
        event = FirmwareEvent(
            FirmwareEventKind.ERASE_PROGRESS, done=s.pages_erased * PAGE_SIZE, total=s.total_erase
        )
        self._call_out(self._observe, event)

    def _send_ready(self, s: OtaSession) -> None:
        if s is not self.session or self.state != p.OtaState.RECEIVING:
            return
        self._reply(p.MsgOtaReady(s.max_chunk, s.window))
        self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.READY))

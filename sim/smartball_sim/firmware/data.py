"""SmartBallFirmware's DATA: accepting chunks in order (refusals rate-limited), ACKs once
the bytes are in flash, and the flash itself, a queue of NVMC jobs run one at a time (a
failure retried once, then FLASH_ERROR)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pytest_smartball.contract import codec as p

from .bugs import FirmwareBug as Bug
from .flash import PAGE_SIZE, pad_to_words
from .parts import FirmwareParts
from .types import FirmwareEvent, FirmwareEventKind, OtaSession, _FlashJob, to_us

log = logging.getLogger("sim.firmware")


class DataMixin(FirmwareParts):
    """DATA and the flash job queue: SmartBallFirmware's part for them."""

    # --- DATA ----------------------------------------------------------------------------

    def _on_data(self, msg: p.CmdOtaData) -> None:
        s = self.session
        if self.state != p.OtaState.RECEIVING or s is None:
            if self.state != p.OtaState.ERASING or s is None or self._rate_limit(s):
                self._error(p.ErrorCode.BAD_STATE)
            return
        size = len(msg.data)
        if size == 0 or size > s.max_chunk:
            self._error(p.ErrorCode.BAD_PARAM, what=f"chunk of {size} bytes, max {s.max_chunk}")
            return
        if msg.offset != s.next_offset:
            if msg.offset < s.next_offset:
                self.data_rejected_behind += 1
            else:
                self.data_rejected_ahead += 1
            self._reject_offset(s)
            return
        end = msg.offset + size
        if end > s.image_size and Bug.DATA_PAST_END_ACCEPTED not in self.bugs:
            self._error(p.ErrorCode.BAD_OFFSET)
            return
        if size % p.WORD_SIZE and end != s.image_size:
            self._error(p.ErrorCode.BAD_PARAM, what=f"chunk of {size} bytes: not whole words")
            return
        if s.unwritten_chunks >= self.rx_buffer_chunks(s):
            self.data_dropped_full += 1  # the flash is behind: no room for this chunk
            self._reject_offset(s)
            return
        s.next_offset = end
        s.rejected = None
        s.unwritten_chunks += 1
        if s.manifest is not None and Bug.HASH_OF_STREAM in self.bugs:
            s.stream_hash.update(msg.data)  # hashed as it arrives, never read back
        if s.progressive:
            last_page = (end - 1) // PAGE_SIZE
            for page in range(msg.offset // PAGE_SIZE, last_page + 1):
                if page not in s.erase_queued:  # erased just before its first write
                    s.erase_queued.add(page)
                    job = _FlashJob(s, p.MsgType.CMD_OTA_DATA, page=page)
                    job.after.append(lambda: self._page_erased(s))
                    self._queue_job(job)
        self._queue_job(
            _FlashJob(
                s,
                p.MsgType.CMD_OTA_DATA,
                offset=msg.offset,
                data=pad_to_words(msg.data),
                length=size,
            )
        )
        s.accepted_since_ack += 1
        if end == s.image_size or s.accepted_since_ack >= self.ack_interval(s):
            # ACK what is in flash, once it is: the host's credit then bounds the buffer.
            s.accepted_since_ack = 0
            if Bug.ACK_BEFORE_WRITTEN in self.bugs:
                self._ack(s, end)
            else:
                self._after_written(s, self._ack, s, end)
        event = FirmwareEvent(FirmwareEventKind.DATA_ACCEPTED, offset=end, total=s.image_size)
        self._call_out(self._observe, event)

    def _rate_limit(self, s: OtaSession) -> bool:
        """True for the rejected DATA that gets a reply: the first, then one per window."""
        s.rejected = 0 if s.rejected is None or s.rejected >= s.window else s.rejected
        s.rejected += 1
        return s.rejected == 1

    def _reject_offset(self, s: OtaSession) -> None:
        # One STATUS per gap, then one per window of further rejects: enough for the host
        # to rewind, without a notification storm while its in-flight window drains.
        if self._rate_limit(s):
            self._reply(self.status())

    def _ack(self, s: OtaSession, written_offset: int) -> None:
        lost_to_finish = (
            self.state == p.OtaState.VERIFYING and Bug.FINAL_ACK_LOST_TO_FINISH in self.bugs
        )
        if s is self.session and not lost_to_finish:
            self._reply(p.MsgOtaAck(written_offset))

    def _after_written(self, s: OtaSession, action: Callable[..., None], *args: Any) -> None:
        """Run ``action`` once every byte the session has accepted so far is in flash."""
        for job in reversed(self._jobs):
            if job.session is s and not job.is_erase:
                job.after.append(lambda: action(*args))
                return
        action(*args)

    # --- the flash -------------------------------------------------------------------------

    def _queue_job(self, job: _FlashJob) -> None:
        self._jobs.append(job)
        if self._running_job is None and not self._completing:
            self._start_next_job()

    def _start_next_job(self) -> None:
        while self._running_job is None and self._jobs:
            job = self._running_job = self._jobs[0]
            now = self._now_us()
            if job.is_erase:
                duration = to_us(self.timings.page_stall_s(job.session.pages))
                self._stalled_until_us = now + duration  # the CPU halts with the erase
            else:
                duration = to_us(self.timings.write_time(len(job.data)))
            if duration:
                self._at(now + duration, self._finish_job, job)
            else:  # an instant flash (a model setting): written as it arrives
                self._finish_job(job, start_next=False)

    def _finish_job(self, job: _FlashJob, start_next: bool = True) -> None:
        """The NVMC is done with ``job``: check it, retry a failure once, then run what
        waited for it, handle what arrived during a stall, and start the next job."""
        self._running_job = None
        if self._jobs and self._jobs[0] is job:
            self._jobs.popleft()
        if job.is_erase:
            assert job.page is not None
            ok = self.flash.erase_page(job.page) and self.flash.is_erased(job.page)
        else:
            ok = self.flash.write_words(job.offset, job.data) and (
                self.flash.read(job.offset, len(job.data)) == job.data
            )
        self._completing = True
        try:
            if not ok and not job.retried:
                job.retried = True
                self._jobs.appendleft(job)
            elif not ok:
                self._flash_failed(job)
            elif job.session is self.session:
                self._job_done(job)
            if start_next:
                self._handle_inbox()
        finally:
            self._completing = False
        if start_next:
            self._start_next_job()

    def _job_done(self, job: _FlashJob) -> None:
        s = job.session
        if not job.is_erase:
            s.unwritten_chunks -= 1
            s.written_offset = job.offset + job.length
        for action in job.after:
            action()

    def _flash_failed(self, job: _FlashJob) -> None:
        what = f"page {job.page} erase" if job.is_erase else f"write at {job.offset}"
        log.info("flash: %s failed twice", what)
        self._flash_failed_since_boot = True
        if job.session is not self.session:
            return  # an aborted session's last job: nobody waits for it
        self._end_session(p.OtaState.ERROR)
        self._error(p.ErrorCode.FLASH_ERROR, command=job.command)
        self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.FLASH_ERROR))

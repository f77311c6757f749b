"""The firmware's flash controller: the NVMC's queue of jobs (page erases and chunk writes,
one at a time, as the NVMC does them), a failure retried once, a page erase stalling the
CPU. It holds the queue and what it knows of the flash since the last reset; the firmware
it serves is reached through :class:`FlashControllerOwner` only."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .flash import Flash
from .types import FlashTimings, OtaSession, _FlashJob, to_us

log = logging.getLogger("sim.firmware")


class FlashControllerOwner(Protocol):
    """What the flash controller needs of its firmware: the timings (read at each job: a
    fault may change them), the flash, the current session, the clock and its steps, and
    where a double failure and the end of a stall are reported."""

    timings: FlashTimings
    flash: Flash
    session: OtaSession | None

    def _now_us(self) -> int: ...
    def _at(self, when_us: int, action: Callable[..., None], *args: Any) -> None: ...
    def _handle_inbox(self) -> None: ...
    def _flash_failed(self, job: _FlashJob) -> None: ...


class FlashController:
    """The NVMC job queue of one firmware (RAM: a reset empties it)."""

    def __init__(self, owner: FlashControllerOwner) -> None:
        self._owner = owner
        self.jobs: deque[_FlashJob] = deque()
        self.running_job: _FlashJob | None = None
        #: A finished job's followers are running: what they queue waits for them.
        self._completing = False
        #: A page erase halts the CPU until then (0: no stall since the reset).
        self.stalled_until_us = 0
        #: A flash operation failed twice since the last reset (Bug.FLASH_ERROR_STICKY).
        self.failed_since_boot = False

    def reset(self) -> None:
        """The device reset: queued work is lost, the CPU runs, the failure is forgotten."""
        self.jobs.clear()
        self.running_job = None
        self._completing = False
        self.stalled_until_us = 0
        self.failed_since_boot = False

    @property
    def busy(self) -> bool:
        """A job is under way, or a page erase stalled the CPU since the reset."""
        return self.running_job is not None or bool(self.stalled_until_us)

    def drop_queued(self) -> None:
        """The session ended: its queued jobs go (a job under way completes)."""
        self.jobs = deque(job for job in self.jobs if job is self.running_job)

    def after_written(self, s: OtaSession, action: Callable[..., None], *args: Any) -> None:
        """Run ``action`` once every byte the session has accepted so far is in flash."""
        for job in reversed(self.jobs):
            if job.session is s and not job.is_erase:
                job.after.append(lambda: action(*args))
                return
        action(*args)

    def queue(self, job: _FlashJob) -> None:
        self.jobs.append(job)
        if self.running_job is None and not self._completing:
            self._start_next_job()

    def _start_next_job(self) -> None:
        owner = self._owner
        while self.running_job is None and self.jobs:
            job = self.running_job = self.jobs[0]
            now = owner._now_us()
            if job.is_erase:
                duration = to_us(owner.timings.page_stall_s(job.session.pages))
                self.stalled_until_us = now + duration  # the CPU halts with the erase
            else:
                duration = to_us(owner.timings.write_time(len(job.data)))
            if duration:
                owner._at(now + duration, self.finish_job, job)
            else:  # an instant flash (a model setting): written as it arrives
                self.finish_job(job, start_next=False)

    def finish_job(self, job: _FlashJob, start_next: bool = True) -> None:
        """The NVMC is done with ``job``: check it, retry a failure once, then run what
        waited for it, handle what arrived during a stall, and start the next job."""
        owner = self._owner
        self.running_job = None
        if self.jobs and self.jobs[0] is job:
            self.jobs.popleft()
        if job.is_erase:
            assert job.page is not None
            ok = owner.flash.erase_page(job.page) and owner.flash.is_erased(job.page)
        else:
            ok = owner.flash.write_words(job.offset, job.data) and (
                owner.flash.read(job.offset, len(job.data)) == job.data
            )
        self._completing = True
        try:
            if not ok and not job.retried:
                job.retried = True
                self.jobs.appendleft(job)
            elif not ok:
                what = f"page {job.page} erase" if job.is_erase else f"write at {job.offset}"
                log.info("flash: %s failed twice", what)
                self.failed_since_boot = True
                owner._flash_failed(job)
            elif job.session is owner.session:
                self._job_done(job)
            if start_next:
                owner._handle_inbox()
        finally:
            self._completing = False
        if start_next:
            self._start_next_job()

    @staticmethod
    def _job_done(job: _FlashJob) -> None:
        s = job.session
        if not job.is_erase:
            s.unwritten_chunks -= 1
            s.written_offset = job.offset + job.length
        for action in job.after:
            action()

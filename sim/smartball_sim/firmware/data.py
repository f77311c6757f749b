"""The firmware's DATA: accepting chunks in order (refusals rate-limited), ACKs once the
bytes are in flash (the jobs go to its flash controller, ``flash_controller.py``), and
FLASH_ERROR once the controller gives up on a job. It holds its diagnostic counters (the
session holds the offsets and counts); the firmware it serves is reached through
:class:`DataOwner` only."""

from __future__ import annotations

from typing import Any, Protocol

from pytest_smartball.contract import codec as p

from .bugs import FirmwareBug as Bug
from .erase import Eraser, EraserOwner
from .flash import PAGE_SIZE, pad_to_words
from .types import FirmwareEvent, FirmwareEventKind, OtaSession, _FlashJob


class DataOwner(EraserOwner, Protocol):
    """What DATA needs of its firmware beyond what the eraser needs: its eraser (pages
    erased as DATA reaches them), its receive buffer and ACK interval, the session's end
    and its errors."""

    eraser: Eraser

    def status(self) -> p.MsgOtaStatus: ...
    def rx_buffer_chunks(self, s: OtaSession) -> int: ...
    def ack_interval(self, s: OtaSession) -> int: ...
    def _end_session(self, state: p.OtaState) -> None: ...
    def _error(self, code: p.ErrorCode, command: int | None = None, **details: Any) -> None: ...


class DataReceiver:
    """A firmware's DATA and its answer to a write that failed twice."""

    def __init__(self, owner: DataOwner) -> None:
        self._fw = owner
        #: DATA at an offset the device had already received (a host re-sending what the
        #: device never asked for) or beyond it (after a lost write), and DATA dropped with
        #: the receive buffer full: for fuzz properties.
        self.rejected_behind = 0
        self.rejected_ahead = 0
        self.dropped_full = 0

    # --- DATA ----------------------------------------------------------------------------

    def on_data(self, msg: p.CmdOtaData) -> None:
        fw = self._fw
        s = fw.session
        if fw.state != p.OtaState.RECEIVING or s is None:
            if fw.state != p.OtaState.ERASING or s is None or self.rate_limit(s):
                fw._error(p.ErrorCode.BAD_STATE)
            return
        size = len(msg.data)
        if size == 0 or size > s.max_chunk:
            fw._error(p.ErrorCode.BAD_PARAM, what=f"chunk of {size} bytes, max {s.max_chunk}")
            return
        if msg.offset != s.next_offset:
            if msg.offset < s.next_offset:
                self.rejected_behind += 1
            else:
                self.rejected_ahead += 1
            self.reject_offset(s)
            return
        end = msg.offset + size
        if end > s.image_size and Bug.DATA_PAST_END_ACCEPTED not in fw.bugs:
            fw._error(p.ErrorCode.BAD_OFFSET)
            return
        if size % p.WORD_SIZE and end != s.image_size:
            fw._error(p.ErrorCode.BAD_PARAM, what=f"chunk of {size} bytes: not whole words")
            return
        if s.unwritten_chunks >= fw.rx_buffer_chunks(s):
            self.dropped_full += 1  # the flash is behind: no room for this chunk
            self.reject_offset(s)
            return
        s.next_offset = end
        s.rejected = None
        s.unwritten_chunks += 1
        if s.manifest is not None and Bug.HASH_OF_STREAM in fw.bugs:
            s.stream_hash.update(msg.data)  # hashed as it arrives, never read back
        if s.progressive:
            last_page = (end - 1) // PAGE_SIZE
            for page in range(msg.offset // PAGE_SIZE, last_page + 1):
                if page not in s.erase_queued:  # erased just before its first write
                    s.erase_queued.add(page)
                    job = _FlashJob(s, p.MsgType.CMD_OTA_DATA, page=page)
                    job.after.append(lambda: fw.eraser.page_erased(s))
                    fw.flash_controller.queue(job)
        fw.flash_controller.queue(
            _FlashJob(
                s,
                p.MsgType.CMD_OTA_DATA,
                offset=msg.offset,
                data=pad_to_words(msg.data),
                length=size,
            )
        )
        s.accepted_since_ack += 1
        if end == s.image_size or s.accepted_since_ack >= fw.ack_interval(s):
            # ACK what is in flash, once it is: the host's credit then bounds the buffer.
            s.accepted_since_ack = 0
            if Bug.ACK_BEFORE_WRITTEN in fw.bugs:
                self.ack(s, end)
            else:
                fw.flash_controller.after_written(s, self.ack, s, end)
        event = FirmwareEvent(FirmwareEventKind.DATA_ACCEPTED, offset=end, total=s.image_size)
        fw._call_out(fw._observe, event)

    def rate_limit(self, s: OtaSession) -> bool:
        """True for the rejected DATA that gets a reply: the first, then one per window."""
        s.rejected = 0 if s.rejected is None or s.rejected >= s.window else s.rejected
        s.rejected += 1
        return s.rejected == 1

    def reject_offset(self, s: OtaSession) -> None:
        fw = self._fw
        # One STATUS per gap, then one per window of further rejects: enough for the host
        # to rewind, without a notification storm while its in-flight window drains.
        if self.rate_limit(s):
            fw._reply(fw.status())

    def ack(self, s: OtaSession, written_offset: int) -> None:
        fw = self._fw
        lost_to_finish = (
            fw.state == p.OtaState.VERIFYING and Bug.FINAL_ACK_LOST_TO_FINISH in fw.bugs
        )
        if s is fw.session and not lost_to_finish:
            fw._reply(p.MsgOtaAck(written_offset))

    # --- a write that failed twice ----------------------------------------------------------

    def flash_failed(self, job: _FlashJob) -> None:
        """The flash controller gave up on ``job``: its session, if current, ends."""
        fw = self._fw
        if job.session is not fw.session:
            return  # an aborted session's last job: nobody waits for it
        fw._end_session(p.OtaState.ERROR)
        fw._error(p.ErrorCode.FLASH_ERROR, command=job.command)
        fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.FLASH_ERROR))

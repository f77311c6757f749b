"""SmartBallFirmware's DATA: accepting chunks in order (refusals rate-limited), ACKs once
the bytes are in flash (the jobs go to its flash controller, ``flash_controller.py``), and
FLASH_ERROR once the controller gives up on a job."""

from __future__ import annotations

from pytest_smartball.contract import codec as p

from .bugs import FirmwareBug as Bug
from .flash import PAGE_SIZE, pad_to_words
from .parts import FirmwareParts
from .types import FirmwareEvent, FirmwareEventKind, OtaSession, _FlashJob


class DataMixin(FirmwareParts):
    """DATA and a flash failure: SmartBallFirmware's part for them."""

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
                    job.after.append(lambda: self.eraser.page_erased(s))
                    self.flash_controller.queue(job)
        self.flash_controller.queue(
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
                self.flash_controller.after_written(s, self._ack, s, end)
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

    # --- a write that failed twice ----------------------------------------------------------

    def _flash_failed(self, job: _FlashJob) -> None:
        """The flash controller gave up on ``job``: its session, if current, ends."""
        if job.session is not self.session:
            return  # an aborted session's last job: nobody waits for it
        self._end_session(p.OtaState.ERROR)
        self._error(p.ErrorCode.FLASH_ERROR, command=job.command)
        self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.FLASH_ERROR))

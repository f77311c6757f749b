"""SmartBallFirmware's end of an update: FINISH, the verify (the staged flash read back), the
power-safe pending record and DONE, and the reset into the new image once DONE has left."""

from __future__ import annotations

from pytest_smartball.contract import codec as p

from .bugs import LATE_RESET_S, SLOW_VERIFY_BYTES_PER_S
from .bugs import FirmwareBug as Bug
from .parts import FirmwareParts
from .types import FirmwareEvent, FirmwareEventKind, OtaSession, _PendingRecord, to_us

#: After MSG_OTA_DONE the device waits for the notification to leave the radio, at most
#: this long (docs/protocol.md, activation), then ends the link and resets.
TX_COMPLETE_WAIT_S = 1.0


class ActivationMixin(FirmwareParts):
    """FINISH, verify, activation: SmartBallFirmware's part for them."""

    # --- FINISH, verify, activation ---------------------------------------------------------

    def _on_finish(self, msg: p.CmdOtaFinish) -> None:
        s = self.session
        if self.state != p.OtaState.RECEIVING or s is None or s.next_offset != s.image_size:
            self._error(p.ErrorCode.BAD_STATE)
            return
        self.state = p.OtaState.VERIFYING
        # Once the last chunk is written (its ACK leaves first), read the flash back.
        self.flash_controller.after_written(s, self._start_verify, s)

    def _start_verify(self, s: OtaSession) -> None:
        if s is not self.session:
            return
        if s.manifest is not None:
            self._staged_complete(s)
        per_byte = self.timings.verify_s_per_byte
        if s.manifest is not None:
            per_byte += self.timings.hash_s_per_byte  # and the SHA-256 of the same flash
        if Bug.SLOW_VERIFY in self.bugs:
            per_byte = max(per_byte, 1 / SLOW_VERIFY_BYTES_PER_S)
        duration = to_us(per_byte * s.image_size)
        self._at(self._now_us() + duration, self._verify, s)

    def _verify(self, s: OtaSession) -> None:
        if s is not self.session or self.state != p.OtaState.VERIFYING:
            return
        actual = p.crc32(self.flash.read(0, s.image_size))  # the flash, read back
        if actual != s.image_crc32 and Bug.NO_CRC_CHECK in self.bugs:
            actual = s.image_crc32  # believed, never computed
        if actual != s.image_crc32:
            self._end_session(p.OtaState.ERROR)
            self._error(p.ErrorCode.CRC_MISMATCH, command=p.MsgType.CMD_OTA_FINISH)
            self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.VERIFY_FAILED))
            return
        if self._digest_refused(s):
            return
        if s.manifest is not None:  # the window between the verify and PENDING persisted
            self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.SIGNED_VERIFIED))
        if self.persist_fail_next:  # the record could not be written: DONE would be a lie
            self.persist_fail_next = False
            self._end_session(p.OtaState.ERROR)
            self._error(p.ErrorCode.FLASH_ERROR, command=p.MsgType.CMD_OTA_FINISH)
            self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.FLASH_ERROR))
            return
        # Persisted before DONE goes out: from here a reset, or a power loss, switches.
        if Bug.PENDING_PERSISTED_AT_RESET not in self.bugs:
            self._pending = _PendingRecord(s.image_size, s.image_crc32, s.head)
        self.state = p.OtaState.COMPLETE
        if Bug.DONE_WRONG_CRC in self.bugs:
            actual = int.from_bytes(actual.to_bytes(4, "little"), "big")
        self._reply(p.MsgOtaDone(actual))
        self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.VERIFIED))
        if Bug.LATE_RESET in self.bugs:
            self._at(self._now_us() + to_us(LATE_RESET_S), self._activate, s)
            return
        # Reset once DONE has left the radio, or after TX_COMPLETE_WAIT_S in any case.
        self._at(self._now_us() + to_us(TX_COMPLETE_WAIT_S), self._activate, s)
        self._call_out(self._when_sent, self._guarded(self._activate, s))

    def _activate(self, s: OtaSession) -> None:
        if s is not self.session or self.state != p.OtaState.COMPLETE or s.activating:
            return
        s.activating = True
        if Bug.PENDING_PERSISTED_AT_RESET in self.bugs:
            self._pending = _PendingRecord(s.image_size, s.image_crc32, s.head)  # only now
        self._call_out(self._request_reset)

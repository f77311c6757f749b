"""The firmware's end of an update: FINISH, the verify (the staged flash read back), the
power-safe pending record and DONE, and the reset into the new image once DONE has left.
It holds no state of its own (the pending record is the device's, persisted); the firmware
it serves is reached through :class:`ActivationOwner` only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pytest_smartball.contract import codec as p

from .bugs import LATE_RESET_S, SLOW_VERIFY_BYTES_PER_S
from .bugs import FirmwareBug as Bug
from .erase import EraserOwner
from .flash import Flash
from .signed import SignedUpdates
from .types import (
    FirmwareEvent,
    FirmwareEventKind,
    OtaSession,
    _PendingRecord,
    to_us,
)

#: After MSG_OTA_DONE the device waits for the notification to leave the radio, at most
#: this long (docs/protocol.md, activation), then ends the link and resets.
TX_COMPLETE_WAIT_S = 1.0


class ActivationOwner(EraserOwner, Protocol):
    """What the activation needs of its firmware beyond what the eraser needs: its flash,
    the pending record it persists, the signed checks of the staged image, the reset guard,
    its way out and the reset."""

    flash: Flash
    _pending: _PendingRecord | None
    persist_fail_next: bool
    _request_reset: Callable[[], None]
    _when_sent: Callable[[Callable[[], None]], None]
    signed_updates: SignedUpdates

    def _guarded(self, action: Callable[..., None], *args: Any) -> Callable[[], None]: ...
    def _error(self, code: p.ErrorCode, command: int | None = None, **details: Any) -> None: ...
    def _end_session(self, state: p.OtaState) -> None: ...


class Activation:
    """A firmware's FINISH, verify and activation."""

    def __init__(self, owner: ActivationOwner) -> None:
        self._fw = owner

    # --- FINISH, verify, activation ---------------------------------------------------------

    def on_finish(self, msg: p.CmdOtaFinish) -> None:
        fw = self._fw
        s = fw.session
        if fw.state != p.OtaState.RECEIVING or s is None or s.next_offset != s.image_size:
            fw._error(p.ErrorCode.BAD_STATE)
            return
        fw.state = p.OtaState.VERIFYING
        # Once the last chunk is written (its ACK leaves first), read the flash back.
        fw.flash_controller.after_written(s, self._start_verify, s)

    def _start_verify(self, s: OtaSession) -> None:
        fw = self._fw
        if s is not fw.session:
            return
        if s.manifest is not None:
            fw.signed_updates.staged_complete(s)
        per_byte = fw.timings.verify_s_per_byte
        if s.manifest is not None:
            per_byte += fw.timings.hash_s_per_byte  # and the SHA-256 of the same flash
        if Bug.SLOW_VERIFY in fw.bugs:
            per_byte = max(per_byte, 1 / SLOW_VERIFY_BYTES_PER_S)
        duration = to_us(per_byte * s.image_size)
        fw._at(fw._now_us() + duration, self._verify, s)

    def _verify(self, s: OtaSession) -> None:
        fw = self._fw
        if s is not fw.session or fw.state != p.OtaState.VERIFYING:
            return
        actual = p.crc32(fw.flash.read(0, s.image_size))  # the flash, read back
        if actual != s.image_crc32 and Bug.NO_CRC_CHECK in fw.bugs:
            actual = s.image_crc32  # believed, never computed
        if actual != s.image_crc32:
            fw._end_session(p.OtaState.ERROR)
            fw._error(p.ErrorCode.CRC_MISMATCH, command=p.MsgType.CMD_OTA_FINISH)
            fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.VERIFY_FAILED))
            return
        if fw.signed_updates.digest_refused(s):
            return
        if s.manifest is not None:  # the window between the verify and PENDING persisted
            fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.SIGNED_VERIFIED))
        if fw.persist_fail_next:  # the record could not be written: DONE would be a lie
            fw.persist_fail_next = False
            fw._end_session(p.OtaState.ERROR)
            fw._error(p.ErrorCode.FLASH_ERROR, command=p.MsgType.CMD_OTA_FINISH)
            fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.FLASH_ERROR))
            return
        # Persisted before DONE goes out: from here a reset, or a power loss, switches.
        if Bug.PENDING_PERSISTED_AT_RESET not in fw.bugs:
            fw._pending = _PendingRecord(s.image_size, s.image_crc32, s.head)
        fw.state = p.OtaState.COMPLETE
        if Bug.DONE_WRONG_CRC in fw.bugs:
            actual = int.from_bytes(actual.to_bytes(4, "little"), "big")
        fw._reply(p.MsgOtaDone(actual))
        fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.VERIFIED))
        if Bug.LATE_RESET in fw.bugs:
            fw._at(fw._now_us() + to_us(LATE_RESET_S), self._activate, s)
            return
        # Reset once DONE has left the radio, or after TX_COMPLETE_WAIT_S in any case.
        fw._at(fw._now_us() + to_us(TX_COMPLETE_WAIT_S), self._activate, s)
        fw._call_out(fw._when_sent, fw._guarded(self._activate, s))

    def _activate(self, s: OtaSession) -> None:
        fw = self._fw
        if s is not fw.session or fw.state != p.OtaState.COMPLETE or s.activating:
            return
        s.activating = True
        if Bug.PENDING_PERSISTED_AT_RESET in fw.bugs:
            fw._pending = _PendingRecord(s.image_size, s.image_crc32, s.head)  # only now
        fw._call_out(fw._request_reset)

"""The SmartBall firmware's OTA logic, modelled on the device side of protocol v1.

Pure protocol behaviour plus flash timing: it receives bytes written to NUS RX, answers
through ``send`` (bytes for NUS TX) and reports what happens to an observer, which the
simulated device uses for fault triggers and logs. All delays are ``asyncio`` sleeps so a
virtual clock (looptime) fast-forwards a 40 s erase.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pytest_smartball import protocol as p

log = logging.getLogger("sim.firmware")

PAGE_SIZE = 4096
#: nRF52840 (1 MB flash): bootloader, SoftDevice and the active application leave roughly
#: this much for the staging bank of a dual-bank update.
DEFAULT_STAGING_CAPACITY = 480 * 1024
DEVICE_MAX_CHUNK = p.MAX_DATA_CHUNK


@dataclass(frozen=True, slots=True)
class FlashTimings:
    """Flash timings; defaults from the nRF52840 Product Specification v1.7, section 4.3.9."""

    #: t_ERASEPAGE: 85 ms typical per 4 KB page. The field's firmware took 15-40 s for a
    #: whole staging erase (it yields to the radio between pages); model that with
    #: ``erase_total_s``.
    erase_page_s: float = 0.085
    #: When set, the whole erase takes this long whatever the image size (field mode).
    erase_total_s: float | None = None
    #: t_WRITE: 41 us per 32-bit word (max). A 234-byte chunk takes 2.4 ms: about 97 kB/s,
    #: faster than the default radio (65 kB/s), slower than a 7.5 ms LE 2M link.
    write_word_s: float = 41e-6
    #: Received chunks the device can hold while the flash is busy; None: the READY window,
    #: so a host that respects the window never overflows it. Smaller values make the
    #: device drop DATA when full (answered like a wrong offset: the host rewinds).
    rx_buffer_chunks: int | None = None
    #: CRC-32 over the staged image before switching (about 20 MB/s on a 64 MHz M4).
    verify_s_per_byte: float = 1 / 20_000_000
    #: Between sending MSG_OTA_DONE and resetting, so the notification leaves the radio.
    reset_delay_s: float = 0.1

    def page_erase_time(self, pages: int) -> float:
        if self.erase_total_s is not None and pages:
            return self.erase_total_s / pages
        return self.erase_page_s


@dataclass(slots=True)
class OtaSession:
    image_size: int
    image_crc32: int
    max_chunk: int
    next_offset: int = 0  # received (in flash or in the receive buffer)
    accepted_since_ack: int = 0
    #: When the flash finishes each buffered chunk (loop time), oldest first.
    unwritten: deque[float] = field(default_factory=deque)
    flash_free_at: float = 0.0
    rejected_since_status: int | None = None  # None: no rejection since the last accepted chunk


@dataclass(frozen=True, slots=True)
class FirmwareEvent:
    """What the firmware did, for fault triggers and the device log."""

    kind: str  # command, erase_progress, data_accepted, verified, rebooting, ...
    msg_type: int | None = None
    offset: int = 0
    done: int = 0
    total: int = 0


@dataclass(slots=True)
class FirmwareImage:
    data: bytes
    version: tuple[int, int, int]

    @property
    def crc32(self) -> int:
        return p.crc32(self.data)


class SmartBallFirmware:
    def __init__(
        self,
        *,
        active_image: bytes,
        version: tuple[int, int, int] = (1, 0, 0),
        staging_capacity: int = DEFAULT_STAGING_CAPACITY,
        window: int = 16,
        timings: FlashTimings | None = None,
        send: Callable[[bytes], None] = lambda frame: None,
        request_reset: Callable[[], None] = lambda: None,
        observe: Callable[[FirmwareEvent], None] = lambda event: None,
    ) -> None:
        self.active = FirmwareImage(bytes(active_image), version)
        self.staging_capacity = staging_capacity
        self.window = window
        self.timings = timings or FlashTimings()
        self._send = send
        self._request_reset = request_reset
        self._observe = observe
        self._decoder = p.FrameDecoder()
        self._staging = bytearray(b"\xff" * staging_capacity)
        self.state = p.OtaState.IDLE
        self.session: OtaSession | None = None
        self._erase_task: asyncio.Task[None] | None = None
        self._verify_task: asyncio.Task[None] | None = None
        self.pending_image: FirmwareImage | None = None
        self.commands_seen: dict[int, int] = {}
        #: DATA at an offset the device had already received (a host re-sending what the
        #: device never asked for) or beyond it (after a lost write): for fuzz properties.
        self.data_rejected_behind = 0
        self.data_rejected_ahead = 0
        self.data_dropped_full = 0
        self.boot_count = 1
        #: Type byte of the frame being handled: what a MSG_ERROR sent now answers.
        self._answering = 0

    # --- what the device exposes -----------------------------------------------------

    @property
    def rx_buffer_chunks(self) -> int:
        return self.timings.rx_buffer_chunks or self.window

    @property
    def ack_interval(self) -> int:
        return max(1, self.window // 2)

    @property
    def decoder_stats(self) -> p.DecoderStats:
        return self._decoder.stats

    def staged_bytes(self) -> bytes:
        size = self.session.image_size if self.session else 0
        return bytes(self._staging[:size])

    def info(self) -> p.MsgInfo:
        major, minor, patch = self.active.version
        return p.MsgInfo(
            protocol_version=p.PROTOCOL_VERSION,
            fw_major=major,
            fw_minor=minor,
            fw_patch=patch,
            active_image_size=len(self.active.data),
            active_image_crc32=self.active.crc32,
            staging_capacity=self.staging_capacity,
        )

    def status(self) -> p.MsgOtaStatus:
        s = self.session
        return p.MsgOtaStatus(
            state=self.state,
            next_expected_offset=s.next_offset if s else 0,
            image_size=s.image_size if s else 0,
            image_crc32=s.image_crc32 if s else 0,
        )

    def power_cycle(self) -> None:
        """Reset: RAM state (the OTA session) is lost; an image verified before the reset is
        switched in, as the bootloader does."""
        self._cancel_tasks()
        if self.pending_image is not None:
            log.info(
                "boot: switching to the new image (%d bytes, crc32 %08x)",
                len(self.pending_image.data),
                self.pending_image.crc32,
            )
            self.active = self.pending_image
            self.pending_image = None
        self.state = p.OtaState.IDLE
        self.session = None
        self._decoder = p.FrameDecoder()
        self.boot_count += 1

    def link_lost(self) -> None:
        """The connection dropped: a half-received frame will never be completed."""
        self._decoder.reset()

    # --- receiving -------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self._handle_frame(frame)

    def _handle_frame(self, frame: p.Frame) -> None:
        self._answering = frame.type
        self.commands_seen[frame.type] = self.commands_seen.get(frame.type, 0) + 1
        self._observe(FirmwareEvent("command", msg_type=frame.type))
        if frame.type not in p.COMMAND_TYPES:
            self._error(p.ErrorCode.UNKNOWN_COMMAND, f"unknown command 0x{frame.type:02X}")
            return
        try:
            msg = p.parse_message(frame)
        except p.ProtocolError as exc:
            self._error(p.ErrorCode.BAD_FRAME, str(exc))
            return
        handler = self._HANDLERS[type(msg)]
        handler(self, msg)

    def _on_info(self, msg: p.CmdInfo) -> None:
        self._reply(self.info())

    def _on_status(self, msg: p.CmdOtaStatus) -> None:
        self._reply(self.status())

    def _on_abort(self, msg: p.CmdOtaAbort) -> None:
        self._cancel_tasks()
        self.state = p.OtaState.IDLE
        self.session = None
        self.pending_image = None
        self._reply(self.status())

    def _on_start(self, msg: p.CmdOtaStart) -> None:
        if msg.image_size == 0 or msg.chunk_size == 0:
            self._error(p.ErrorCode.BAD_PARAM, "image size and chunk size must be non-zero")
            return
        if msg.image_size > self.staging_capacity:
            self._error(
                p.ErrorCode.TOO_LARGE,
                f"image of {msg.image_size} bytes exceeds staging capacity {self.staging_capacity}",
            )
            return
        s = self.session
        busy = self.state in (p.OtaState.ERASING, p.OtaState.RECEIVING, p.OtaState.VERIFYING)
        if busy and s is not None:
            if (s.image_size, s.image_crc32) != (msg.image_size, msg.image_crc32):
                self._error(
                    p.ErrorCode.BAD_STATE, "another image's session is under way; abort first"
                )
            elif self.state == p.OtaState.RECEIVING:
                self._reply(p.MsgOtaReady(s.max_chunk, self.window))
            # ERASING: the erase goes on and READY follows; VERIFYING: DONE or ERROR follows.
            return
        # From COMPLETE a reset is still pending (after MSG_OTA_DONE): the new session
        # replaces the verified image, so that reset must not cut the new session short.
        self._cancel_tasks()
        self.session = OtaSession(
            msg.image_size, msg.image_crc32, max_chunk=min(msg.chunk_size, DEVICE_MAX_CHUNK)
        )
        self.pending_image = None
        self.state = p.OtaState.ERASING
        self._erase_task = asyncio.get_running_loop().create_task(self._erase(self.session))

    async def _erase(self, session: OtaSession) -> None:
        pages = math.ceil(session.image_size / PAGE_SIZE)
        total = pages * PAGE_SIZE
        page_time = self.timings.page_erase_time(pages)
        for page in range(pages):
            await asyncio.sleep(page_time)
            start = page * PAGE_SIZE
            self._staging[start : start + PAGE_SIZE] = b"\xff" * PAGE_SIZE
            done = start + PAGE_SIZE
            self._reply(p.MsgOtaProgress(p.OtaPhase.ERASE, done, total))
            self._observe(FirmwareEvent("erase_progress", done=done, total=total))
        self.state = p.OtaState.RECEIVING
        self._reply(p.MsgOtaReady(session.max_chunk, self.window))
        self._observe(FirmwareEvent("ready"))

    def _on_data(self, msg: p.CmdOtaData) -> None:
        s = self.session
        if self.state != p.OtaState.RECEIVING or s is None:
            self._error(p.ErrorCode.BAD_STATE, f"DATA in state {self.state.name.lower()}")
            return
        size = len(msg.data)
        if size == 0 or size > s.max_chunk:
            self._error(p.ErrorCode.BAD_PARAM, f"chunk of {size} bytes (max {s.max_chunk})")
            return
        if msg.offset != s.next_offset:
            if msg.offset < s.next_offset:
                self.data_rejected_behind += 1
            else:
                self.data_rejected_ahead += 1
            self._reject_offset(s)
            return
        if msg.offset + size > s.image_size:
            self._error(
                p.ErrorCode.BAD_OFFSET,
                f"chunk at {msg.offset}+{size} runs past the image end {s.image_size}",
            )
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        # A virtual clock (looptime) runs call_at(t) at t rounded to its 1 us resolution,
        # so a chunk written "now" may read as not yet written: count it written.
        while s.unwritten and s.unwritten[0] <= now + 1e-6:
            s.unwritten.popleft()
        if len(s.unwritten) >= self.rx_buffer_chunks:
            self.data_dropped_full += 1  # the flash is behind: no room for this chunk
            self._reject_offset(s)
            return
        self._staging[msg.offset : msg.offset + size] = msg.data
        s.next_offset += size
        s.rejected_since_status = None
        s.accepted_since_ack += 1
        ack_now = s.next_offset == s.image_size or s.accepted_since_ack >= self.ack_interval
        write_s = math.ceil(size / 4) * self.timings.write_word_s
        if write_s:
            written_at = max(now, s.flash_free_at) + write_s
            s.flash_free_at = written_at
            s.unwritten.append(written_at)
        if ack_now:
            # ACK what is in flash, when it is: the host's window then bounds the buffer.
            s.accepted_since_ack = 0
            if write_s:  # _ack ignores a session that ended meanwhile
                loop.call_at(written_at, self._ack, s, s.next_offset)
            else:  # an instant flash (a model setting): written as it arrives
                self._ack(s, s.next_offset)
        self._observe(FirmwareEvent("data_accepted", offset=s.next_offset, total=s.image_size))

    def _ack(self, session: OtaSession, written_offset: int) -> None:
        if session is self.session and self.state == p.OtaState.RECEIVING:
            self._reply(p.MsgOtaAck(written_offset))

    def _reject_offset(self, s: OtaSession) -> None:
        # One STATUS per gap, then one per window of further rejects: enough for the host
        # to rewind, without a notification storm while its in-flight window drains.
        if s.rejected_since_status is None or s.rejected_since_status >= self.window:
            s.rejected_since_status = 0
            self._reply(self.status())
        s.rejected_since_status += 1

    def _on_finish(self, msg: p.CmdOtaFinish) -> None:
        s = self.session
        if self.state != p.OtaState.RECEIVING or s is None or s.next_offset != s.image_size:
            have = f"{s.next_offset}/{s.image_size} bytes" if s else "no session"
            self._error(
                p.ErrorCode.BAD_STATE, f"FINISH in state {self.state.name.lower()} ({have})"
            )
            return
        self.state = p.OtaState.VERIFYING
        self._verify_task = asyncio.get_running_loop().create_task(self._verify(s))

    async def _verify(self, s: OtaSession) -> None:
        flushing = s.flash_free_at - asyncio.get_running_loop().time()
        await asyncio.sleep(max(0.0, flushing) + self.timings.verify_s_per_byte * s.image_size)
        staged = bytes(self._staging[: s.image_size])
        actual = p.crc32(staged)
        if actual != s.image_crc32:
            self.state = p.OtaState.ERROR
            self.session = None
            self._error(
                p.ErrorCode.CRC_MISMATCH,
                f"staged image crc32 {actual:08x} != expected {s.image_crc32:08x}; old image kept",
                command=p.MsgType.CMD_OTA_FINISH,
            )
            self._observe(FirmwareEvent("verify_failed"))
            return
        self.state = p.OtaState.COMPLETE
        self.pending_image = FirmwareImage(staged, self.active.version)
        self._reply(p.MsgOtaDone(actual))
        self._observe(FirmwareEvent("verified"))
        await asyncio.sleep(self.timings.reset_delay_s)
        self._request_reset()

    # --- helpers ---------------------------------------------------------------------

    def _reply(self, msg: p.DeviceMessage) -> None:
        self._send(p.encode(msg))

    def _error(self, code: p.ErrorCode, text: str, command: int | None = None) -> None:
        log.info("error %s: %s", code.name, text)
        answering = self._answering if command is None else command
        self._reply(p.MsgError(code, answering, text))

    def _cancel_tasks(self) -> None:
        for task in (self._erase_task, self._verify_task):
            if task is not None and not task.done() and task is not _current_task():
                task.cancel()
        self._erase_task = self._verify_task = None

    _HANDLERS: ClassVar[dict[type, Callable[[SmartBallFirmware, Any], None]]]


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


SmartBallFirmware._HANDLERS = {
    p.CmdInfo: SmartBallFirmware._on_info,
    p.CmdOtaStatus: SmartBallFirmware._on_status,
    p.CmdOtaAbort: SmartBallFirmware._on_abort,
    p.CmdOtaStart: SmartBallFirmware._on_start,
    p.CmdOtaData: SmartBallFirmware._on_data,
    p.CmdOtaFinish: SmartBallFirmware._on_finish,
}

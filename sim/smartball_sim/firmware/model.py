"""The SmartBall firmware's OTA logic: the executable model of docs/protocol.md.

It receives the bytes written to NUS RX, answers through ``send`` (bytes for NUS TX) and
reports what happens to an observer (the simulated device's fault triggers and logs).
Everything it does later is a *step* scheduled on the event loop, so a virtual clock
(looptime) fast-forwards a 40 s erase. Three rules shape the code:

* **A reset ends everything.** Every step, and every callback handed to the device, runs
  through :meth:`SmartBallFirmware._guarded`, which drops it when a reset happened since
  it was scheduled; a call out of the firmware (send, observe, reset) that ends in a reset
  unwinds the step that made it (:class:`_PowerCycled`). After a reset nothing from the
  previous life acts: no step, timer, callback or notification. There are no tasks.
* **Time is whole microseconds.** looptime rounds its clock to microseconds, so a step
  scheduled for ``t`` may see ``loop.time()`` a hair below ``t`` in floating point. All
  comparisons use integers from :func:`to_us`.
* **The flash is a queue of jobs** (page erases and chunk writes, one at a time, as the
  NVMC does them) on :class:`~smartball_sim.firmware.flash.Flash`: chunks are written as whole
  words, a page erase stalls the CPU (what arrives meanwhile is handled when the page is
  done, after its PROGRESS), an ABORT cannot stop a page erase halfway, and an ACK, the
  resume READY and the verify wait until the bytes they speak for are in flash.

The model can be told to have bugs (``bugs``, :class:`~smartball_sim.firmware.bugs.FirmwareBug`):
each is a named deviation of a line or two where the reference behaviour is decided, so
the HIL suite's strength can be measured against them. Without bugs this is the reference.

This module holds the class, its reception, commands and reset guard; its data types live in
``types.py``. Its collaborators (all in this folder): the flash controller, the eraser
(``erase.py``), the DATA receiver (``data.py``), the activation (``activation.py``: FINISH,
verify, activation), the signed updates and the bootloader (``signed.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.contract.signing import TrustedKey

from .. import gate_probe
from ..gate_probe import BugSwitches
from ..make_image import image_version
from .activation import TX_COMPLETE_WAIT_S as TX_COMPLETE_WAIT_S
from .activation import Activation
from .bugs import SMALL_FRAME_BUFFER, SMALL_RX_BUFFER_CHUNKS
from .bugs import FirmwareBug as Bug
from .data import DataReceiver
from .erase import Eraser
from .flash import PAGE_SIZE, Flash
from .flash_controller import FlashController
from .signed import SignedBootloader, SignedUpdates
from .types import (
    _US,
    ERROR_TEXTS,
    FirmwareEvent,
    FirmwareEventKind,
    FlashTimings,
    OtaSession,
    StoredImage,
    _FlashJob,
    _PendingRecord,
    to_us,
)

log = logging.getLogger("sim.firmware")

__all__ = [
    "DEFAULT_STAGING_CAPACITY",
    "DEVICE_MAX_CHUNK",
    "PAGE_SIZE",
    "FirmwareEvent",
    "FirmwareEventKind",
    "FlashTimings",
    "OtaSession",
    "SmartBallFirmware",
    "StoredImage",
    "to_us",
]

#: nRF52840 (1 MB flash): bootloader, SoftDevice and the active application leave this much
#: (480 KiB) for the staging bank of a dual-bank update. One source for the client's image
#: intake and the simulator: the contract's flash layout.
DEFAULT_STAGING_CAPACITY = contract.flash_layout().staging_capacity
DEVICE_MAX_CHUNK = p.MAX_DATA_CHUNK


class _PowerCycled(Exception):
    """Raised out of a call that reset the device, to unwind the step that made it."""


#: The commands only a device with SIGNED_IMAGES knows (a v1 device: UNKNOWN_COMMAND).
_SIGNED_COMMANDS = frozenset({p.MsgType.CMD_OTA_MANIFEST, p.MsgType.CMD_OTA_CONFIRM})


class SmartBallFirmware:
    def __init__(
        self,
        *,
        active_image: bytes,
        version: tuple[int, int, int] = (1, 0, 0),
        staging_capacity: int = DEFAULT_STAGING_CAPACITY,
        window: int = 16,
        timings: FlashTimings | None = None,
        progressive_erase: bool = False,
        progressive_window_bytes: int | None = None,
        send: Callable[[bytes], None] = lambda frame: None,
        request_reset: Callable[[], None] = lambda: None,
        observe: Callable[[FirmwareEvent], None] = lambda event: None,
        when_sent: Callable[[Callable[[], None]], None] | None = None,
        bugs: frozenset[Bug] = frozenset(),
        trusted_keys: Sequence[TrustedKey] = (),
        security_counter: int = 0,
    ) -> None:
        """``request_reset`` ends the link and resets the device (the activation after
        DONE). ``when_sent(callback)`` calls back once every notification sent so far has
        left the radio or the link is gone; without it (no radio) that is at once.
        ``bugs``: deviations from the contract this firmware has (none: the reference).
        ``trusted_keys``, ``security_counter``: the ball's provisioning for signed updates
        (docs/protocol.md section 16); without keys it is a v1 device (no SIGNED_IMAGES)."""
        if window < 1:
            raise ValueError(f"window must be at least 1 (got {window})")
        self.active = StoredImage(bytes(active_image), version)
        self.staging_capacity = staging_capacity
        self.window = window
        self.timings = timings or FlashTimings()
        self._progressive_erase = progressive_erase
        #: Asking whether a bug is on records that its deviation ran (gate_probe).
        self.bugs: frozenset[Bug] = BugSwitches(bugs)
        #: A progressive session's window covers at least this many bytes (None: the normal
        #: window); see :meth:`session_window`.
        self.progressive_window_bytes = progressive_window_bytes
        self._send = send
        self._request_reset = request_reset
        self._observe = observe
        self._when_sent = when_sent or (lambda callback: callback())
        # The reference never misuses the flash (a misuse raises); a buggy firmware may.
        self.flash = Flash(staging_capacity, strict=not self.bugs)
        self._decoder = p.FrameDecoder()
        #: When the partial frame in the decoder began (Bug.IDLE_FROM_FRAME_START only).
        self._partial_since_us: int | None = None
        self.state = p.OtaState.IDLE
        self.session: OtaSession | None = None
        #: Persisted (survives a reset) between MSG_OTA_DONE and the bootloader's switch.
        self._pending: _PendingRecord | None = None
        #: The next persist of that record fails (a test's input, docs/protocol.md 7.8).
        self.persist_fail_next = False
        #: What MSG_INFO reports instead of the active image (Bug.INFO_STALE_AFTER_SWITCH).
        self._stale_info: StoredImage | None = None
        self.commands_seen: dict[int, int] = {}
        self.boot_count = 1
        #: Bumped by every reset; a step or callback from an older life does nothing.
        self._epoch = 0
        #: Frames received and not yet handled (the CPU is stalled by a page erase).
        self._inbox: deque[p.Frame] = deque()
        # The collaborators, each reaching this firmware through its owner protocol: the
        # NVMC's job queue, the erase after START, DATA, and FINISH to the reset.
        self.flash_controller = FlashController(self)
        self.eraser = Eraser(self)
        self.data = DataReceiver(self)
        self.activation = Activation(self)
        #: The event loop the scheduled steps live on, and how many have yet to run.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = 0
        #: Type byte of the frame being handled: what a MSG_ERROR sent now answers.
        self._answering = 0
        # Signed updates (signed.py): the provisioning, what survives a reset, RAM.
        self.trusted_keys = tuple(trusted_keys)
        self.bootloader = SignedBootloader(self, security_counter)  # its settings page persists
        #: RAM copies of the persisted image state and counter (a bug may fail to persist).
        self.image_state = self.bootloader.signed.image_state
        self.security_counter = security_counter
        self.signed_updates = SignedUpdates(self)

    # --- what the device exposes -----------------------------------------------------

    def session_window(self, progressive: bool, max_chunk: int) -> int:
        """The window READY grants. In a progressive session each page's erase holds the
        credit for 85 ms (nothing is written, so nothing is ACKed); a window of
        ``progressive_window_bytes`` lets the radio go on filling the buffer meanwhile, so
        neither the link nor the flash waits (docs/performance.md: two pages, 8 KB, cover
        an erase and the ACK's round trip at 65 kB/s). The receive buffer grows with it."""
        if not progressive or self.progressive_window_bytes is None:
            return self.window
        return max(self.window, math.ceil(self.progressive_window_bytes / max_chunk))

    @property
    def progressive_erase(self) -> bool:
        """Advertised in MSG_INFO; a START with the flag then erases page by page."""
        return self._progressive_erase

    @progressive_erase.setter
    def progressive_erase(self, on: bool) -> None:
        # A test that switches it on a running simulated board does what no real board
        # allows: the kill table counts that test as simulator-only (gate_probe).
        gate_probe.sim_reconfigured(f"progressive_erase={on}")
        self._progressive_erase = on

    def rx_buffer_chunks(self, s: OtaSession) -> int:
        if Bug.WINDOW_EXCEEDS_BUFFER in self.bugs:
            return SMALL_RX_BUFFER_CHUNKS
        return self.timings.rx_buffer_chunks or s.window

    def ack_interval(self, s: OtaSession) -> int:
        if Bug.ACK_EVERY_WINDOW in self.bugs:
            return s.window  # stop-and-wait one window at a time
        return max(1, s.window // 2)

    @property
    def signed_only(self) -> bool:
        return bool(self.trusted_keys)

    @property
    def capabilities(self) -> p.Capability:
        caps = p.Capability.PROGRESSIVE_ERASE if self.progressive_erase else p.Capability.NONE
        return caps | p.Capability.SIGNED_IMAGES if self.signed_only else caps

    @property
    def decoder_stats(self) -> p.DecoderStats:
        return self._decoder.stats

    def staged_bytes(self) -> bytes:
        size = self.session.image_size if self.session else 0
        return self.flash.read(0, size)

    def info(self) -> p.MsgInfo:
        image = self._stale_info or self.active
        major, minor, patch = image.version
        return p.MsgInfo(
            protocol_version=p.PROTOCOL_VERSION,
            fw_major=major,
            fw_minor=minor,
            fw_patch=patch,
            active_image_size=len(image.data),
            active_image_crc32=image.crc32,
            staging_capacity=self.staging_capacity,
            capabilities=self.capabilities,
            security_counter=self.security_counter if self.signed_only else 0,
            image_state=self.image_state if self.signed_only else 0,
            trusted_key_id=self.trusted_keys[0].key_id if self.signed_only else 0,
        )

    def status(self) -> p.MsgOtaStatus:
        s = self.session
        offset = s.next_offset if s else 0
        if (
            s
            and self.state == p.OtaState.RECEIVING
            and Bug.STATUS_REPORTS_WRITTEN_OFFSET in self.bugs
        ):
            offset = s.written_offset
        return p.MsgOtaStatus(
            state=self.state,
            next_expected_offset=offset,
            image_size=s.image_size if s else 0,
            image_crc32=s.image_crc32 if s else 0,
        )

    def power_cycle(self) -> float:
        """Reset: RAM (the session, queued work, half-received frames) is lost and nothing
        scheduled before it will act. The bootloader runs first: with a verified image
        pending it checks the staged CRC again and, if good, copies it over the active
        image. Returns the bootloader's time for that (0 without an activation)."""
        kept = self._session_kept_across_reset()
        self._epoch += 1
        self._scheduled = 0  # what is scheduled will find the epoch changed and do nothing
        self.flash_controller.reset()
        self._inbox.clear()
        self.state = p.OtaState.RECEIVING if kept else p.OtaState.IDLE
        self.session = kept
        self._decoder = p.FrameDecoder()
        self.signed_updates.forget_manifest()  # RAM: it does not survive a reset
        self.boot_count += 1
        if not self.signed_only:
            return self._bootloader()
        seconds = self.bootloader.boot()
        # The application's RAM copies, from the settings page the bootloader left.
        self.image_state = self.bootloader.signed.image_state
        self.security_counter = self.bootloader.signed.security_counter
        return seconds

    def _session_kept_across_reset(self) -> OtaSession | None:
        """None: a reset ends the session. Bug.SESSION_SURVIVES_RESET persists it, its
        offset counting the chunks of the receive buffer, which the reset loses."""
        s = self.session
        if self.state != p.OtaState.RECEIVING or Bug.SESSION_SURVIVES_RESET not in self.bugs:
            return None
        assert s is not None
        return replace(s, unwritten_chunks=0, accepted_since_ack=0, rejected=None)

    def _bootloader(self) -> float:
        record, self._pending = self._pending, None
        if record is None and Bug.BOOT_ERASES_STAGING in self.bugs:
            dirty = [n for n in range(self.flash.size // PAGE_SIZE) if not self.flash.is_erased(n)]
            for page in dirty:
                self.flash.erase_page(page)
            return len(dirty) * self.timings.erase_page_s
        if record is None:
            return 0.0
        staged = self.flash.read(0, record.image_size)
        if p.crc32(staged) != record.image_crc32 and Bug.NO_CRC_CHECK not in self.bugs:
            log.warning("boot: the staged image fails its CRC; the old image stays active")
            return self.timings.verify_s_per_byte * record.image_size
        log.info(
            "boot: switching to the new image (%d bytes, crc32 %08x)",
            record.image_size,
            record.image_crc32,
        )
        if self._stale_info is None and Bug.INFO_STALE_AFTER_SWITCH in self.bugs:
            self._stale_info = self.active  # the settings record keeps the factory image
        self.active = StoredImage(staged, image_version(staged))
        return self.timings.activation_s(record.image_size)

    def link_lost(self) -> None:
        """The connection dropped: a half-received frame will never be completed."""
        self._decoder.reset()
        s = self.session
        if s is None or self.state not in (p.OtaState.ERASING, p.OtaState.RECEIVING):
            return
        if Bug.SESSION_LOST_ON_DROP in self.bugs:
            self._end_session(p.OtaState.IDLE)
        elif self.state == p.OtaState.RECEIVING and Bug.OFFSET_AHEAD_AFTER_DROP in self.bugs:
            s.next_offset = min(s.image_size, s.next_offset + s.max_chunk)

    # --- the one guard: nothing from before a reset acts -------------------------------

    def _guarded(self, action: Callable[..., None], *args: Any) -> Callable[[], None]:
        """``action(*args)`` as a callback that does nothing once the device has reset
        since it was made, and that ends quietly if the action itself resets the device."""
        epoch = self._epoch

        def run() -> None:
            if epoch != self._epoch:
                return
            try:
                action(*args)
            except _PowerCycled:
                pass

        return run

    def _call_out(self, callback: Callable[..., None], *args: Any) -> None:
        """Call out of the firmware (send, observe, reset); if that reset the device, the
        step that made the call ends here."""
        epoch = self._epoch
        callback(*args)
        if epoch != self._epoch:
            raise _PowerCycled

    def _at(self, when_us: int, action: Callable[..., None], *args: Any) -> None:
        step, epoch = self._guarded(action, *args), self._epoch

        def run() -> None:
            if epoch == self._epoch:  # (a reset zeroed the count of its life's steps)
                self._scheduled -= 1
            step()

        self._scheduled += 1
        self._bind_loop().call_at(when_us / _US, run)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop. A simulated device can outlive its event loop (a test's loop
        closes, the next test brings its own): what it had scheduled died with the old
        loop, and its clock starts again, so it resets, as a device that lost power."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            stale = self._loop is not None and (self._scheduled or self.flash_controller.busy)
            self._loop = loop
            if stale:
                log.info("a new event loop: the work scheduled on the old one is lost; reset")
                self.power_cycle()
        return loop

    def _now_us(self) -> int:
        return to_us(asyncio.get_running_loop().time())

    # --- receiving -------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes written to NUS RX."""
        if self._loop_time() is not None:
            self._bind_loop()
        self._guarded(self._receive, data)()

    def _receive(self, data: bytes) -> None:
        arrival = None if Bug.PARTIAL_FRAME_KEPT in self.bugs else self._loop_time()
        if Bug.SPLIT_FRAME_LOST in self.bugs:
            self._decoder.reset()  # every write taken as the start of a frame
        arrival_us = None if arrival is None else to_us(arrival)
        if Bug.IDLE_FROM_FRAME_START in self.bugs and arrival_us is not None:
            self._discard_from_frame_start(arrival_us)
        partial_before = self._decoder.buffered
        frames = self._decoder.feed(data, arrival)
        if Bug.MERGED_FRAMES_LOST in self.bugs:
            frames = frames[:1]  # the rest of the write is dropped
        if Bug.LONG_FRAME_DROPPED in self.bugs:  # it overflowed the frame buffer
            frames = [f for f in frames if len(f.payload) + p.FRAME_OVERHEAD <= SMALL_FRAME_BUFFER]
        if not self._decoder.buffered:
            self._partial_since_us = None
        elif frames or not partial_before or self._partial_since_us is None:
            self._partial_since_us = arrival_us  # the partial frame left began in this write
        self._inbox.extend(frames)
        self._handle_inbox()

    def _discard_from_frame_start(self, arrival_us: int) -> None:
        """Bug.IDLE_FROM_FRAME_START: the idle discard counts from the partial frame's
        first byte, not from the previous byte."""
        since_us = self._partial_since_us
        idle_us = to_us(p.DECODER_IDLE_S)
        if self._decoder.buffered and since_us is not None and arrival_us - since_us >= idle_us:
            self._decoder.reset()

    def _loop_time(self) -> float | None:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return None

    def _stalled(self) -> bool:
        if self.state == p.OtaState.ERASING and Bug.ERASE_BLOCKS_COMMANDS in self.bugs:
            return True  # until the erase's last page is done
        stalled_until_us = self.flash_controller.stalled_until_us
        return stalled_until_us > 0 and self._now_us() < stalled_until_us

    def _handle_inbox(self) -> None:
        """Handle received frames in order, unless a page erase stalls the CPU: then they
        wait for the erase's end (its job step calls this again)."""
        while self._inbox and not self._stalled():
            self._handle_frame(self._inbox.popleft())

    def _handle_frame(self, frame: p.Frame) -> None:
        self._answering = frame.type
        # A fault triggered by this command acts first; a reset means it was never seen.
        self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.COMMAND, frame.type))
        self.commands_seen[frame.type] = self.commands_seen.get(frame.type, 0) + 1
        if frame.type not in p.COMMAND_TYPES or (
            frame.type in _SIGNED_COMMANDS and not self.signed_only
        ):
            if Bug.UNKNOWN_COMMAND_IGNORED not in self.bugs:
                self._error(p.ErrorCode.UNKNOWN_COMMAND, type=frame.type)
        else:
            try:
                msg = p.parse_message(frame)
            except p.ProtocolError:
                self._error(p.ErrorCode.BAD_FRAME)
            else:
                self._HANDLERS[type(msg)](self, msg)
        self._call_out(self._observe, FirmwareEvent(FirmwareEventKind.HANDLED, frame.type))

    def _on_info(self, msg: p.CmdInfo) -> None:
        self._reply(self.info())

    def _on_status(self, msg: p.CmdOtaStatus) -> None:
        self._reply(self.status())
        s = self.session
        if self.state == p.OtaState.RECEIVING and s is not None:
            # So that a lost ACK cannot starve the host of credit: ACK all accepted bytes
            # once they are written. The interval count restarts, as at every ACK.
            s.accepted_since_ack = 0
            self.flash_controller.after_written(s, self.data.ack, s, s.next_offset)

    def _on_abort(self, msg: p.CmdOtaAbort) -> None:
        if self.state == p.OtaState.COMPLETE:
            # The switch is committed (persisted before DONE): nothing is cancelled, and
            # nothing may erase the staging bank under it.
            if Bug.ABORT_IN_COMPLETE_CANCELS_SWITCH in self.bugs:
                self._pending = None
            self._reply(self.status())
            return
        if Bug.ABORT_KEEPS_SESSION in self.bugs:
            self._reply(p.MsgOtaStatus(p.OtaState.IDLE, 0, 0, 0))
            return
        self._end_session(p.OtaState.IDLE)
        self.signed_updates.forget_manifest()  # ABORT discards an accepted manifest too
        self._reply(self.status())

    def _on_data(self, msg: p.CmdOtaData) -> None:
        self.data.on_data(msg)

    def _on_finish(self, msg: p.CmdOtaFinish) -> None:
        self.activation.on_finish(msg)

    def _on_manifest(self, msg: p.CmdOtaManifest) -> None:
        self.signed_updates.on_manifest(msg)

    def _on_confirm(self, msg: p.CmdOtaConfirm) -> None:
        self.signed_updates.on_confirm(msg)

    def _on_start(self, msg: p.CmdOtaStart) -> None:
        if msg.image_size == 0 or msg.chunk_size < p.MIN_CHUNK_SIZE:
            self._error(p.ErrorCode.BAD_PARAM, what="image_size 0 or chunk_size below 4")
            return
        if msg.image_size > self.staging_capacity:
            self._error(p.ErrorCode.TOO_LARGE)
            return
        s = self.session
        if self.state == p.OtaState.COMPLETE:
            self._error(p.ErrorCode.BAD_STATE)  # the switch is committed
            return
        if self.state in (p.OtaState.ERASING, p.OtaState.RECEIVING, p.OtaState.VERIFYING):
            assert s is not None
            same = (s.image_size, s.image_crc32) == (msg.image_size, msg.image_crc32)
            if not same and Bug.START_IGNORES_SESSION in self.bugs:
                self._new_session(msg)
            elif not same:
                self._error(p.ErrorCode.BAD_STATE)  # another image's session: ABORT first
            elif self.state != p.OtaState.VERIFYING and Bug.RESUME_RESTARTS_ERASE in self.bugs:
                self._new_session(msg)
            elif self.state != p.OtaState.VERIFYING:
                self._resume(s, msg)
            # VERIFYING: DONE or CRC_MISMATCH follows.
            return
        if Bug.FLASH_ERROR_STICKY in self.bugs and self.flash_controller.failed_since_boot:
            self._error(p.ErrorCode.FLASH_ERROR)  # the flag only a reset clears
            return
        if self.signed_only and self.signed_updates.start_refused_unsigned(msg):
            return  # nothing erased
        self._new_session(msg)

    def _resume(self, s: OtaSession, msg: p.CmdOtaStart) -> None:
        """The same image's START while erasing or receiving (a host back after a link
        drop): the session and its mode stay; the new chunk size applies (a reconnect may
        have a smaller MTU); the ACK and rejection counts restart."""
        s.max_chunk = p.granted_max_chunk(msg.chunk_size)
        s.window = self.session_window(s.progressive, s.max_chunk)
        s.accepted_since_ack = 0
        # A resumed host cannot know where the count stood: its first DATA refused after
        # this START is answered, in ERASING as in RECEIVING (section 7.4 rule 1).
        s.rejected = None
        if self.state == p.OtaState.ERASING:
            return  # READY follows when the erase ends, with this max_chunk
        # READY again once every accepted byte is written: the host's credit starts at
        # next_expected_offset, so the receive buffer must be empty by then.
        self.flash_controller.after_written(s, self.eraser.send_ready, s)

    def _new_session(self, msg: p.CmdOtaStart) -> None:
        progressive = self.progressive_erase and bool(msg.flags & p.StartFlag.PROGRESSIVE_ERASE)
        max_chunk = p.granted_max_chunk(msg.chunk_size)
        s = OtaSession(
            msg.image_size,
            msg.image_crc32,
            max_chunk=max_chunk,
            progressive=progressive,
            window=self.session_window(progressive, max_chunk),
            pages=self._pages_to_erase(msg.image_size),
        )
        self._end_session(p.OtaState.IDLE)
        self.signed_updates.give_manifest_to(s)
        self.session = s
        if progressive:
            self.state = p.OtaState.RECEIVING  # pages are erased as DATA reaches them
            self.eraser.send_ready(s)
            return
        self.state = p.OtaState.ERASING
        self.eraser.erase_next_page(s, 0)

    def _pages_to_erase(self, image_size: int) -> int:
        if image_size % PAGE_SIZE and Bug.LAST_PAGE_NOT_ERASED in self.bugs:
            return max(1, image_size // PAGE_SIZE)  # rounds the partial last page away
        return math.ceil(image_size / PAGE_SIZE)

    def _flash_failed(self, job: _FlashJob) -> None:
        self.data.flash_failed(job)

    def _end_session(self, state: p.OtaState) -> None:
        """Forget the session; its queued flash work goes (a job under way completes)."""
        self.session = None
        self.state = state
        self.flash_controller.drop_queued()

    # --- helpers ---------------------------------------------------------------------

    def _reply(self, msg: p.DeviceMessage) -> None:
        self._call_out(self._send, p.encode(msg))

    def _error(self, code: p.ErrorCode, command: int | None = None, **details: Any) -> None:
        text = ERROR_TEXTS[code].format(state=self.state.name, **details)
        encoded = text.encode()[: p.MAX_ERROR_TEXT].decode("utf-8", errors="ignore")
        log.info("error %s: %s", code.name, encoded)
        answering = self._answering if command is None else command
        self._reply(p.MsgError(code, answering, encoded))

    _HANDLERS: ClassVar[dict[type, Callable[[SmartBallFirmware, Any], None]]]


SmartBallFirmware._HANDLERS = {
    p.CmdInfo: SmartBallFirmware._on_info,
    p.CmdOtaStatus: SmartBallFirmware._on_status,
    p.CmdOtaAbort: SmartBallFirmware._on_abort,
    p.CmdOtaStart: SmartBallFirmware._on_start,
    p.CmdOtaData: SmartBallFirmware._on_data,
    p.CmdOtaFinish: SmartBallFirmware._on_finish,
    p.CmdOtaManifest: SmartBallFirmware._on_manifest,
    p.CmdOtaConfirm: SmartBallFirmware._on_confirm,
}

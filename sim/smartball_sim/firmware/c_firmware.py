"""The simulated SmartBall running the C reference core (``firmware/``) instead of the Python
model (``--sim-firmware=c``): the simulator keeps the radio, the faults, the flash and its
timings and virtual time; the core sees only its HAL.

The HAL, played on the event loop: a page erase or a write completes on the flash
(:class:`~smartball_sim.firmware.flash.Flash`, failures included) after the model's time for it
(a page erase stalls for 85 ms; in field mode the rest of its share of the erase comes
first, as idle time in which commands are handled, as in the model); reads
are the flash's; the clock is the loop's; the verify's steps (``sb_poll``) are charged
``verify_s_per_byte`` per byte read, about a millisecond of them per loop turn.

**Nothing calls out while the core runs.** What the core does outside itself during a call
(notifications, the persisted record, the reset request, its events) is collected and
carried out once the call has returned, in order; if one of them resets the device (a
fault fired by a command, say), the rest belongs to a life that ended and is dropped,
as the Python model's reset guard drops it. Calls that arrive meanwhile (bytes written,
the link lost) wait for the core to be free.

**Signed updates** (``trusted_keys``): the HAL's crypto hooks are the platform's crypto,
here ``hashlib``'s SHA-256 and ``cryptography``'s Ed25519; the records it persists
(PENDING with its manifest, CONFIRMED with the counter) live in
:class:`~smartball_sim.firmware.signed.SignedState`, and a reset runs the Python model's
bootloader (:class:`~smartball_sim.firmware.signed.SignedBootloader`: the second verify,
the resumable swap, TEST and the revert) on the simulator's flash, so the swap and
flip-staged faults act on the C core as on the model. Without keys the hooks are NULL: a
v1 ball.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.signing import TrustedKey

from .. import gate_probe
from ..make_image import image_version
from .c_core import (
    ED25519_VERIFY,
    ERASE,
    EV_ACCEPTED,
    EV_COMMAND,
    EV_CONFIRMED,
    EV_ERASED,
    EV_HANDLED,
    EV_STAGED,
    EV_VERIFIED,
    EVENT,
    FLASH_DEFERRED,
    HEAD_SIZE,
    MAX_KEYS,
    NOTIFY,
    NOW,
    PERSIST,
    PERSIST_CONFIRMED,
    PERSIST_SIGNED,
    READ,
    RESET,
    SHA_FINAL,
    SHA_INIT,
    SHA_UPDATE,
    WRITE,
    Config,
    Hal,
    load,
)
from .flash import PAGE_SIZE, Flash
from .signed import SignedBootloader
from .types import (
    FirmwareEvent,
    FirmwareEventKind,
    FlashTimings,
    StoredImage,
    _PendingRecord,
    to_us,
)

log = logging.getLogger("smartball_sim.c_firmware")

#: The verify's steps run in batches of about this much virtual time per loop turn.
_VERIFY_BATCH_US = 1000
_TX_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class CSession:
    """The C core's session as MSG_OTA_STATUS reports it."""

    state: p.OtaState
    next_offset: int
    image_size: int
    image_crc32: int


class _Head(ctypes.Structure):
    """The start of ``sb_core_t``: its HAL pointer and configuration (smartball_core.h)."""

    _fields_ = [("hal", ctypes.c_void_p), ("cfg", Config)]


class CFirmware:
    """The C core behind the interface :class:`~smartball_sim.device.SimDevice` uses."""

    def __init__(
        self,
        *,
        library: Path,
        active_image: bytes,
        version: tuple[int, int, int] = (1, 0, 0),
        staging_capacity: int,
        window: int = 16,
        timings: FlashTimings | None = None,
        progressive_erase: bool = False,
        send: Callable[[bytes], None] = lambda frame: None,
        request_reset: Callable[[], None] = lambda: None,
        observe: Callable[[FirmwareEvent], None] = lambda event: None,
        when_sent: Callable[[Callable[[], None]], None] | None = None,
        trusted_keys: Sequence[TrustedKey] = (),
        security_counter: int = 0,
    ) -> None:
        if len(trusted_keys) > MAX_KEYS:
            raise ValueError(f"the C core holds at most {MAX_KEYS} trusted keys")
        self._lib = load(library)
        self.active = StoredImage(bytes(active_image), version)
        self.staging_capacity = staging_capacity
        self.window = window
        self.timings = timings or FlashTimings()
        self._progressive_erase = progressive_erase
        self.flash = Flash(staging_capacity)
        self._send = send
        self._request_reset = request_reset
        self._observe = observe
        self._when_sent = when_sent or (lambda callback: callback())
        self.boot_count = 1
        # Signed updates: the provisioning and the platform's records (SignedBootloader).
        self.trusted_keys = tuple(trusted_keys)
        self.bugs: frozenset[Any] = frozenset()  # the bootloader's bug switches: none
        #: The second verify, the swap, TEST and the revert (its flip-staged faults are
        #: consumed when the core starts the verify, SB_EV_STAGED).
        self.bootloader = SignedBootloader(self, security_counter)
        self._sha: Any = None  # the SHA-256 under way (the HAL's one context)
        self.commands_seen: dict[int, int] = {}
        self._pending: _PendingRecord | None = None
        self._epoch = 0
        self._busy = False
        self._effects: list[Callable[[], None]] = []
        self._waiting: deque[Callable[[], None]] = deque()
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._op_at_us: int | None = None
        self._verify_read = 0
        self._verifying_now = False
        self._polling = False
        self._done_sent = False
        self._hal = Hal(
            None,
            ERASE(self._erase),
            WRITE(self._write),
            READ(self._read),
            NOW(lambda _ctx: self._now_us()),
            NOTIFY(self._notify),
            PERSIST(self._persist),
            RESET(self._reset),
            EVENT(self._event),
            *self._signed_hooks(),
        )
        self._core = ctypes.create_string_buffer(self._lib.sb_core_size())
        self._boot()

    # --- what the device and the tests read ----------------------------------------------

    @property
    def progressive_erase(self) -> bool:
        return self._progressive_erase

    @progressive_erase.setter
    def progressive_erase(self, on: bool) -> None:
        gate_probe.sim_reconfigured(f"progressive_erase={on}")
        self._progressive_erase = on
        _Head.from_buffer(self._core).cfg.progressive_erase = int(on)

    def session_window(self, progressive: bool, max_chunk: int) -> int:
        """The window READY grants: the C core grants its one window in either mode."""
        return self.window

    @property
    def signed_only(self) -> bool:
        return bool(self.trusted_keys)

    @property
    def capabilities(self) -> p.Capability:
        caps = p.Capability.PROGRESSIVE_ERASE if self.progressive_erase else p.Capability.NONE
        return caps | p.Capability.SIGNED_IMAGES if self.signed_only else caps

    @property
    def image_state(self) -> p.ImageState:
        """The running image's state as the core holds it (RAM)."""
        return p.ImageState(_Head.from_buffer(self._core).cfg.image_state)

    @property
    def security_counter(self) -> int:
        return int(_Head.from_buffer(self._core).cfg.security_counter)

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
            capabilities=self.capabilities,
            security_counter=self.security_counter if self.signed_only else 0,
            image_state=self.image_state if self.signed_only else 0,
            trusted_key_id=self.trusted_keys[0].key_id if self.signed_only else 0,
        )

    def _status(self) -> CSession:
        out = (ctypes.c_uint32 * 4)()
        self._lib.sb_status(self._core, out)
        return CSession(p.OtaState(out[0]), out[1], out[2], out[3])

    @property
    def state(self) -> p.OtaState:
        return self._status().state

    @property
    def session(self) -> CSession | None:
        s = self._status()
        return s if s.state not in (p.OtaState.IDLE, p.OtaState.ERROR) else None

    def status(self) -> p.MsgOtaStatus:
        s = self._status()
        return p.MsgOtaStatus(s.state, s.next_offset, s.image_size, s.image_crc32)

    def staged_bytes(self) -> bytes:
        return self.flash.read(0, self._status().image_size)

    # --- what the device calls --------------------------------------------------------

    def receive(self, data: bytes) -> None:
        self._bind_loop()
        self._call(lambda: self._lib.sb_rx(self._core, data, len(data)))

    def link_lost(self) -> None:
        self._call(lambda: self._lib.sb_link_lost(self._core))

    def power_cycle(self) -> float:
        """Reset: the core's RAM and everything scheduled go; the bootloader switches to a
        pending image whose CRC checks out. Returns the bootloader's time."""
        self._epoch += 1
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._effects.clear()
        self._waiting.clear()
        self._op_at_us = None
        self._polling = False
        self.boot_count += 1
        self._sha = None
        seconds = 0.0
        if self.signed_only:
            seconds = self.bootloader.boot()
        elif self._pending is not None:
            size, crc = self._pending.image_size, self._pending.image_crc32
            self._pending = None
            staged = self.flash.read(0, size)
            if p.crc32(staged) == crc:
                log.info("boot: switching to the new image (%d bytes, crc32 %08x)", size, crc)
                self.active = StoredImage(staged, image_version(staged))
                seconds = self.timings.activation_s(size)
            else:
                seconds = self.timings.verify_s_per_byte * size
        self._boot()
        return seconds

    # --- the core's life ----------------------------------------------------------------

    def _boot(self) -> None:
        st = self.bootloader.signed
        cfg = Config(
            self.window,
            self.timings.rx_buffer_chunks or 0,
            self.staging_capacity,
            int(self._progressive_erase),
            (ctypes.c_uint8 * 3)(*self.active.version),
            len(self.active.data),
            self.active.crc32,
            st.security_counter,
            int(st.image_state),
            len(self.trusted_keys),
            (ctypes.c_uint32 * MAX_KEYS)(*(k.key_id for k in self.trusted_keys)),
            st.test_manifest.security_counter if st.test_manifest else 0,
        )
        self._done_sent = False
        if self._lib.sb_init(self._core, ctypes.byref(self._hal), ctypes.byref(cfg)) != 0:
            raise ValueError(
                f"the C core refused window {self.window} (it was built for fewer; "
                "rebuild it with a larger SB_MAX_WINDOW)"
            )

    def _bind_loop(self) -> None:
        """A new event loop (the next test's): what was scheduled on the old one is lost,
        so the device resets, as the Python model does."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._loop is not loop:
            stale = self._loop is not None and bool(self._timers)
            self._loop = loop
            if stale:
                log.info("a new event loop: the work scheduled on the old one is lost; reset")
                self.power_cycle()

    def _now_us(self) -> int:
        try:
            return to_us(asyncio.get_running_loop().time())
        except RuntimeError:
            return 0

    def _at(self, when_us: int, action: Callable[[], None]) -> None:
        epoch = self._epoch
        handles: list[asyncio.TimerHandle] = []

        def run() -> None:
            self._timers.difference_update(handles)
            if epoch == self._epoch:
                action()

        loop = asyncio.get_running_loop()
        self._loop = loop
        handles.append(loop.call_at(when_us / 1_000_000, run))
        self._timers.update(handles)

    def _call(self, action: Callable[[], None]) -> None:
        """Run a call into the core, then carry out what it did; one call at a time."""
        self._waiting.append(action)
        if self._busy:
            return
        self._busy = True
        try:
            while self._waiting:
                epoch = self._epoch
                self._waiting.popleft()()
                while self._effects and epoch == self._epoch:
                    self._effects.pop(0)()
                self._effects.clear()
        finally:
            self._busy = False
        self._schedule_work()

    def _schedule_work(self) -> None:
        status = self._status()
        if status.state == p.OtaState.VERIFYING and not self._polling:
            self._polling = True
            self._at(self._now_us(), self._verify_batch)
        if status.state == p.OtaState.COMPLETE and self._done_sent:
            self._done_sent = False
            epoch = self._epoch

            def sent() -> None:
                if epoch == self._epoch:
                    self._call(lambda: self._lib.sb_tx_complete(self._core))
                    self._call(self._poll_once)

            self._when_sent(sent)
            self._at(self._now_us() + to_us(_TX_WAIT_S), lambda: self._call(self._poll_once))

    def _poll_once(self) -> None:
        self._lib.sb_poll(self._core)

    def _verify_batch(self) -> None:
        """Verify steps worth about a millisecond, then the radio's turn. ``_polling``
        stays set while a batch runs or is scheduled: one batch at a time."""
        self._verify_read = 0
        per_byte = self.timings.verify_s_per_byte
        if self._sha is not None:
            per_byte += self.timings.hash_s_per_byte  # and the SHA-256 of the same read
        per_byte_us = per_byte * 1_000_000
        more = True

        def steps() -> None:
            nonlocal more
            self._verifying_now = True
            try:
                while more and self._verify_read * per_byte_us < _VERIFY_BATCH_US:
                    more = bool(self._lib.sb_poll(self._core))
            finally:
                self._verifying_now = False

        epoch = self._epoch
        self._call(steps)
        if epoch != self._epoch:
            return  # the device reset meanwhile
        if more and self._status().state == p.OtaState.VERIFYING:
            spent = max(1, round(self._verify_read * per_byte_us))
            self._at(self._now_us() + spent, self._verify_batch)
        else:
            self._polling = False

    # --- the HAL --------------------------------------------------------------------------

    def _pages(self) -> int:
        return -(-self._status().image_size // PAGE_SIZE)

    def _erase(self, _ctx: Any, page: int) -> int:
        """A page erase stalls for ``page_stall_s``; in field mode (``erase_total_s``) the
        rest of the page's share is idle time before it, the firmware yielding to the radio,
        during which the core goes on handling commands (SB_FLASH_DEFERRED). That share is
        the erase before READY's: a progressive session's page erase (in RECEIVING) is its
        stall alone, as in the model (else it holds an owed ACK for seconds)."""
        pages = self._pages()
        stall = to_us(self.timings.page_stall_s(pages))
        idle = to_us(self.timings.page_erase_time(pages)) - stall
        if self._status().state is not p.OtaState.ERASING:
            idle = 0

        def done() -> None:
            self._op_at_us = None
            ok = self.flash.erase_page(page)
            self._call(lambda: self._lib.sb_flash_done(self._core, int(ok)))

        def started() -> None:
            self._call(lambda: self._lib.sb_flash_started(self._core))
            self._op_at_us = self._now_us() + stall
            self._at(self._op_at_us, done)

        if idle > 0:
            self._at(self._now_us() + idle, started)
            return FLASH_DEFERRED
        self._op_at_us = self._now_us() + stall
        self._at(self._op_at_us, done)
        return 0

    def _write(self, _ctx: Any, offset: int, words: int, n_words: int) -> int:
        data = ctypes.string_at(words, n_words * 4)
        duration = to_us(self.timings.write_time(len(data)))

        def done() -> None:
            self._op_at_us = None
            ok = self.flash.write_words(offset, data)
            self._call(lambda: self._lib.sb_flash_done(self._core, int(ok)))

        self._op_at_us = self._now_us() + duration
        self._at(self._op_at_us, done)
        return 0

    def _read(self, _ctx: Any, offset: int, out: int, size: int) -> None:
        ctypes.memmove(out, self.flash.read(offset, size), size)
        if self._verifying_now:  # the verify reading the staged image back
            self._verify_read += size

    def _notify(self, _ctx: Any, frame: int, size: int) -> None:
        data = ctypes.string_at(frame, size)
        if data[1] == p.MsgType.MSG_OTA_DONE:
            self._done_sent = True
        self._effects.append(lambda: self._send(data))

    def _persist(self, _ctx: Any, size: int, crc: int) -> int:
        def persist() -> None:
            self._pending = _PendingRecord(size, crc)

        self._effects.append(persist)
        return 0

    # --- the HAL's signed part: the platform's crypto and records --------------------------

    def _signed_hooks(self) -> tuple[Any, ...]:
        """The six hooks of a signed-only ball; none (NULL) for a v1 ball."""
        if not self.signed_only:
            return ()
        return (
            SHA_INIT(self._sha_init),
            SHA_UPDATE(self._sha_update),
            SHA_FINAL(self._sha_final),
            ED25519_VERIFY(self._ed25519_verify),
            PERSIST_SIGNED(self._persist_signed),
            PERSIST_CONFIRMED(self._persist_confirmed),
        )

    def _sha_init(self, _ctx: Any) -> None:
        self._sha = hashlib.sha256()

    def _sha_update(self, _ctx: Any, data: int, size: int) -> None:
        self._sha.update(ctypes.string_at(data, size))

    def _sha_final(self, _ctx: Any, out: int) -> None:
        ctypes.memmove(out, self._sha.digest(), 32)
        self._sha = None

    def _ed25519_verify(self, _ctx: Any, key_id: int, msg: int, size: int, sig: int) -> int:
        for key in self.trusted_keys:
            if key.key_id == key_id:
                try:
                    key.public.verify(ctypes.string_at(sig, 64), ctypes.string_at(msg, size))
                except InvalidSignature:
                    return 1
                return 0
        return 1

    def _persist_signed(self, _ctx: Any, size: int, crc: int, head: int) -> int:
        record = _PendingRecord(size, crc, ctypes.string_at(head, HEAD_SIZE))

        def persist() -> None:
            self._pending = record

        self._effects.append(persist)
        return 0

    def _persist_confirmed(self, _ctx: Any, counter: int) -> int:
        def persist() -> None:  # one record: the image state and the counter together
            self.bootloader.signed.image_state = p.ImageState.CONFIRMED
            self.bootloader.signed.test_manifest = None
            self.bootloader.signed.security_counter = counter

        self._effects.append(persist)
        return 0

    def _reset(self, _ctx: Any) -> None:
        self._effects.append(self._request_reset)

    def _event(self, _ctx: Any, kind: int, type_: int, a: int, b: int) -> None:
        if kind == EV_COMMAND:

            def command() -> None:
                self.commands_seen[type_] = self.commands_seen.get(type_, 0) + 1
                self._observe(FirmwareEvent(FirmwareEventKind.COMMAND, type_))

            self._effects.append(command)
        elif kind == EV_HANDLED:
            event = FirmwareEvent(FirmwareEventKind.HANDLED, type_)
            self._effects.append(lambda: self._observe(event))
        elif kind == EV_ERASED:
            event = FirmwareEvent(FirmwareEventKind.ERASE_PROGRESS, done=a, total=b)
            self._effects.append(lambda: self._observe(event))
        elif kind == EV_ACCEPTED:
            event = FirmwareEvent(FirmwareEventKind.DATA_ACCEPTED, offset=a, total=b)
            self._effects.append(lambda: self._observe(event))
        elif kind == EV_STAGED:
            self._effects.append(lambda: self._staged(a))
        elif kind in (EV_VERIFIED, EV_CONFIRMED):
            what = FirmwareEventKind.SIGNED_VERIFIED if kind == EV_VERIFIED else None
            event = FirmwareEvent(what or FirmwareEventKind.CONFIRMED)
            self._effects.append(lambda: self._observe(event))

    def _staged(self, size: int) -> None:
        """Every byte is in flash and the verify starts: a ``flip-staged`` fault acts now,
        before the core reads the image back (as in the model)."""
        self._observe(FirmwareEvent(FirmwareEventKind.STAGED, total=size))
        self.bootloader.flip_queued(size)

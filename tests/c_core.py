"""The C reference core (``firmware/``) loaded through ctypes, and the virtual-time harness
that replays ``vectors/device.json`` against it (docs/firmware.md, "The vector replay").

The harness plays the platform behind the core's HAL: a mock staging flash with the
vector's timings (a page erase completes 85 ms after it starts, a write 41 us per word, a
failed operation leaves the flash as it was and reports failure), a clock, the radio
(every notification leaves at once, then ``sb_tx_complete``) and the bootloader (after a
reset with a pending record whose CRC checks out, the staged image becomes the active one,
its version read from its descriptor; on a signed-only device, the simulator's bootloader
of section 16.4, :class:`~smartball_sim.firmware.signed.SignedBootloader`, on a copy of
the flash). The HAL's crypto is ``hashlib`` and ``cryptography``. The verify's time is
charged per byte the core reads back while it verifies, so a verify of ``image_size``
bytes takes the vector's ``verify_s_per_byte * image_size`` in the core's steps.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from smartball_sim.firmware.c_core import (
    ED25519_VERIFY,
    ERASE,
    EV_HANDLED,
    EVENT,
    HEAD_SIZE,
    LIB_ENV,
    MAX_KEYS,
    NOTIFY,
    NOW,
    PAGE,
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
    MissingCompiler,
    build_library,
    load,
)
from smartball_sim.firmware.flash import Flash
from smartball_sim.firmware.signed import SignedBootloader, SignedState
from smartball_sim.firmware.types import FlashTimings, StoredImage, _PendingRecord
from smartball_sim.make_image import image_version

__all__ = [
    "LIB_ENV",
    "MAX_KEYS",
    "PAGE",
    "Config",
    "Hal",
    "MissingCompiler",
    "Replay",
    "build_library",
    "decode",
    "load",
]


class DecoderStruct(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_uint8 * 518),
        ("len", ctypes.c_uint16),
        ("has_last", ctypes.c_uint8),
        ("last_us", ctypes.c_uint64),
        ("frames", ctypes.c_uint32),
        ("dropped_bytes", ctypes.c_uint32),
        ("bad_crc", ctypes.c_uint32),
        ("bad_length", ctypes.c_uint32),
    ]


_ON_FRAME = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint8, ctypes.POINTER(ctypes.c_uint8), ctypes.c_uint16
)


def decode(lib: ctypes.CDLL, vector: dict[str, Any]) -> dict[str, Any]:
    """A decoder.json vector fed to the C decoder: its frames, stats and buffered bytes."""
    dec = DecoderStruct()
    frames: list[dict[str, str]] = []

    def on_frame(_arg: int, type_: int, payload: Any, n: int) -> None:
        frames.append({"type": _type_name(type_), "payload": bytes(payload[:n]).hex(" ")})

    callback = _ON_FRAME(on_frame)
    lib.sb_decoder_feed.argtypes = [
        ctypes.POINTER(DecoderStruct),
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_uint64,
        _ON_FRAME,
        ctypes.c_void_p,
    ]
    lib.sb_decoder_reset.argtypes = [ctypes.POINTER(DecoderStruct)]
    drop_at = vector.get("link_drop_at_s")
    for piece in vector["input"]:
        if drop_at is not None and piece["at_s"] >= drop_at:
            lib.sb_decoder_reset(ctypes.byref(dec))
            drop_at = None
        data = bytes.fromhex(piece["hex"])
        now_us = round(piece["at_s"] * 1_000_000)
        lib.sb_decoder_feed(ctypes.byref(dec), data, len(data), 1, now_us, callback, None)
    if drop_at is not None:
        lib.sb_decoder_reset(ctypes.byref(dec))
    return {
        "frames": frames,
        "stats": {
            "frames": dec.frames,
            "dropped_bytes": dec.dropped_bytes,
            "bad_crc": dec.bad_crc,
            "bad_length": dec.bad_length,
        },
        "buffered": dec.len,
    }


def _type_name(type_: int) -> str:
    try:
        return p.MsgType(type_).name
    except ValueError:
        return f"0x{type_:02X}"


STATES = ["IDLE", "ERASING", "RECEIVING", "VERIFYING", "COMPLETE", "ERROR"]


class Bootloader:
    """A signed-only device's bootloader and persisted records, the simulator's own (the
    second verify, the swap, TEST and the revert), over a copy of the replay's flash."""

    def __init__(self, capacity: int, active: StoredImage, counter: int) -> None:
        self.trusted_keys: tuple[signing.TrustedKey, ...] = (signing.test_trusted_key(),)
        self.active = active
        self.timings = FlashTimings()
        self.flash = Flash(capacity)
        self.bugs: frozenset[Any] = frozenset()
        self.boot_count = 1
        self._pending: _PendingRecord | None = None
        self.loader = SignedBootloader(self, counter)

    def boot(self, flash: bytearray, pending: _PendingRecord | None) -> None:
        self._pending = pending
        self.flash.overwrite(0, bytes(flash))
        self.loader.boot()
        flash[:] = self.flash.read(0, len(flash))

    def verify(self, key_id: int, msg: bytes, sig: bytes) -> int:
        for key in self.trusted_keys:
            if key.key_id == key_id:
                try:
                    key.public.verify(sig, msg)
                except InvalidSignature:
                    return 1
                return 0
        return 1


@dataclass
class StepResult:
    handled: list[dict[str, str]] = field(default_factory=list)
    out: list[dict[str, Any]] = field(default_factory=list)
    state: str = ""


class Replay:
    """One device.json vector's device: the C core on a virtual clock (nanoseconds)."""

    def __init__(self, lib: ctypes.CDLL, device: dict[str, Any]) -> None:
        self.lib = lib
        self.device = device
        flash = device["flash"]
        self.erase_ns = round(flash["erase_page_s"] * 1e9)
        self.write_word_ns = round(flash["write_word_s"] * 1e9)
        self.verify_ns_per_byte = flash["verify_s_per_byte"] * 1e9
        capacity = device["staging_capacity"]
        # A bank that starts non-blank (section 12, staging_fill) holds an old image.
        fill = flash.get("staging_fill", 0xFF)
        self.flash = bytearray(bytes([fill]) * (-(-capacity // PAGE) * PAGE))
        self.writes = bytearray(len(self.flash) // 4)
        image = device["active_image"]
        # The runner's active image (smartball_sim.contract_vectors.runner.DeviceConfig).
        self.active = bytes(range(256)) * 12
        assert len(self.active) == image["size"] and f"{p.crc32(self.active):08x}" == image["crc32"]
        self.version = tuple(image["version"])
        self.now_ns = 0
        self.fail_next = 0
        #: Operations that fail silently (reported done, flash untouched: the NVMC reports
        #: nothing, only the core's read-back finds out), and that refuse to start.
        self.silent_fail_next = 0
        self.refuse_next = 0
        self.persist_ok = True
        self.confirm_ok = True
        self.op_done_at: int | None = None
        #: What the operation under way does to the flash, carried out when it completes
        #: (so a flash_fail_next given meanwhile applies to it, as in the model).
        self.op_effect: Callable[[], None] = lambda: None
        self.op_ok = True
        self.pending: _PendingRecord | None = None
        signed = device.get("signed_only")
        #: A signed-only device's bootloader and records (None: a v1 device).
        self.boot: Bootloader | None = None
        self.sha: Any = None
        if signed is not None:
            key_ids = [int(k, 16) for k in signed["trusted_key_ids"]]
            assert key_ids == [signing.test_trusted_key().key_id], key_ids
            self.boot = Bootloader(
                len(self.flash),
                StoredImage(self.active, self.version),
                signed["security_counter"],
            )
        self.tx_pending = False
        self.reset_requested = False
        self.in_poll = False
        self.more_work = False
        self.out: list[dict[str, Any]] = []
        self.handled: list[dict[str, str]] = []
        self._decoder = p.FrameDecoder()
        self.hal = Hal(
            None,
            ERASE(self._erase),
            WRITE(self._write),
            READ(self._read),
            NOW(lambda _ctx: self.now_ns // 1000),
            NOTIFY(self._notify),
            PERSIST(self._persist),
            RESET(self._reset),
            EVENT(self._event),
            *self._signed_hooks(),
        )
        self.core = ctypes.create_string_buffer(lib.sb_core_size())
        self._boot()

    # --- the platform ------------------------------------------------------------------

    def _signed_hooks(self) -> tuple[Any, ...]:
        if self.boot is None:
            return ()
        boot = self.boot

        def final(_ctx: Any, out: int) -> None:
            ctypes.memmove(out, self.sha.digest(), 32)

        def persist(_ctx: Any, size: int, crc: int, head: int) -> int:
            if not self.persist_ok:
                self.persist_ok = True  # one failed persist, as the v1 record's
                return -1
            self.pending = _PendingRecord(size, crc, ctypes.string_at(head, HEAD_SIZE))
            return 0

        def confirmed(_ctx: Any, counter: int) -> int:
            if not self.confirm_ok:
                return -1
            boot.loader.signed.image_state = p.ImageState.CONFIRMED
            boot.loader.signed.test_manifest = None
            boot.loader.signed.security_counter = counter
            return 0

        return (
            SHA_INIT(lambda _ctx: setattr(self, "sha", hashlib.sha256())),
            SHA_UPDATE(lambda _ctx, data, n: self.sha.update(ctypes.string_at(data, n))),
            SHA_FINAL(final),
            ED25519_VERIFY(
                lambda _ctx, key, msg, n, sig: boot.verify(
                    key, ctypes.string_at(msg, n), ctypes.string_at(sig, 64)
                )
            ),
            PERSIST_SIGNED(persist),
            PERSIST_CONFIRMED(confirmed),
        )

    def _boot(self) -> None:
        st = self.boot.loader.signed if self.boot else SignedState()
        cfg = Config(
            self.device["window"],
            self.device["flash"]["rx_buffer_chunks"],
            self.device["staging_capacity"],
            int(self.device["progressive_erase"]),
            (ctypes.c_uint8 * 3)(*self.version),
            len(self.active),
            p.crc32(self.active),
            st.security_counter,
            int(st.image_state),
            1 if self.boot else 0,
            (ctypes.c_uint32 * MAX_KEYS)(*(k.key_id for k in self.boot.trusted_keys))
            if self.boot
            else (ctypes.c_uint32 * MAX_KEYS)(),
            st.test_manifest.security_counter if st.test_manifest else 0,
        )
        self.op_done_at = None
        self.tx_pending = self.reset_requested = self.more_work = False
        if self.lib.sb_init(self.core, ctypes.byref(self.hal), ctypes.byref(cfg)) != 0:
            raise ValueError(f"the C core refused the configuration {self.device}")

    def power_cycle(self) -> None:
        """A reset: the bootloader switches to a pending image whose CRC checks out."""
        if self.boot is not None:
            self.boot.boot(self.flash, self.pending)
            self.active, self.version = self.boot.active.data, self.boot.active.version
            self.pending = None
        elif self.pending is not None:
            size, crc = self.pending.image_size, self.pending.image_crc32
            staged = bytes(self.flash[:size])
            if p.crc32(staged) == crc:
                self.active = staged
                self.version = image_version(staged)
            self.pending = None
        self._boot()

    def _fails(self) -> bool:
        """Whether this operation fails (and leaves the flash as it was); ``op_ok`` is what
        the platform reports about it."""
        self.op_ok = True
        if self.fail_next:
            self.fail_next -= 1
            self.op_ok = False
            return True
        if self.silent_fail_next:
            self.silent_fail_next -= 1
            return True
        return False

    def _refuses(self) -> bool:
        if self.refuse_next:
            self.refuse_next -= 1
            return True
        return False

    def _erase(self, _ctx: Any, page: int) -> int:
        assert self.op_done_at is None, "the core started a second flash operation"
        if self._refuses():
            return -1
        self.op_done_at = self.now_ns + self.erase_ns
        self.op_effect = lambda: self._erased(page)
        return 0

    def _erased(self, page: int) -> None:
        if not self._fails():
            self.flash[page * PAGE : (page + 1) * PAGE] = b"\xff" * PAGE
            self.writes[page * PAGE // 4 : (page + 1) * PAGE // 4] = bytes(PAGE // 4)

    def _write(self, _ctx: Any, offset: int, words: int, n_words: int) -> int:
        assert self.op_done_at is None, "the core started a second flash operation"
        assert offset % 4 == 0, f"write at {offset}: not word aligned"
        if self._refuses():
            return -1
        data = ctypes.string_at(words, n_words * 4)  # the core keeps it until done
        self.op_done_at = self.now_ns + n_words * self.write_word_ns
        self.op_effect = lambda: self._written(offset, data)
        return 0

    def _written(self, offset: int, data: bytes) -> None:
        for w in range(offset // 4, (offset + len(data)) // 4):
            assert self.writes[w] < 2, f"word at {w * 4} written a third time since its erase"
        if not self._fails():
            for i, byte in enumerate(data):
                self.flash[offset + i] &= byte
            for w in range(offset // 4, (offset + len(data)) // 4):
                self.writes[w] += 1

    def _read(self, _ctx: Any, offset: int, out: int, size: int) -> None:
        ctypes.memmove(out, bytes(self.flash[offset : offset + size]), size)
        if self.in_poll:  # the verify reading the staged image back
            self.now_ns += round(size * self.verify_ns_per_byte)

    def _notify(self, _ctx: Any, frame: int, size: int) -> None:
        for f in self._decoder.feed(ctypes.string_at(frame, size)):
            msg = p.parse_message(f)
            entry: dict[str, Any] = {"t": self.now_ns / 1e9, "type": msg.TYPE.name}
            if isinstance(msg, p.MsgError):
                entry["code"] = msg.code_name
                entry["command"] = _type_name(msg.command)
            else:
                entry["hex"] = p.encode(msg).hex(" ")
            self.out.append(entry)
        self.tx_pending = True

    def _persist(self, _ctx: Any, size: int, crc: int) -> int:
        if not self.persist_ok:
            self.persist_ok = True
            return -1
        self.pending = _PendingRecord(size, crc)
        return 0

    def _reset(self, _ctx: Any) -> None:
        self.out.append({"t": self.now_ns / 1e9, "event": "reset"})
        self.reset_requested = True

    def _event(self, _ctx: Any, kind: int, type_: int, a: int, _b: int) -> None:
        if kind == EV_HANDLED:
            self.handled.append({"command": _type_name(type_), "state": STATES[a]})

    # --- time ----------------------------------------------------------------------------

    def _settle(self) -> None:
        """What the platform does at once: the radio's TX complete, the reset."""
        if self.reset_requested:
            self.reset_requested = False
            if self.device["resets_when_asked"]:
                self.power_cycle()
        if self.tx_pending:
            self.tx_pending = False
            self.lib.sb_tx_complete(self.core)
            self.more_work = True

    def run_until(self, target_ns: int) -> None:
        for _ in range(10_000_000):
            self._settle()
            deadline = self.lib.sb_next_deadline_us(self.core) * 1000 or None
            due = [t for t in (self.op_done_at, deadline) if t is not None]
            nxt = min(due) if due else None
            if self.more_work and self.now_ns < target_ns and (nxt is None or self.now_ns < nxt):
                self.in_poll = True
                try:
                    self.more_work = bool(self.lib.sb_poll(self.core))
                finally:
                    self.in_poll = False
                continue
            if nxt is not None and nxt <= target_ns:
                self.now_ns = max(self.now_ns, nxt)
                if nxt == self.op_done_at:
                    self.op_done_at = None
                    self.op_effect()
                    self.lib.sb_flash_done(self.core, int(self.op_ok))
                self.more_work = True
                continue
            self.now_ns = max(self.now_ns, target_ns)
            return
        raise AssertionError("the replay did not settle: the core keeps asking for work")

    def apply(self, step: dict[str, Any]) -> None:
        self.now_ns = max(self.now_ns, round(step["at_s"] * 1e9))
        if step.get("flash_fail_next"):
            self.fail_next = step["flash_fail_next"]
        if step.get("persist_fails"):
            self.persist_ok = False  # the next persist only
        if step.get("link_lost"):
            self.lib.sb_link_lost(self.core)
        if step.get("reset"):
            self.power_cycle()
        if "in" in step:
            data = bytes.fromhex(step["in"])
            self.lib.sb_rx(self.core, data, len(data))
        self.more_work = True

    def state(self) -> str:
        return STATES[self.lib.sb_state(self.core)]


def replay(lib: ctypes.CDLL, vector: dict[str, Any]) -> list[StepResult]:
    """Each step: apply its input at at_s, run until the next step's at_s (the last: until_s);
    what was sent meanwhile is the step's ``out``, the state then its ``state``."""
    run = Replay(lib, vector["device"])
    steps = vector["steps"]
    results = []
    for i, step in enumerate(steps):
        end_s = steps[i + 1]["at_s"] if i + 1 < len(steps) else vector["until_s"]
        out_before, handled_before = len(run.out), len(run.handled)
        run.apply(step)
        run.run_until(round(end_s * 1e9))
        results.append(StepResult(run.handled[handled_before:], run.out[out_before:], run.state()))
    return results


def comparable(
    out: list[dict[str, Any]], repeated_acks_once: bool = False
) -> list[tuple[Any, ...]]:
    """What §12 compares: MSG_ERROR by code and command, the rest byte for byte, events.
    ``repeated_acks_once``: within one step's output, an ACK of the offset the step's last
    ACK already gave is left out: §7.4 lets two ACKs owed for the same offset go once or
    twice and a host takes the repeat as granting nothing new (the model sends both, the C
    core one; a resume's READY may come between them; docs/firmware.md). Across steps
    nothing is left out, so a STATUS's own ACK is still compared."""
    result: list[tuple[Any, ...]] = []
    last_ack: str | None = None
    for e in out:
        if "event" in e:
            item: tuple[Any, ...] = ("event", e["event"])
        elif e["type"] == "MSG_ERROR":
            item = (e["type"], e["code"], e["command"])
        else:
            item = (e["type"], e["hex"])
        if repeated_acks_once and item[0] == "MSG_OTA_ACK":
            if item[1] == last_ack:
                continue
            last_ack = item[1]
        result.append(item)
    return result


def vector_failure(
    lib: ctypes.CDLL, vector: dict[str, Any], repeated_acks_once: bool = False
) -> str | None:
    """None if the C core reproduces the vector, else the first difference in a sentence."""
    results = replay(lib, vector)
    for i, (want, got) in enumerate(zip(vector["steps"], results, strict=True)):
        wanted = comparable(want["out"], repeated_acks_once)
        sent = comparable(got.out, repeated_acks_once)
        if wanted != sent:
            return f"{vector['name']} step {i} (at {want['at_s']} s): sent {sent}, wants {wanted}"
        if want["handled"] != got.handled:
            return f"{vector['name']} step {i}: handled {got.handled}, wants {want['handled']}"
        if want["state"] != got.state:
            return f"{vector['name']} step {i}: state {got.state}, the vector wants {want['state']}"
    return None

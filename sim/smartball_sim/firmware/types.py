"""The firmware model's data: flash timings, what it reports to its observer, images, the
update session and the flash jobs it queues, and whole-microsecond time (:func:`to_us`)."""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import Manifest

from .flash import PAGE_SIZE

_US = 1_000_000


def to_us(seconds: float) -> int:
    """Seconds as whole microseconds: the unit every time comparison in the simulator uses."""
    return round(seconds * _US)


@dataclass(frozen=True, slots=True)
class FlashTimings:
    """Flash timings; defaults from the nRF52840 Product Specification v1.7, section 4.3.9."""

    #: t_ERASEPAGE: 85 ms typical per 4 KB page. The CPU stalls for it.
    erase_page_s: float = 0.085
    #: When set, the whole erase takes this long whatever the image size (field mode: the
    #: field's firmware took 15-40 s, yielding to the radio between pages). Each page still
    #: stalls the CPU for ``erase_page_s`` at most; the rest of its share is idle time.
    erase_total_s: float | None = None
    #: t_WRITE: 41 us per 32-bit word (max). A 232-byte chunk takes 2.4 ms: about 97 kB/s,
    #: faster than the default radio (65 kB/s), slower than a 7.5 ms LE 2M link.
    write_word_s: float = 41e-6
    #: Received chunks the device can hold while the flash is busy; None: the READY window,
    #: so a host that keeps to its ACK credit never overflows it. Smaller values make the
    #: device drop DATA when full (answered like a wrong offset: the host rewinds).
    rx_buffer_chunks: int | None = None
    #: CRC-32 over flash read back (about 20 MB/s on a 64 MHz M4).
    verify_s_per_byte: float = 1 / 20_000_000
    #: SHA-256 over flash read back (signed updates; the CryptoCell-310 does about
    #: 10 MB/s, its own figure; software on the M4 about 1 MB/s).
    hash_s_per_byte: float = 1 / 10_000_000

    def page_erase_time(self, pages: int) -> float:
        """One page's share of the erase: its stall plus, in field mode, the idle time."""
        if self.erase_total_s is not None and pages:
            return self.erase_total_s / pages
        return self.erase_page_s

    def page_stall_s(self, pages: int) -> float:
        return min(self.erase_page_s, self.page_erase_time(pages))

    def write_time(self, size: int) -> float:
        return math.ceil(size / p.WORD_SIZE) * self.write_word_s

    def activation_s(self, image_size: int) -> float:
        """The bootloader's work after a reset with a verified image pending: verify the
        staging bank, erase the active bank's pages, copy, verify the copy."""
        pages = math.ceil(image_size / PAGE_SIZE)
        verify = image_size * self.verify_s_per_byte
        return 2 * verify + pages * self.erase_page_s + self.write_time(image_size)


class FirmwareEventKind(enum.StrEnum):
    """What the firmware reports to its observer (fault triggers, the device log)."""

    COMMAND = "command"  # a whole frame arrived, before it is handled
    HANDLED = "handled"  # ... and once it is (replies sent, state changed)
    ERASE_PROGRESS = "erase_progress"  # a staging page was erased (both erase modes)
    READY = "ready"
    DATA_ACCEPTED = "data_accepted"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"
    FLASH_ERROR = "flash_error"
    #: Signed updates: every byte of the image is in flash (before FINISH's verify).
    STAGED = "staged"
    #: ... the staged image passed its CRC-32 and SHA-256, PENDING not yet persisted.
    SIGNED_VERIFIED = "signed_verified"
    #: ... CMD_OTA_CONFIRM persisted the confirm and the counter; INFO not yet sent.
    CONFIRMED = "confirmed"


@dataclass(frozen=True, slots=True)
class FirmwareEvent:
    """What the firmware did, for fault triggers and the device log."""

    kind: FirmwareEventKind
    msg_type: int | None = None
    offset: int = 0
    done: int = 0
    total: int = 0


@dataclass(slots=True)
class StoredImage:
    """An image as a flash bank holds it: its bytes and the version it says it is."""

    data: bytes
    version: tuple[int, int, int]

    @property
    def crc32(self) -> int:
        return p.crc32(self.data)


@dataclass(eq=False, slots=True)
class OtaSession:
    """One update session (RAM: a reset loses it). Compared by identity."""

    image_size: int
    image_crc32: int
    max_chunk: int
    progressive: bool = False
    #: What READY grants (the normal window, or the progressive one; see
    #: ``SmartBallFirmware.session_window``).
    window: int = 16
    next_offset: int = 0  # received: in flash or in the receive buffer
    written_offset: int = 0  # in flash
    unwritten_chunks: int = 0  # the receive buffer's fill
    accepted_since_ack: int = 0
    #: DATA refused since the last accepted chunk (wrong offset, full buffer) or, in
    #: ERASING, since START: the rate limit of the replies. None: none yet.
    rejected: int | None = None
    pages: int = 0
    pages_erased: int = 0
    #: Pages this session has erased or queued for erasing (progressive mode).
    erase_queued: set[int] = field(default_factory=set)
    activating: bool = False
    #: Signed updates: the manifest this session's image must match at FINISH, with its
    #: signature (persisted with PENDING for the bootloader's second check).
    manifest: Manifest | None = None
    head: bytes | None = field(default=None, repr=False)
    #: The SHA-256 of the DATA as it arrived (Bug.HASH_OF_STREAM only).
    stream_hash: Any = field(default_factory=hashlib.sha256, repr=False)

    @property
    def total_erase(self) -> int:
        return self.pages * PAGE_SIZE


@dataclass(eq=False, slots=True)
class _FlashJob:
    """One NVMC operation: erase ``page``, or write ``data`` at ``offset``."""

    session: OtaSession
    command: int  # the command whose work this is (what a FLASH_ERROR answers)
    page: int | None = None
    offset: int = 0
    data: bytes = b""
    length: int = 0  # image bytes the write carries (data is padded to whole words)
    retried: bool = False
    #: Run, in order, once the job is done (ACKs, the resume READY, the verify).
    after: list[Callable[[], None]] = field(default_factory=list)

    @property
    def is_erase(self) -> bool:
        return self.page is not None


@dataclass(frozen=True, slots=True)
class _PendingRecord:
    """What the device persists (power-safe) before it sends MSG_OTA_DONE: the
    bootloader switches to the staged image only if its CRC checks out again."""

    image_size: int
    image_crc32: int
    #: Signed updates: the manifest and its signature (the bootloader verifies again).
    head: bytes | None = None


#: Error texts (informative; hosts act on the code). Each is at most MAX_ERROR_TEXT bytes.
ERROR_TEXTS: dict[p.ErrorCode, str] = {
    p.ErrorCode.BAD_FRAME: "payload too short for its type",
    p.ErrorCode.BAD_STATE: "not allowed in state {state}",
    p.ErrorCode.BAD_OFFSET: "chunk runs past the image end",
    p.ErrorCode.TOO_LARGE: "image larger than the staging area",
    p.ErrorCode.CRC_MISMATCH: "staged image CRC mismatch; old image kept",
    p.ErrorCode.FLASH_ERROR: "flash failed twice; old image kept",
    p.ErrorCode.UNKNOWN_COMMAND: "unknown command 0x{type:02X}",
    p.ErrorCode.BAD_PARAM: "{what}",
    p.ErrorCode.BAD_MANIFEST: "{what}",
    p.ErrorCode.UNTRUSTED_KEY: "{what}",
    p.ErrorCode.BAD_SIGNATURE: "{what}",
    p.ErrorCode.DOWNGRADE: "{what}",
    p.ErrorCode.UNSIGNED: "no accepted manifest for this image",
    p.ErrorCode.DIGEST_MISMATCH: "staged image SHA-256 mismatch; old image kept",
}

"""Firmware images in every form a build leaves on disk, checked before anything connects.

:func:`load_image` reads a raw ``.bin``, Intel ``.hex``, ELF, UF2 or a Nordic DFU ``.zip``,
recognised by content (the name only breaks a tie: a ``.hex`` that is not hex is a broken
hex); the readers are in :mod:`.image_formats`. Every problem is found here, before the
first connect, quickly and in bounded memory: only regular files and pipes are read (a
device such as ``/dev/zero`` is refused unread), never more than the format's bound (a raw
image: the staging area + 1 byte), and a pipe that stays silent is given up on.
"""

from __future__ import annotations

import io
import os
import select
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from . import contract
from .contract import codec as p
from .contract.manifest import SIGNED_HEAD_SIZE, Manifest, SignedImage, key_id_text
from .image_formats import (
    FormatError,
    ImageFormat,
    Parsed,
    packed_kind,
    read_dfu_zip,
    read_elf,
    read_intel_hex,
    read_signed,
    read_uf2,
    sniff,
)

_LAYOUT = contract.flash_layout()
#: The nRF52840's flash: 1 MiB from address 0. No image is this large: see STAGING_CAPACITY.
FLASH_SIZE = _LAYOUT.flash_size
#: The largest image an update can carry: a SmartBall's staging area (the contract's flash
#: layout; the device also reports it in MSG_INFO, and the engine checks that too).
STAGING_CAPACITY = _LAYOUT.staging_capacity
#: The smallest image that can be an nRF52840 application: its interrupt vector table alone
#: is 64 words (16 Cortex-M4 system entries + 48 nRF52840 interrupts) of 4 bytes.
MIN_IMAGE_SIZE = (16 + 48) * 4
#: The bound for the text and containers that hold an image (Intel HEX text, UF2 blocks, a
#: DFU zip, an ELF read from a pipe): a full 480 KiB image is 1.4 MB of hex text, 0.96 MB
#: of UF2; allow room beyond. An ELF on disk is not read whole (its debug sections can be
#: megabytes): only its headers and loadable segments are.
MAX_CONTAINER_BYTES = 4 * FLASH_SIZE
#: A pipe that gives no byte for this long (and one still open after PIPE_TOTAL_S) is given
#: up on: a FIFO nobody writes to must not hang the command.
PIPE_SILENCE_S = 10.0
PIPE_TOTAL_S = 60.0
#: Enough to recognise every format (a UF2 block is 512 bytes).
_HEAD = 512
_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n\r\f\v"
_HOW = (
    "an image is the .bin, .hex, .elf, .uf2 or DFU .zip the firmware's build writes, or the "
    ".sbi that `smartball-ota sign` makes of it"
)


class ImageError(ValueError):
    """An image that cannot be flashed; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class FirmwareImage:
    data: bytes
    source: str = "<memory>"
    #: What the file was read as (raw for images made in memory).
    format: ImageFormat = ImageFormat.RAW
    #: Address-bearing formats: where the image's first byte goes, and the entry point the
    #: file names (a hex's start address record, an ELF's e_entry), when it names one.
    address: int | None = None
    entry: int | None = None
    #: A signed image (``.sbi``): its manifest and signature, which the engine sends as
    #: CMD_OTA_MANIFEST before the session; ``data`` is the image they sign.
    signed: SignedImage | None = None

    @property
    def manifest(self) -> Manifest | None:
        return self.signed.manifest if self.signed else None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def crc32(self) -> int:
        return p.crc32(self.data)

    @property
    def described(self) -> str:
        """What was read, for the CLI's first line: "ELF, linked at 0x00027000, entry ..."."""
        text = self.format.value
        if self.address is not None:
            text += f", linked at 0x{self.address:08X}"
        if self.entry:
            text += f", entry 0x{self.entry:08X}"
        if self.manifest is not None:
            m = self.manifest
            text += (
                f", firmware {m.version}, security counter {m.security_counter}, "
                f"key {key_id_text(m.key_id)}"
            )
        return text

    def __repr__(self) -> str:
        return f"FirmwareImage({self.source}, {self.size} bytes, crc32 {self.crc32:08x})"

    def check_fits(self, capacity: int) -> None:
        if self.size > capacity:
            raise ImageError(
                f"{self.source}: image is {self.size} bytes but the device's staging area holds "
                f"{capacity} bytes; build a smaller image"
            )


def load_image(
    path: str | Path,
    *,
    max_size: int = STAGING_CAPACITY,
    pipe_silence_s: float | None = None,
) -> FirmwareImage:
    """Read an image in any format a build writes; it must fit ``max_size`` bytes (the
    staging area: the contract's unless a device's is known). Raises :class:`ImageError`
    with one sentence naming the file, what is wrong and what to do. A pipe that gives no
    byte for ``pipe_silence_s`` (default ``PIPE_SILENCE_S``) is given up on."""
    path = Path(path)
    silence_s = PIPE_SILENCE_S if pipe_silence_s is None else pipe_silence_s
    try:
        return _load(path, max_size, silence_s)
    except FormatError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except FileNotFoundError:
        hint = " (to read the image from a pipe, give /dev/stdin)" if str(path) == "-" else ""
        raise ImageError(f"{path}: no such file{hint}") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not a firmware image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _load(path: Path, max_size: int, silence_s: float) -> FirmwareImage:
    _refuse_special_file(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait here
    with os.fdopen(fd, "rb", buffering=0) as stream:
        mode = os.fstat(fd).st_mode
        _refuse_special_file(mode)  # replaced between stat and open
        regular = stat.S_ISREG(mode)
        if regular:
            os.set_blocking(fd, True)
        reader = _Reader(fd, pipe=not regular, silence_s=silence_s)
        head = reader.read(_HEAD)
        found = sniff(head)
        packed = packed_kind(head) if found is None else None
        if packed:  # before the size check: a large tarball is no oversized image
            raise FormatError(
                f"it is {packed}, not a firmware image: unpack it and give the .bin, .hex, "
                ".elf, .uf2 or DFU .zip inside"
            )
        if found is None and path.suffix.lower() in (".hex", ".ihex") and head:
            found = ImageFormat.INTEL_HEX  # named hex, no other magic: read as a (bad) hex
        if found is not ImageFormat.SIGNED and path.suffix.lower() == ".sbi":
            # Named as what `smartball-ota sign` writes, without its magic: a damaged signed
            # image, whose head would otherwise be flashed as part of a raw image.
            raise FormatError(
                "is named .sbi but does not start with a signed image's magic (SBM1): it is "
                "damaged or not a signed image; sign the image again with `smartball-ota sign`"
            )
        if found is ImageFormat.ELF and regular:
            stream.seek(0)
            parsed = read_elf(stream, max_size)  # lazily: headers and segments only
        else:
            limit = (
                max_size
                if found is None
                else max_size + SIGNED_HEAD_SIZE
                if found is ImageFormat.SIGNED
                else MAX_CONTAINER_BYTES
            )
            size = os.fstat(fd).st_size if regular else 0
            if size > limit:  # known before reading (0 for files like /proc's: read on)
                raise FormatError(_too_large(found, max_size, f"is {size} bytes"))
            raw = head + reader.read(limit + 1 - len(head))
            if len(raw) > limit:
                raise FormatError(_too_large(found, max_size, f"holds more than {limit} bytes"))
            parsed = _parse(found, raw, max_size)
    return _checked(path, parsed, max_size)


def _refuse_special_file(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError
    for test, what in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            raise FormatError(
                f"is {what}, not a file: it is not read (it could be endless); {_HOW}"
            )
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise FormatError(f"is not a regular file or a pipe; {_HOW}")


def _too_large(found: ImageFormat | None, max_size: int, size: str) -> str:
    if found is None:
        return (
            f"the image {size} but a SmartBall's staging area holds {max_size} bytes (the "
            "largest image an update can carry; the rest of the chip's 1 MiB flash holds the "
            "bootloader, the SoftDevice and the running application): build a smaller image"
        )
    if found is ImageFormat.SIGNED:
        return (
            f"the signed image file {size}: the image in it is larger than a SmartBall's "
            f"{max_size}-byte staging area holds; build a smaller image"
        )
    if found is ImageFormat.ELF:  # only from a pipe: a file's ELF is read in part
        return (
            f"an ELF from a pipe is read whole, and this one {size} (debug sections?): give "
            "the ELF file's path instead (of a file only the headers and segments are read)"
        )
    return (
        f"the {found.value} file {size}, more than any image for a {max_size}-byte staging "
        "area needs: it is not a SmartBall image"
    )


def _parse(found: ImageFormat | None, raw: bytes, max_size: int) -> Parsed:
    if found is ImageFormat.INTEL_HEX:
        return read_intel_hex(raw, max_size)
    if found is ImageFormat.UF2:
        return read_uf2(raw, max_size)
    if found is ImageFormat.DFU_ZIP:
        return read_dfu_zip(raw, max_size)
    if found is ImageFormat.ELF:
        return read_elf(io.BytesIO(raw), max_size)
    if found is ImageFormat.SIGNED:
        return read_signed(raw, max_size)
    if raw and not raw.translate(None, _TEXT_BYTES):
        first = raw.split(b"\n", 1)[0][:40].decode("ascii").strip()
        if raw.startswith(b":"):
            raise FormatError(
                f"it is text beginning with ':' like Intel HEX, but its first line ({first!r}) "
                "is not an Intel HEX record (':' then hex digits): if it is meant to be hex, "
                "rebuild it; a raw image is binary, not text"
            )
        raise FormatError(f"it is a text file (it begins {first!r}), not a firmware image; {_HOW}")
    return Parsed(raw, ImageFormat.RAW)


def _checked(path: Path, parsed: Parsed, max_size: int) -> FirmwareImage:
    size = len(parsed.data)
    if not size:
        raise FormatError("the image is empty")
    if size < MIN_IMAGE_SIZE:
        raise FormatError(
            f"the image is {size} bytes, too small to be firmware: an nRF52840 application "
            f"is at least {MIN_IMAGE_SIZE} bytes (its interrupt vector table alone: 16 "
            "Cortex-M4 entries and 48 nRF52840 interrupts, 4 bytes each)"
        )
    if size > max_size:
        raise FormatError(_too_large(None, max_size, f"is {size} bytes"))
    return FirmwareImage(
        parsed.data, str(path), parsed.format, parsed.address, parsed.entry, parsed.signed
    )


class _Reader:
    """Bounded reads from a regular file or a pipe; a pipe is read with timeouts."""

    def __init__(self, fd: int, *, pipe: bool, silence_s: float) -> None:
        self.fd = fd
        self.pipe = pipe
        self.silence_s = silence_s
        self.deadline = time.monotonic() + max(silence_s, PIPE_TOTAL_S)

    def read(self, count: int) -> bytes:
        """At most ``count`` bytes: fewer only at the end of the file."""
        chunks: list[bytes] = []
        left = count
        while left > 0:  # each pass reads a byte, ends, or runs into a timeout
            if self.pipe:
                self._wait_for_data()
            try:
                chunk = os.read(self.fd, min(left, 1 << 16))
            except BlockingIOError:
                continue  # woken without data: the next wait is bounded by the deadline
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _wait_for_data(self) -> None:
        now = time.monotonic()
        wait = min(self.silence_s, self.deadline - now)
        readable, _, _ = select.select([self.fd], [], [], max(wait, 0.0))
        if readable:
            return
        if now + wait >= self.deadline and wait < self.silence_s:
            raise FormatError(
                f"the pipe was still open after {PIPE_TOTAL_S:g} s; write the image to a "
                "file and give its path"
            )
        raise FormatError(
            f"nothing came through the pipe for {self.silence_s:g} s (is anything writing to "
            "it?); write the image to a file and give its path"
        )


#: The image the simulator's OTA tests flash when no --firmware is given: not a multiple of
#: a page or a chunk, so the last page and the last chunk are partial.
GENERATED_IMAGE_SIZE = 131_195


def generated_image(seed: int, size: int = GENERATED_IMAGE_SIZE) -> FirmwareImage:
    """Deterministic pseudo-random bytes: the same seed gives the same image and CRC."""
    import random

    return FirmwareImage(random.Random(seed).randbytes(size), f"generated-{size}.bin")

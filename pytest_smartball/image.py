"""Firmware images: raw ``.bin`` or Intel ``.hex``, validated before anything is sent.

Every problem is found here, before anything connects, quickly and in bounded memory: the
file's size is checked before it is read, and an Intel HEX file's addresses before its gaps
are filled (a merged hex with UICR data at 0x10001000 would otherwise span 256 MB).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from . import protocol as p

#: The nRF52840's flash: 1 MiB from address 0. No SmartBall image can be larger, and an
#: Intel HEX image's data must lie inside it.
FLASH_SIZE = 0x100000
#: An Intel HEX file of a full 1 MiB image is about 2.8 MiB of text; allow room beyond it.
MAX_HEX_TEXT = 4 * FLASH_SIZE
_HEX_RECORD = re.compile(rb"^:[0-9A-Fa-f]{10,}\r?$")


class ImageError(ValueError):
    """An image that cannot be flashed; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class FirmwareImage:
    data: bytes
    source: str = "<memory>"

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def crc32(self) -> int:
        return p.crc32(self.data)

    def __repr__(self) -> str:
        return f"FirmwareImage({self.source}, {self.size} bytes, crc32 {self.crc32:08x})"

    def check_fits(self, capacity: int) -> None:
        if self.size > capacity:
            raise ImageError(
                f"{self.source}: image is {self.size} bytes but the device's staging area holds "
                f"{capacity} bytes; build a smaller image"
            )


def load_image(path: str | Path, *, max_size: int = FLASH_SIZE) -> FirmwareImage:
    """Read ``.bin`` or Intel ``.hex`` (by extension, or by content for other names); the
    image must fit ``max_size`` bytes (the device's staging area when known, else the
    nRF52840's flash)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise IsADirectoryError
        limit = MAX_HEX_TEXT if suffix in (".hex", ".ihex") else max(max_size, MAX_HEX_TEXT)
        if size > limit:
            raise ImageError(
                f"{path}: the file is {size} bytes; no SmartBall image is larger than "
                f"{FLASH_SIZE} bytes (the nRF52840's flash), so this is not one"
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not a firmware image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    looks_hex = suffix in (".hex", ".ihex") or (suffix != ".bin" and raw[:1] == b":")
    if suffix == ".bin" and _is_intel_hex_text(raw):
        raise ImageError(
            f"{path}: this is Intel HEX text, not a raw binary image; name it .hex (or "
            "convert it: objcopy -I ihex -O binary)"
        )
    data = _from_intel_hex(path, raw, max_size) if looks_hex else raw
    if not data:
        raise ImageError(f"{path}: the image is empty")
    image = FirmwareImage(data, str(path))
    image.check_fits(max_size)
    return image


def _is_intel_hex_text(raw: bytes) -> bool:
    """Every line an Intel HEX record: no raw binary looks like that."""
    lines = [line for line in raw.split(b"\n") if line.strip()]
    return bool(lines) and all(_HEX_RECORD.match(line.strip(b" \t")) for line in lines)


def _from_intel_hex(path: Path, raw: bytes, max_size: int) -> bytes:
    from intelhex import HexRecordError, IntelHex, IntelHexError

    ih = IntelHex()
    try:
        text = raw.decode("ascii")
        ih.loadhex(io.StringIO(text))
    except (HexRecordError, IntelHexError, ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: not a valid Intel HEX file: {exc}") from None
    start, end = ih.minaddr(), ih.maxaddr()
    if start is None:
        return b""
    if end >= FLASH_SIZE:
        outside = min(max(s, FLASH_SIZE) for s, e in ih.segments() if e > FLASH_SIZE)
        raise ImageError(
            f"{path}: data at 0x{outside:08X} is outside the nRF52840's flash (0x00000000 to "
            f"0x{FLASH_SIZE - 1:08X}); a merged hex with UICR or bootloader settings is not "
            "an application image: build the application's hex alone"
        )
    # intelhex stops quietly at the end of the text: without the EOF record a file cut
    # short at a line boundary would load as a shorter image with a CRC to match.
    if not any(_is_eof_record(line) for line in text.splitlines()):
        raise ImageError(
            f"{path}: not a valid Intel HEX file: no end-of-file record (:00000001FF); "
            "the file is truncated"
        )
    span = end - start + 1
    if span > max_size:
        # Before filling the gaps: a merged hex with UICR data at 0x10001000 spans 256 MB.
        raise ImageError(
            f"{path}: image is {span} bytes (Intel HEX data from 0x{start:08X} to "
            f"0x{end:08X}) but the device's staging area holds {max_size} bytes; "
            "build a smaller image"
        )
    # Gaps inside the image are erased flash on the device: fill them with 0xFF.
    ih.padding = 0xFF
    return bytes(ih.tobinarray(start=start, end=end))


def _is_eof_record(line: str) -> bool:
    line = line.strip()
    return line.startswith(":") and len(line) >= 11 and line[1:3] == "00" and line[7:9] == "01"


#: The image the simulator's OTA tests flash when no --firmware is given: not a multiple of
#: a page or a chunk, so the last page and the last chunk are partial.
GENERATED_IMAGE_SIZE = 131_195


def generated_image(seed: int, size: int = GENERATED_IMAGE_SIZE) -> FirmwareImage:
    """Deterministic pseudo-random bytes: the same seed gives the same image and CRC."""
    import random

    return FirmwareImage(random.Random(seed).randbytes(size), f"generated-{size}.bin")

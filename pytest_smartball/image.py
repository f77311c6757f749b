"""Firmware images: raw ``.bin`` or Intel ``.hex``, validated before anything is sent."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from . import protocol as p


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


def load_image(path: str | Path, *, max_size: int | None = None) -> FirmwareImage:
    """Read ``.bin`` or Intel ``.hex`` (by extension, or by content for other names)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not a firmware image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    looks_hex = path.suffix.lower() in (".hex", ".ihex") or (
        path.suffix.lower() != ".bin" and raw[:1] == b":"
    )
    data = _from_intel_hex(path, raw, max_size) if looks_hex else raw
    if not data:
        raise ImageError(f"{path}: the image is empty")
    image = FirmwareImage(data, str(path))
    if max_size is not None:
        image.check_fits(max_size)
    return image


def _from_intel_hex(path: Path, raw: bytes, max_size: int | None = None) -> bytes:
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
    # intelhex stops quietly at the end of the text: without the EOF record a file cut
    # short at a line boundary would load as a shorter image with a CRC to match.
    if not any(_is_eof_record(line) for line in text.splitlines()):
        raise ImageError(
            f"{path}: not a valid Intel HEX file: no end-of-file record (:00000001FF); "
            "the file is truncated"
        )
    span = end - start + 1
    if max_size is not None and span > max_size:
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

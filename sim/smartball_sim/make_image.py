"""Write a deterministic test firmware image:
``python -m smartball_sim.make_image OUT [SIZE] [--seed N] [--version X.Y.Z | --no-version]``.

The field image was 323,194 bytes; that is the default size. The bytes are pseudo-random
(seeded), so every run produces the same file and CRC-32. The image starts with a small
version descriptor (``VERSION_DESCRIPTOR``), which is how the simulated SmartBall knows
the version of an image it switched to (``MSG_INFO``'s ``fw_major/minor/patch``); an
image without one runs as version 0.0.0.
"""

from __future__ import annotations

import argparse
import random
import re
import struct
import sys
import zlib
from pathlib import Path

FIELD_IMAGE_SIZE = 323_194

#: magic, major, minor, patch, one reserved byte: the first 12 bytes of an image.
VERSION_DESCRIPTOR = struct.Struct("<8sBBBx")
VERSION_MAGIC = b"SBFWVER1"
#: The version make_image writes unless told otherwise: newer than the simulated device's
#: factory image (1.0.0), so an update shows in MSG_INFO.
DEFAULT_VERSION = (1, 1, 0)
NO_VERSION = (0, 0, 0)


def make_image(
    size: int = FIELD_IMAGE_SIZE,
    seed: int = 0,
    version: tuple[int, int, int] | None = DEFAULT_VERSION,
) -> bytes:
    """``size`` seeded pseudo-random bytes, starting with a version descriptor when
    ``version`` is given and the image is large enough to hold one."""
    data = bytearray(random.Random(seed).randbytes(size))
    if version is not None and size >= VERSION_DESCRIPTOR.size:
        data[: VERSION_DESCRIPTOR.size] = VERSION_DESCRIPTOR.pack(VERSION_MAGIC, *version)
    return bytes(data)


def image_version(data: bytes) -> tuple[int, int, int]:
    """The version an image's descriptor names, or 0.0.0 when it has none."""
    if len(data) < VERSION_DESCRIPTOR.size or not data.startswith(VERSION_MAGIC):
        return NO_VERSION
    _, major, minor, patch = VERSION_DESCRIPTOR.unpack_from(data)
    return (major, minor, patch)


def _version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text, re.ASCII)
    if m is None or any(int(g) > 255 for g in m.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a version X.Y.Z with parts 0..255")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartball_sim.make_image", description=__doc__)
    parser.add_argument("out", type=Path, help="file to write (.bin)")
    parser.add_argument(
        "size",
        type=int,
        nargs="?",
        default=FIELD_IMAGE_SIZE,
        help=f"image size in bytes (default {FIELD_IMAGE_SIZE})",
    )
    parser.add_argument("--seed", type=int, default=0)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--version",
        type=_version,
        default=DEFAULT_VERSION,
        help="version written into the image's descriptor (default %(default)s)",
    )
    group.add_argument(
        "--no-version",
        dest="version",
        action="store_const",
        const=None,
        help="no descriptor: the image runs as version 0.0.0",
    )
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("size must be at least 1 byte")
    data = make_image(args.size, args.seed, args.version)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out}: {len(data)} bytes, crc32 {zlib.crc32(data):08x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

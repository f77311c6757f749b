"""Write a deterministic test firmware image:
``python -m smartball_sim.make_image OUT [SIZE] [--seed N]``.

The field image was 323,194 bytes; that is the default size. The bytes are pseudo-random
(seeded), so every run produces the same file and CRC-32.
"""

from __future__ import annotations

import argparse
import random
import sys
import zlib
from pathlib import Path

FIELD_IMAGE_SIZE = 323_194


def make_image(size: int = FIELD_IMAGE_SIZE, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


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
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("size must be at least 1 byte")
    data = make_image(args.size, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out}: {len(data)} bytes, crc32 {zlib.crc32(data):08x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

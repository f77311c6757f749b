"""Image intake (issue 21) of UF2 files as PyPI's uf2conv (adafruit-uf2) writes them, and
broken UF2 files refused in one sentence.

The firmware files are built at test time (tests/arm_build.py); without the toolchain
those tests skip, under CI=true they fail.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pytest_smartball.image import load_image
from pytest_smartball.image_formats import ImageFormat

from .. import arm_build
from .image_intake import APP, UF2_FAMILY, image_error

# --- UF2 ----------------------------------------------------------------------------------


def test_uf2conv_of_the_bin_is_accepted(build: arm_build.Build, tmp_path: Path) -> None:
    path = arm_build.uf2(build.bin, tmp_path / "app.uf2")
    image = load_image(path)
    # uf2conv writes 256 data bytes per block, the last one padded with zeros.
    padded = build.image + bytes(-len(build.image) % 256)
    assert image.data == padded and image.format is ImageFormat.UF2 and image.address == APP


def test_uf2conv_of_the_hex_is_accepted(build: arm_build.Build, tmp_path: Path) -> None:
    path = arm_build.uf2(build.hex, tmp_path / "fromhex.uf2")
    image = load_image(path)
    assert image.data[: len(build.image)] == build.image


def test_a_uf2_named_bin_is_read_as_uf2(build: arm_build.Build, tmp_path: Path) -> None:
    path = arm_build.uf2(build.bin, tmp_path / "app.bin.tmp")
    renamed = path.rename(tmp_path / "app.bin")
    assert load_image(renamed).format is ImageFormat.UF2


def test_a_uf2_for_another_chip_is_refused(build: arm_build.Build, tmp_path: Path) -> None:
    path = arm_build.uf2(build.bin, tmp_path / "pico.uf2", family="0xE48BFF56")
    message = image_error(path)
    assert "is for family 0xE48BFF56 (Raspberry Pi RP2040), not the nRF52840" in message


def test_a_uf2_at_another_address_is_refused(build: arm_build.Build, tmp_path: Path) -> None:
    path = arm_build.uf2(build.bin, tmp_path / "low.uf2", base=0x26000)
    assert "data at 0x00026000 lies below the application's range" in image_error(path)


def uf2_block(
    address: int,
    data: bytes,
    number: int,
    count: int,
    *,
    flags: int = 0x2000,
    family: int = UF2_FAMILY,
) -> bytes:
    header = struct.pack(
        "<8I", 0x0A324655, 0x9E5D5157, flags, address, len(data), number, count, family
    )
    body = data + bytes(476 - len(data))
    return header + body + struct.pack("<I", 0x0AB16F30)


CHUNK = bytes(range(256))


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        (
            [uf2_block(APP, CHUNK, 0, 2), uf2_block(APP + 128, CHUNK, 1, 2)],
            "overlap at 0x00027080",
        ),
        ([uf2_block(APP, CHUNK, 0, 2)], "it has 1 of the 2 blocks it announces"),
        (
            [uf2_block(APP, CHUNK, 0, 2), uf2_block(APP + 256, CHUNK, 0, 2)],
            "is numbered 0 of 2",
        ),
        ([uf2_block(APP, CHUNK, 0, 1, flags=0x2001)], "marked 'not main flash'"),
        ([uf2_block(APP, CHUNK, 0, 1, flags=0)], "names no family ID"),
        ([uf2_block(APP, CHUNK, 0, 1, family=0x1B57745F)], "(nRF52 (nRF52832))"),
        ([uf2_block(APP, CHUNK, 0, 1)[:300]], "not a whole number of 512-byte blocks"),
    ],
    ids=["overlap", "missing-block", "block-twice", "not-main-flash", "no-family",
         "nrf52832", "truncated"],
)  # fmt: skip
def test_broken_uf2_files_are_refused(tmp_path: Path, blocks: list[bytes], expected: str) -> None:
    path = tmp_path / "bad.uf2"
    path.write_bytes(b"".join(blocks))
    assert expected in image_error(path)

"""load_image: raw .bin and Intel .hex images, and every way a file can be unusable."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from intelhex import IntelHex

from pytest_smartball.image import FirmwareImage, ImageError, load_image

DATA = bytes((i * 31 + 7) & 0xFF for i in range(5000))


def write_hex(path: Path, segments: dict[int, bytes], *, start_addr: int | None = None) -> Path:
    ih = IntelHex()
    for address, data in segments.items():
        ih.frombytes(data, offset=address)
    if start_addr is not None:
        ih.start_addr = {"EIP": start_addr}
    ih.write_hex_file(str(path))
    return path


def image_error(path: Path, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message  # every message names the file
    return message


# --- good images ------------------------------------------------------------------------------


def test_bin_is_loaded_as_is(tmp_path: Path) -> None:
    path = tmp_path / "app.bin"
    path.write_bytes(DATA)
    image = load_image(path)
    assert image.data == DATA
    assert image.size == len(DATA)
    assert image.source == str(path)
    assert image.crc32 == zlib.crc32(DATA)


def test_bin_path_as_string(tmp_path: Path) -> None:
    path = tmp_path / "app.bin"
    path.write_bytes(b"\x01")
    assert load_image(str(path)).data == b"\x01"


def test_bin_starting_with_a_colon_stays_binary(tmp_path: Path) -> None:
    path = tmp_path / "odd.bin"
    path.write_bytes(b":not hex at all\xff")
    assert load_image(path).data == b":not hex at all\xff"


def test_hex_contiguous(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "app.hex", {0: DATA})
    assert load_image(path).data == DATA


def test_hex_with_start_offset_begins_at_its_lowest_address(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "app.hex", {0x26000: DATA}, start_addr=0x26000 + 0x101)
    image = load_image(path)
    assert image.data == DATA  # no padding for the flash below the application
    assert image.crc32 == zlib.crc32(DATA)


def test_hex_gap_is_filled_with_ff(tmp_path: Path) -> None:
    base = 0x27000
    path = write_hex(tmp_path / "app.HEX", {base: b"\x01\x02\x03", base + 0x20: b"\x04\x05"})
    image = load_image(path)
    assert image.data == b"\x01\x02\x03" + b"\xff" * (0x20 - 3) + b"\x04\x05"
    assert image.size == 0x22


def test_hex_above_64k_uses_extended_addresses(tmp_path: Path) -> None:
    base = 0xFFF0  # crosses a 64 KB boundary: needs an extended linear address record
    path = write_hex(tmp_path / "app.hex", {base: DATA[:100]})
    assert ":02000004" in path.read_text()
    assert load_image(path).data == DATA[:100]


@pytest.mark.parametrize("name", ["app.ihex", "firmware", "app.img"])
def test_hex_recognised_by_extension_or_content(tmp_path: Path, name: str) -> None:
    path = write_hex(tmp_path / name, {0x1000: DATA[:300]})
    assert load_image(path).data == DATA[:300]


def test_hex_with_crlf_line_ends(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "unix.hex", {0: DATA[:64]})
    dos = tmp_path / "dos.hex"
    dos.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert load_image(dos).data == DATA[:64]


def test_crc32_is_zlib_crc32() -> None:
    for data in (b"123456789", DATA, b"\x00", b"\xff" * 4096):
        assert FirmwareImage(data).crc32 == zlib.crc32(data)
    assert FirmwareImage(b"123456789").crc32 == 0xCBF43926


def test_repr_names_source_size_and_crc() -> None:
    text = repr(FirmwareImage(b"123456789", "x.bin"))
    assert "x.bin" in text and "9 bytes" in text and "cbf43926" in text


# --- unusable files ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in image_error(tmp_path / "nope.bin")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "images.bin"
    folder.mkdir()
    assert "is a directory" in image_error(folder)


@pytest.mark.parametrize("name", ["empty.bin", "empty.hex", "empty"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    assert "empty" in image_error(path)


def test_hex_with_no_data_records_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "nodata.hex"
    path.write_text(":00000001FF\n")
    assert "empty" in image_error(path)
    write_hex(path, {}, start_addr=0x1000)  # only a start address record
    assert "empty" in image_error(path)


@pytest.mark.parametrize(
    "content",
    [
        b":10000000000102030405060708090A0B0C0D0E0F00\n:00000001FF\n",  # bad checksum
        b":1000000000010203\n:00000001FF\n",  # record shorter than its length
        b"this is not hex\n",
        b":0G000000FF\n",  # not hex digits
        b":00000001FF\n\xff\xfe garbage",  # not ASCII
        b":020000040000FA\n:0100000041BE\n:0100000042BD\n:00000001FF\n",  # same address twice
    ],
    ids=["checksum", "short-record", "text", "bad-digit", "binary", "overlap"],
)
def test_malformed_hex(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.hex"
    path.write_bytes(content)
    assert "not a valid Intel HEX file" in image_error(path)


def test_truncated_hex_without_eof_record_is_refused(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "full.hex", {0: DATA[:64]})
    lines = path.read_text().splitlines(keepends=True)
    assert lines[-1].strip() == ":00000001FF"
    cut = tmp_path / "cut.hex"
    cut.write_text("".join(lines[:2]))  # cut at a line boundary: every record still valid
    message = image_error(cut)
    assert "end-of-file record" in message


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads unreadable files"
)
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.bin"
    path.write_bytes(DATA)
    path.chmod(0)
    try:
        assert "cannot read" in image_error(path)
    finally:
        path.chmod(0o600)


# --- size limit -------------------------------------------------------------------------------


def test_max_size_exceeded(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(DATA)
    message = image_error(path, max_size=len(DATA) - 1)
    assert str(len(DATA)) in message and str(len(DATA) - 1) in message
    assert load_image(path, max_size=len(DATA)).data == DATA  # exactly the limit fits


def test_max_size_counts_the_filled_gaps_of_a_hex(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "gappy.hex", {0: b"\x01", 0x1000: b"\x02"})
    message = image_error(path, max_size=0x1000)
    assert str(0x1001) in message
    assert load_image(path, max_size=0x1001).size == 0x1001


def test_merged_hex_with_uicr_is_refused_before_filling_the_gap(tmp_path: Path) -> None:
    # An application merged with UICR data (0x10001014 on nRF52) spans 256 MB; filling
    # that gap byte by byte took ~40 s before the size check could refuse it.
    path = write_hex(tmp_path / "merged.hex", {0x26000: DATA, 0x10001014: b"\x00\x00\x0f\x00"})
    message = image_error(path, max_size=480 * 1024)
    assert "data at 0x10001014 is outside" in message


def test_check_fits(tmp_path: Path) -> None:
    image = FirmwareImage(DATA, "a.bin")
    image.check_fits(len(DATA))
    with pytest.raises(ImageError, match=r"a\.bin: image is 5000 bytes .* holds 4999 bytes"):
        image.check_fits(len(DATA) - 1)


# --- found before anything connects, in bounded memory --------------------------------------


def test_hex_with_data_beyond_the_flash_names_the_address(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "far.hex", {0xFFFFFFF0: b"\x01"})
    message = image_error(path)
    assert "data at 0xFFFFFFF0 is outside the nRF52840's flash" in message


def test_merged_hex_with_uicr_names_the_first_address_outside(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "merged.hex", {0: DATA, 0x10000000: b"\x02", 0x10001000: b"\x03"})
    assert "data at 0x10000000 is outside" in image_error(path)


def test_hex_straddling_the_end_of_flash_names_the_first_byte_outside(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "straddle.hex", {0x0FFFF0: bytes(32)})
    assert "data at 0x00100000 is outside" in image_error(path)


def test_far_addresses_never_build_a_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gap between 0 and a far address is never filled: the check runs first."""
    built: list[int] = []
    original = IntelHex.tobinarray

    def recording(self: IntelHex, *args: object, **kwargs: object) -> object:
        built.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IntelHex, "tobinarray", recording)
    image_error(write_hex(tmp_path / "merged.hex", {0: DATA, 0x10000000: b"\x02"}))
    assert built == []


def test_intel_hex_text_named_bin_is_refused(tmp_path: Path) -> None:
    hex_path = write_hex(tmp_path / "app.hex", {0: DATA})
    path = tmp_path / "app.bin"
    path.write_bytes(hex_path.read_bytes())
    message = image_error(path)
    assert "Intel HEX text, not a raw binary image" in message and ".hex" in message


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.bin"
    with path.open("wb") as f:  # sparse: costs no disk, and is never read
        f.truncate(64 * 1024 * 1024)
    message = image_error(path)
    assert "no SmartBall image is larger than" in message


def test_an_image_larger_than_the_flash_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(0x100000 + 1))
    assert "holds 1048576 bytes" in image_error(path)

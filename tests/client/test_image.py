"""load_image: raw .bin and Intel .hex images, and every way a file can be unusable.

ELF, UF2 and DFU packages built by the real tools, pipes and the CLI's refusals are in
tests/client/test_image_{elf,uf2,dfu,pipes,cli_refusals}.py."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from intelhex import IntelHex

from pytest_smartball import contract
from pytest_smartball.image import (
    MIN_IMAGE_SIZE,
    STAGING_CAPACITY,
    FirmwareImage,
    ImageError,
    load_image,
)
from pytest_smartball.image_formats import ImageFormat

DATA = bytes((i * 31 + 7) & 0xFF for i in range(5000))
#: Where a SmartBall's application starts (0x27000): an address-bearing image begins there.
APP = contract.flash_layout().application_start


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
    path.write_bytes(DATA[:MIN_IMAGE_SIZE])
    image = load_image(str(path))
    assert image.data == DATA[:MIN_IMAGE_SIZE]
    assert image.format is ImageFormat.RAW and image.described == "raw binary"


@pytest.mark.parametrize("name", ["odd.bin", "odd", "odd.img"])
def test_binary_starting_with_a_colon_is_a_raw_image(tmp_path: Path, name: str) -> None:
    """Issue 21: a raw image whose first byte is ':' was refused in Python codec jargon
    ("'ascii' codec can't decode byte 0xff") unless it was named .bin."""
    data = b":not hex at all\xff" + DATA[:300]
    path = tmp_path / name
    path.write_bytes(data)
    assert load_image(path).data == data


def test_text_starting_with_a_colon_gets_a_plain_sentence(tmp_path: Path) -> None:
    path = tmp_path / "notes.img"
    path.write_bytes(b":not hex at all, but plain text\n" * 20)
    message = image_error(path)
    assert "is not an Intel HEX record" in message and "a raw image is binary" in message
    assert "codec" not in message and "decode" not in message


def test_a_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "README.bin"
    path.write_text("SmartBall firmware 1.4.2 release notes\n" * 20)
    message = image_error(path)
    assert "is a text file (it begins 'SmartBall firmware 1.4.2 release notes')" in message


def test_hex_contiguous(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "app.hex", {APP: DATA})
    image = load_image(path)
    assert image.data == DATA
    assert image.format is ImageFormat.INTEL_HEX and image.address == APP


def test_hex_gap_is_filled_with_ff(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "app.HEX", {APP: DATA[:300], APP + 0x200: b"\x04\x05"})
    image = load_image(path)
    assert image.data == DATA[:300] + b"\xff" * (0x200 - 300) + b"\x04\x05"
    assert image.size == 0x202


def test_hex_above_64k_uses_extended_addresses(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "app.hex", {APP: DATA})  # 0x27000: above 64 KB
    assert ":02000004" in path.read_text()
    assert load_image(path).data == DATA


def test_hex_with_extended_segment_address_records(tmp_path: Path) -> None:
    """objcopy writes type 02 (segment) records, and a type 03 start address (CS:IP)."""
    records = [
        ":020000022000DC",  # extended segment address 0x2000: data at 0x20000 + offset
        ":040000032000710365",  # start segment address CS=0x2000 IP=0x7103: 0x27103
        ":00000001FF",
    ]
    path = write_hex(tmp_path / "seg.hex", {APP: DATA[:512]})
    ours = [line for line in path.read_text().splitlines() if line[7:9] == "00"]
    # The same data under a type 02 record (0x2000 * 16) instead of intelhex's type 04.
    body = [records[0]]
    for line in ours:
        offset = int(line[3:7], 16)  # from 0x20000 under both record kinds
        raw = bytes.fromhex(line[1:])
        rec = bytes([raw[0], offset >> 8, offset & 0xFF, 0]) + raw[4:-1]
        body.append(":" + (rec + bytes([(-sum(rec)) & 0xFF])).hex().upper())
    path.write_text("\n".join([*body, records[1], records[2]]) + "\n")
    image = load_image(path)
    assert image.data == DATA[:512] and image.address == APP
    assert image.entry == 0x27103
    assert "entry 0x00027103" in image.described


@pytest.mark.parametrize("name", ["app.ihex", "firmware", "app.img", "app.bin"])
def test_hex_recognised_by_content_whatever_its_name(tmp_path: Path, name: str) -> None:
    """Issue 21: the format is recognised by content, also when the name says .bin."""
    path = write_hex(tmp_path / name, {APP: DATA[:300]})
    image = load_image(path)
    assert image.data == DATA[:300] and image.format is ImageFormat.INTEL_HEX


def test_hex_with_crlf_line_ends(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "unix.hex", {APP: DATA[:300]})
    dos = tmp_path / "dos.hex"
    dos.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert load_image(dos).data == DATA[:300]


# --- Intel HEX start address records ---------------------------------------------------------


def test_hex_start_linear_address_inside_the_image_is_kept(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "app.hex", {APP: DATA}, start_addr=APP + 0x101)
    image = load_image(path)
    assert image.entry == APP + 0x101
    assert image.described == f"Intel HEX, linked at 0x{APP:08X}, entry 0x{APP + 0x101:08X}"


@pytest.mark.parametrize("entry", [0x1001, APP + len(DATA) + 1, 0x20000001])
def test_hex_start_address_outside_the_image_is_refused(tmp_path: Path, entry: int) -> None:
    """Issue 21: start address records were silently dropped."""
    path = write_hex(tmp_path / "app.hex", {APP: DATA}, start_addr=entry)
    message = image_error(path)
    assert f"start linear address record (type 05) is 0x{entry:08X}" in message
    assert f"outside the image's data (0x{APP:08X} to 0x{APP + len(DATA) - 1:08X})" in message


def test_hex_start_segment_address_is_checked_too(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "app.hex", {APP: DATA})
    lines = path.read_text().splitlines()
    cs_ip = ":0400000300000100F8"  # CS=0 IP=0x0100: address 0x100, below the application
    path.write_text("\n".join([*lines[:-1], cs_ip, lines[-1]]) + "\n")
    message = image_error(path)
    assert "start segment address record (type 03, CS:IP) is 0x00000100" in message


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


@pytest.mark.parametrize("name", ["empty.bin", "empty.hex", "empty", "empty.elf", "empty.uf2"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    assert "empty" in image_error(path)


def test_hex_with_no_data_records_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "nodata.hex"
    path.write_text(":00000001FF\n")
    assert "empty" in image_error(path)
    write_hex(path, {}, start_addr=APP)  # only a start address record
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
    path = write_hex(tmp_path / "full.hex", {APP: DATA[:64]})
    lines = path.read_text().splitlines(keepends=True)
    assert lines[-1].strip() == ":00000001FF"
    cut = tmp_path / "cut.hex"
    cut.write_text("".join(lines[:3]))  # cut at a line boundary: every record still valid
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


# --- size limits ------------------------------------------------------------------------------


def test_max_size_exceeded(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(DATA)
    message = image_error(path, max_size=len(DATA) - 1)
    assert f"is {len(DATA)} bytes but a SmartBall's staging area holds {len(DATA) - 1}" in message
    assert load_image(path, max_size=len(DATA)).data == DATA  # exactly the limit fits


def test_the_default_limit_is_the_staging_area_not_the_chip(tmp_path: Path) -> None:
    """Issue 21: a 1,048,577-byte image was refused with "the device's staging area holds
    1048576 bytes" (that is the chip's flash), and an exactly-1 MiB image was accepted here
    and connected before the device refused it."""
    assert STAGING_CAPACITY == 491_520 == contract.flash_layout().staging_capacity
    for size in (0x100000 + 1, 0x100000, STAGING_CAPACITY + 1):
        path = tmp_path / f"{size}.bin"
        path.write_bytes(bytes([0xA5]) * size)
        message = image_error(path)
        assert f"the image is {size} bytes but a SmartBall's staging area holds 491520" in message
        assert "holds 1048576" not in message
    path = tmp_path / "fits.bin"
    path.write_bytes(bytes([0xA5]) * STAGING_CAPACITY)
    assert load_image(path).size == STAGING_CAPACITY


def test_the_simulator_has_the_same_staging_area() -> None:
    from smartball_sim.firmware.model import DEFAULT_STAGING_CAPACITY

    assert DEFAULT_STAGING_CAPACITY == STAGING_CAPACITY


@pytest.mark.parametrize("size", [1, 4, 5, MIN_IMAGE_SIZE - 1])
def test_an_image_too_small_to_be_firmware_is_refused(tmp_path: Path, size: int) -> None:
    """Issue 21: 1-, 4- and 5-byte images were flashed and verified."""
    path = tmp_path / "tiny.bin"
    path.write_bytes(DATA[:size])
    message = image_error(path)
    assert f"the image is {size} bytes, too small to be firmware" in message
    assert "at least 256 bytes (its interrupt vector table alone" in message
    path.write_bytes(DATA[:MIN_IMAGE_SIZE])
    assert load_image(path).size == MIN_IMAGE_SIZE


def test_a_tiny_hex_is_refused_by_its_image_size(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "tiny.hex", {APP: b"\x01\x02\x03\x04"})
    assert "the image is 4 bytes, too small to be firmware" in image_error(path)


def test_max_size_counts_the_filled_gaps_of_a_hex(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "gappy.hex", {APP: DATA[:300], APP + 0x1000: b"\x02"})
    message = image_error(path, max_size=0x1000)
    assert f"data at 0x{APP + 0x1000:08X} is outside the application's range" in message
    assert "the image would span 4097 bytes" in message
    assert load_image(path, max_size=0x1001).size == 0x1001


def test_merged_hex_with_uicr_is_refused_before_filling_the_gap(tmp_path: Path) -> None:
    # An application merged with UICR data (0x10001014 on nRF52) spans 256 MB; filling
    # that gap byte by byte took ~40 s before the size check could refuse it.
    path = write_hex(tmp_path / "merged.hex", {APP: DATA, 0x10001014: b"\x00\x00\x0f\x00"})
    message = image_error(path)
    assert "data at 0x10001014 is outside the application's range" in message
    assert "(0x00027000 to 0x0009EFFF: the 491520-byte staging area" in message
    assert "not flash at all" in message


def test_check_fits(tmp_path: Path) -> None:
    image = FirmwareImage(DATA, "a.bin")
    image.check_fits(len(DATA))
    with pytest.raises(ImageError, match=r"a\.bin: image is 5000 bytes .* holds 4999 bytes"):
        image.check_fits(len(DATA) - 1)


# --- where the data lies ------------------------------------------------------------------


def test_hex_with_data_beyond_the_flash_names_the_address(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "far.hex", {APP: DATA, 0xFFFFFFF0: b"\x01"})
    message = image_error(path)
    assert "data at 0xFFFFFFF0 is outside the application's range" in message


def test_merged_hex_with_softdevice_names_the_first_address_below(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "merged.hex", {0: DATA, APP: DATA, 0x10001000: b"\x03"})
    message = image_error(path)
    assert "data at 0x00000000 lies below the application's range" in message
    assert "MBR and the SoftDevice" in message


def test_hex_linked_for_another_softdevice_is_refused(tmp_path: Path) -> None:
    """S140 6.1.1 builds start at 0x26000: the bootloader would put them at 0x27000."""
    path = write_hex(tmp_path / "s140v6.hex", {0x26000: DATA})
    assert "data at 0x00026000 lies below the application's range" in image_error(path)
    path = write_hex(tmp_path / "late.hex", {APP + 0x1000: DATA})
    message = image_error(path)
    assert f"first data is at 0x{APP + 0x1000:08X}" in message
    assert f"link the application at 0x{APP:08X}" in message


def test_hex_straddling_the_end_of_the_range_names_the_first_byte_outside(
    tmp_path: Path,
) -> None:
    end = APP + STAGING_CAPACITY
    path = write_hex(tmp_path / "straddle.hex", {APP: DATA, end - 16: bytes(32)})
    assert f"data at 0x{end:08X} is outside" in image_error(path)


def test_far_addresses_never_build_a_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gap between the application and a far address is never filled: the check runs
    first."""
    built: list[int] = []
    original = IntelHex.tobinarray

    def recording(self: IntelHex, *args: object, **kwargs: object) -> object:
        built.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IntelHex, "tobinarray", recording)
    image_error(write_hex(tmp_path / "merged.hex", {APP: DATA, 0x10000000: b"\x02"}))
    assert built == []


def test_a_huge_file_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.bin"
    with path.open("wb") as f:  # sparse: costs no disk, and is never read past its head
        f.truncate(64 * 1024 * 1024)
    reads: list[int] = []
    original = os.read

    def counting(fd: int, count: int) -> bytes:
        reads.append(count)
        return original(fd, count)

    monkeypatch.setattr(os, "read", counting)
    message = image_error(path)
    assert "the image is 67108864 bytes but a SmartBall's staging area holds 491520" in message
    assert sum(reads) <= 512  # only the head that tells the format


def test_a_hex_text_too_long_for_any_image_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.hex"
    with path.open("wb") as f:
        f.write(b":0000000000\n")
        f.truncate(64 * 1024 * 1024)
    message = image_error(path)
    assert "the Intel HEX file is 67108864 bytes, more than any image" in message


# --- signed images (.sbi) ---------------------------------------------------------------------


def _signed(data: bytes = DATA, counter: int = 4) -> bytes:
    from pytest_smartball.contract import signing

    return signing.sign(data, signing.test_key(), (1, 2, 3), counter).encode()


def test_a_signed_image_is_read_as_its_image_and_its_signed_head(tmp_path: Path) -> None:
    from pytest_smartball.contract.manifest import SIGNED_HEAD_SIZE, SignedImage

    raw = _signed()
    path = tmp_path / "fw.sbi"
    path.write_bytes(raw)
    image = load_image(path)
    assert image.format is ImageFormat.SIGNED
    assert image.data == DATA  # what is flashed: the image, not the file
    assert image.signed == SignedImage.decode(raw)
    assert image.signed is not None and image.signed.head == raw[:SIGNED_HEAD_SIZE]
    assert image.manifest is not None and image.manifest.security_counter == 4
    assert "firmware 1.2.3, security counter 4, key " in image.described


def test_a_signed_image_is_recognised_by_its_magic_whatever_its_name(tmp_path: Path) -> None:
    path = tmp_path / "firmware.bin"
    path.write_bytes(_signed())
    assert load_image(path).format is ImageFormat.SIGNED


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "the file was changed after it was signed"),
        (lambda raw: raw[:200] + bytes([raw[200] ^ 0x80]) + raw[201:], "after it was signed"),
        (lambda raw: raw[:-3], "the manifest names a 5000-byte image, the file holds 4997"),
        (lambda raw: raw + b"\x00", "the manifest names a 5000-byte image, the file holds 5001"),
        (lambda raw: raw[:100], "a signed image is at least 120 bytes"),
        (lambda raw: raw[:4] + b"\x07" + raw[5:], "manifest format 7"),
    ],
    ids=["last-byte", "a-byte", "truncated", "extra-byte", "head-only", "format"],
)
def test_a_signed_image_that_is_not_what_its_manifest_names_is_refused(
    tmp_path: Path, change: object, sentence: str
) -> None:
    path = tmp_path / "fw.sbi"
    path.write_bytes(change(_signed()))  # type: ignore[operator]
    message = image_error(path)
    assert sentence in message
    assert message.startswith(f"{path}: a signed image that cannot be flashed")


def test_a_sbi_file_with_a_damaged_magic_is_refused_not_flashed_raw(tmp_path: Path) -> None:
    """Without its magic a damaged signed image sniffs as raw bytes: its head would be
    flashed as part of the image (a v1 device) or called unsigned (a signed-only one)."""
    path = tmp_path / "fw.sbi"
    raw = _signed()
    path.write_bytes(bytes([raw[0] ^ 1]) + raw[1:])
    assert "is named .sbi but does not start with a signed image's magic" in image_error(path)


def test_a_signed_image_whose_image_is_too_large_is_refused_for_that(tmp_path: Path) -> None:
    path = tmp_path / "big.sbi"
    path.write_bytes(_signed(bytes(STAGING_CAPACITY + 4)))
    assert "larger than a SmartBall's" in image_error(path)

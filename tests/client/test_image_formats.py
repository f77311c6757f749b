"""Image intake (issue 21): ELF, UF2 and Nordic DFU packages as the real tools write them,
pipes and devices read in bounded time and memory, and the CLI's refusals before any
connect.

The firmware files are built at test time by Debian's arm-none-eabi-gcc and objcopy, PyPI's
uf2conv (adafruit-uf2) and adafruit-nrfutil (tests/arm_build.py); without the toolchain
those tests skip, under CI=true they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball import contract
from pytest_smartball import image as image_module
from pytest_smartball.cli import main
from pytest_smartball.image import (
    MIN_IMAGE_SIZE,
    STAGING_CAPACITY,
    ImageError,
    load_image,
)
from pytest_smartball.image_formats import ImageFormat

from .. import arm_build

APP = contract.flash_layout().application_start
UF2_FAMILY = 0xADA52840


def image_error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message  # every message names the file
    assert "Traceback" not in message and "\n" not in message  # one sentence
    return message


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> arm_build.Build:
    """The tiny program, built once per module by the real toolchain at 0x27000."""
    return arm_build.build(tmp_path_factory.mktemp("arm"))


# --- ELF ------------------------------------------------------------------------------------

#: Committed fixtures, for machines without the toolchain: tests/arm_build.py's program,
#: built once by arm-none-eabi-gcc 12.2 (``-Os -s -Wl,-z,max-page-size=0x100``, 1.2 KB) and
#: its ``objcopy -O binary``.
DATA = Path(__file__).parents[1] / "data"


def test_the_committed_arm_elf_gives_the_committed_bin() -> None:
    image = load_image(DATA / "smartball-app.elf")
    assert image.data == (DATA / "smartball-app.bin").read_bytes()
    assert image.format is ImageFormat.ELF and image.address == APP
    assert image.entry is not None and APP < image.entry < APP + image.size


def test_the_committed_bin_is_a_raw_image() -> None:
    image = load_image(DATA / "smartball-app.bin")
    assert image.format is ImageFormat.RAW and image.size == 356
    # Its vector table: the initial stack pointer in RAM, the reset handler (Thumb) inside.
    stack, reset = struct.unpack_from("<II", image.data)
    assert 0x20000000 <= stack <= 0x20040000 and APP < reset < APP + image.size and reset & 1


def test_a_real_arm_elf_gives_the_bytes_objcopy_gives(build: arm_build.Build) -> None:
    image = load_image(build.elf)
    assert image.data == build.image  # the code, then .data's initial values (its LMA)
    assert image.size >= MIN_IMAGE_SIZE  # the vector table is there
    assert image.format is ImageFormat.ELF and image.address == APP
    assert image.entry is not None and APP < image.entry < APP + image.size
    assert image.entry & 1  # Reset_Handler is Thumb code
    assert image.described == f"ELF, linked at 0x{APP:08X}, entry 0x{image.entry:08X}"


@pytest.fixture(scope="module")
def gapped(tmp_path_factory: pytest.TempPathFactory) -> arm_build.Build:
    """The program with .data aligned to 1 KiB in flash too (0x27400), past 0x160 bytes of
    code: a gap, as alignment or a linker script's layout leave one."""
    return arm_build.build(tmp_path_factory.mktemp("gapped"), data_align=1024)


def test_an_elf_with_a_gap_gives_the_bytes_objcopy_gives(gapped: arm_build.Build) -> None:
    """objcopy -O binary fills a gap between sections with zeros: the ELF gives the same
    image, so it is flashed and verified with the CRC of the build's own .bin."""
    image = load_image(gapped.elf)
    assert image.size == 0x404 and image.data[0x200:0x400] == bytes(0x200)
    assert image.data == gapped.image


def test_uf2conv_of_a_hex_with_a_gap_is_accepted(gapped: arm_build.Build, tmp_path: Path) -> None:
    """uf2conv writes no block for a 256-byte page the hex leaves empty (0x27200 to
    0x273FF here): the numbered blocks are all there, and the gap is erased flash."""
    path = arm_build.uf2(gapped.hex, tmp_path / "gapped.uf2")
    image = load_image(path)
    assert image.address == APP and image.size == 0x500  # the last block: 256 bytes
    assert image.data[:0x160] == gapped.image[:0x160]  # the code
    assert image.data[0x200:0x400] == b"\xff" * 0x200  # no block: erased flash
    assert image.data[0x400:0x404] == gapped.image[0x400:]  # .data's initial values


def test_an_elf_named_bin_is_read_as_elf(build: arm_build.Build, tmp_path: Path) -> None:
    renamed = tmp_path / "firmware.bin"
    shutil.copyfile(build.elf, renamed)
    image = load_image(renamed)
    assert image.format is ImageFormat.ELF and image.data == build.image


def test_an_elf_is_read_lazily_not_whole(build: arm_build.Build, tmp_path: Path) -> None:
    """A debug build's ELF is megabytes; only headers and segments are read."""
    big = tmp_path / "debug.elf"
    shutil.copyfile(build.elf, big)
    with big.open("ab") as f:  # 64 MiB past the segments (sparse): never read
        f.truncate(64 * 1024 * 1024)
    assert load_image(big).data == build.image


@pytest.mark.parametrize("name", ["fw.elf", "fw.bin", "fw"])
def test_a_program_for_this_computer_is_refused(tmp_path: Path, name: str) -> None:
    """Issue 21: `cp /bin/true fw.elf` was flashed as raw bytes and reported a success."""
    true = shutil.which("true")
    assert true is not None
    path = tmp_path / name
    shutil.copyfile(true, path)
    message = image_error(path)
    assert "it is an ELF file for" in message
    assert "not for the nRF52840's 32-bit ARM Cortex-M4" in message
    assert message.endswith("not a computer's program")


def test_an_elf_for_another_microcontroller_is_not_called_a_program_for_this_computer(
    tmp_path: Path,
) -> None:
    """An ESP32-C3's ELF (RISC-V) is another board's firmware, not a host program."""
    raw = bytearray((DATA / "smartball-app.elf").read_bytes())
    struct.pack_into("<H", raw, 18, 243)  # e_machine: EM_RISCV
    path = tmp_path / "esp32c3.elf"
    path.write_bytes(bytes(raw))
    message = image_error(path)
    assert "it is an ELF file for RISC-V (EM_RISCV, 32-bit little-endian)" in message
    assert message.endswith("(arm-none-eabi-gcc), not another chip's")


def test_an_elf_object_file_is_refused(tmp_path: Path) -> None:
    arm_build.require_toolchain()
    source = tmp_path / "app.c"
    source.write_text(arm_build.APP_C)
    obj = tmp_path / "app.o"
    arm_build._run(arm_build.GCC, "-mcpu=cortex-m4", "-mthumb", "-c", "-o", str(obj), str(source))
    assert "ELF object file (.o), not a linked program" in image_error(obj)


def test_an_elf_linked_for_another_layout_is_refused(tmp_path: Path) -> None:
    """Built for S140 6.1.1 (0x26000): the bootloader would copy it to 0x27000."""
    built = arm_build.build(tmp_path, origin=0x26000)
    message = image_error(built.elf)
    assert "data at 0x00026000 lies below the application's range (0x00027000" in message
    message = image_error(built.hex)  # the same program as objcopy's hex
    assert "data at 0x00026000 lies below the application's range (0x00027000" in message


def test_an_elf_with_uicr_data_names_the_address_and_the_range(tmp_path: Path) -> None:
    built = arm_build.build(tmp_path, uicr=True)
    for path in (built.elf, built.hex):
        message = image_error(path)
        assert "data at 0x1000120C is outside the application's range" in message
        assert "(0x00027000 to 0x0009EFFF" in message


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (10, "not a valid ELF file: its headers are cut short or damaged"),
        (40, "not a valid ELF file: its headers are cut short or damaged"),
        (None, "its segment at 0x00027000 should hold"),  # cut inside the code
    ],
)
def test_a_truncated_elf_is_refused(
    build: arm_build.Build, tmp_path: Path, length: int | None, expected: str
) -> None:
    from elftools.elf.elffile import ELFFile

    if length is None:
        with build.elf.open("rb") as f:
            code = next(ELFFile(f).iter_segments(type="PT_LOAD"))
            length = code["p_offset"] + 100
    cut = tmp_path / "cut.elf"
    cut.write_bytes(build.elf.read_bytes()[:length])
    assert expected in image_error(cut)


def test_an_elf_whose_entry_point_is_outside_its_image_is_refused(tmp_path: Path) -> None:
    """e_entry in the bootloader (0x000F4000): the file is not (only) this application."""
    raw = bytearray((DATA / "smartball-app.elf").read_bytes())
    struct.pack_into("<I", raw, 24, 0x000F4001)  # e_entry, Thumb
    path = tmp_path / "entry.elf"
    path.write_bytes(bytes(raw))
    message = image_error(path)
    assert "its entry point (e_entry) is 0x000F4001, outside the image's data" in message


def test_an_elf_announcing_countless_program_headers_is_refused_at_once(tmp_path: Path) -> None:
    """e_phnum 0xFFFF (PN_XNUM) takes the count from section 0's sh_info: 100,000 empty
    headers here, 2**31 in the file that kept the reader busy for minutes, one by one."""
    raw = bytearray((DATA / "smartball-app.elf").read_bytes())
    (shoff,) = struct.unpack_from("<I", raw, 32)
    struct.pack_into("<I", raw, 28, len(raw))  # e_phoff: the zeros past the file's end
    struct.pack_into("<H", raw, 44, 0xFFFF)  # e_phnum: PN_XNUM
    struct.pack_into("<I", raw, shoff + 28, 100_000)  # section 0's sh_info: the real count
    path = tmp_path / "countless.elf"
    path.write_bytes(bytes(raw) + bytes(32 * 100_000))
    message = image_error(path)
    assert "it has 100000 program headers; a firmware ELF has a few" in message


# --- Intel HEX from objcopy -----------------------------------------------------------------


def test_objcopys_hex_with_its_start_address_is_accepted(build: arm_build.Build) -> None:
    text = build.hex.read_text()
    assert ":02000002" in text or ":02000004" in text  # an extended address record
    assert any(line[7:9] in ("03", "05") for line in text.splitlines())  # a start address
    image = load_image(build.hex)
    assert image.data == build.image and image.format is ImageFormat.INTEL_HEX
    assert image.entry == load_image(build.elf).entry  # the same entry point as the ELF's


@pytest.mark.parametrize("name", ["app.hex", "app.bin"])
def test_objcopys_hex_saved_with_a_byte_order_mark_is_read_as_hex(
    build: arm_build.Build, tmp_path: Path, name: str
) -> None:
    """A hex opened and saved in a Windows editor begins with a UTF-8 byte order mark: as
    .hex it was refused for a non-text byte, under any other name flashed as raw bytes."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + build.hex.read_bytes())
    image = load_image(path)
    assert image.format is ImageFormat.INTEL_HEX and image.data == build.image


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


# --- Nordic DFU packages ------------------------------------------------------------------


def test_a_dfu_package_gives_its_application(build: arm_build.Build, tmp_path: Path) -> None:
    path = arm_build.dfu_zip(tmp_path / "app.zip", application=build.hex)
    image = load_image(path)
    assert image.data == build.image and image.format is ImageFormat.DFU_ZIP
    renamed = path.rename(tmp_path / "app.bin")  # by content, not by name
    assert load_image(renamed).data == build.image


@pytest.mark.parametrize("part", ["bootloader", "softdevice"])
def test_a_bootloader_or_softdevice_package_is_refused(
    build: arm_build.Build, tmp_path: Path, part: str
) -> None:
    path = arm_build.dfu_zip(tmp_path / f"{part}.zip", **{part: build.hex})
    message = image_error(path)
    assert f"it is a DFU package that updates the {part}, not only the application" in message


def test_a_package_with_the_application_and_the_bootloader_is_refused(
    build: arm_build.Build, tmp_path: Path
) -> None:
    path = arm_build.dfu_zip(tmp_path / "both.zip", application=build.hex, bootloader=build.hex)
    assert "updates the bootloader, not only the application" in image_error(path)


def make_zip(path: Path, files: dict[str, bytes], *, deflate: bool = True) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def manifest(**application: Any) -> bytes:
    return json.dumps({"manifest": {"application": application}}).encode()


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    bomb = bytes(64 * 1024 * 1024)  # 64 MiB of zeros deflate to ~64 KB
    path = make_zip(
        tmp_path / "bomb.zip", {"manifest.json": manifest(bin_file="a.bin"), "a.bin": bomb}
    )
    assert path.stat().st_size < 1024 * 1024
    message = image_error(path)
    assert f"is 67108864 bytes, more than the staging area's {STAGING_CAPACITY} bytes" in message


def test_a_member_that_unpacks_beyond_its_header_is_refused(tmp_path: Path) -> None:
    """The size checked is the header's; unpacking stops there and the CRC-32 then fails."""
    path = make_zip(
        tmp_path / "liar.zip",
        {"manifest.json": manifest(bin_file="a.bin"), "a.bin": bytes(400_000)},
    )
    raw = bytearray(path.read_bytes())
    # The central directory's uncompressed size of a.bin, lowered to 1000 bytes: a liar.
    entries = [m.start() for m in re.finditer(b"PK\x01\x02", raw)]
    index = next(i for i in entries if raw[i + 46 : i + 51] == b"a.bin")
    struct.pack_into("<I", raw, index + 24, 1000)
    path.write_bytes(bytes(raw))
    message = image_error(path, max_size=2000)
    assert "its a.bin cannot be read (Bad CRC-32 for file 'a.bin')" in message


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"app.bin": bytes(1000)}, "a zip archive without manifest.json, not a Nordic DFU package"),
        ({"manifest.json": b"{not json"}, "manifest.json is not valid JSON"),
        ({"manifest.json": b'{"other": 1}'}, "has no 'manifest' object"),
        ({"manifest.json": manifest(dat_file="a.dat")}, "names no application image"),
        ({"manifest.json": manifest(bin_file="gone.bin")}, "gone.bin is named by the manifest"),
        (
            {"manifest.json": manifest(bin_file="a.bin", init_packet_data={"firmware_crc16": 1}),
             "a.bin": bytes(1000)},
            "does not match the CRC-16 its manifest gives (0x0001)",
        ),
    ],
    ids=["no-manifest", "bad-json", "no-manifest-object", "no-application", "missing-bin", "crc16"],
)  # fmt: skip
def test_broken_dfu_packages_are_refused(
    tmp_path: Path, files: dict[str, bytes], expected: str
) -> None:
    assert expected in image_error(make_zip(tmp_path / "pkg.zip", files))


def test_a_damaged_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.zip"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    assert "not a valid zip archive" in image_error(path)


def test_a_zip_needing_an_unknown_zip_version_is_refused(tmp_path: Path) -> None:
    """Found by mutating adafruit-nrfutil's package: zipfile raised NotImplementedError
    ("zip file version 10.6") while opening the archive, a traceback instead of a sentence."""
    path = make_zip(tmp_path / "v106.zip", {"manifest.json": manifest(bin_file="a.bin")})
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<H", raw, central + 6, 106)  # "version needed to extract": 10.6
    path.write_bytes(bytes(raw))
    message = image_error(path)
    assert "not a valid zip archive (zip file version 10.6)" in message


@pytest.mark.parametrize(
    ("command", "name", "what"),
    [
        (["gzip", "-k", "-c"], "app.elf.gz", "a gzip-compressed file"),
        (["xz", "-k", "-c"], "app.elf.xz", "an xz-compressed file"),
        (["bzip2", "-k", "-c"], "app.elf.bz2", "a bzip2-compressed file"),
        (["tar", "-c", "-f", "-"], "app.tar", "a tar archive"),
    ],
    ids=["gzip", "xz", "bzip2", "tar"],
)
def test_a_compressed_or_archived_image_is_refused_not_flashed_raw(
    tmp_path: Path, command: list[str], name: str, what: str
) -> None:
    """A CI artefact (firmware.elf.gz, a tarball) has no image magic: it was flashed as raw
    bytes. A real vector table's first byte (the stack pointer's, 8-byte aligned) is never
    one of these formats' first bytes, and a tar's magic lies at byte 257."""
    import subprocess

    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed")
    source = tmp_path / "app.elf"
    shutil.copyfile(DATA / "smartball-app.elf", source)
    packed = subprocess.run(
        [*command, source.name], cwd=tmp_path, capture_output=True, check=True, timeout=60
    ).stdout
    padding = bytes(STAGING_CAPACITY)  # a large one is not called an oversized image
    for path, data in ((tmp_path / name, packed), (tmp_path / "renamed.bin", packed + padding)):
        path.write_bytes(data)
        message = image_error(path)
        assert f"it is {what}, not a firmware image: unpack it" in message


# --- pipes and devices: bounded time and memory -------------------------------------------


def test_dev_zero_is_refused_unopened(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: `flash /dev/zero` allocated without bound (2.5 GB in 3 s)."""
    opened: list[str] = []
    original = os.open

    def recording(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording)
    message = image_error(Path("/dev/zero"))
    assert "is a character device, not a file: it is not read" in message
    assert "/dev/zero" not in opened


def test_a_fifo_nobody_writes_to_is_given_up_on(tmp_path: Path) -> None:
    """Issue 21: a FIFO hung silently. Opened without blocking, then waited on for at most
    the silence bound (here 0 s, so the test does not wait at all)."""
    fifo = tmp_path / "fw.fifo"
    os.mkfifo(fifo)
    message = image_error(fifo, pipe_silence_s=0)
    assert "nothing came through the pipe for 0 s (is anything writing to it?)" in message
    assert image_module.PIPE_SILENCE_S == 10.0 and image_module.PIPE_TOTAL_S == 60.0


def test_a_dash_for_standard_input_gets_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cat fw.hex | smartball-ota flash -` is the Unix habit; the image's path is read."""
    monkeypatch.chdir(tmp_path)  # no file named "-" here
    assert (
        image_error(Path("-")) == "-: no such file (to read the image from a pipe, give /dev/stdin)"
    )


def test_an_image_from_a_pipe_is_read(build: arm_build.Build) -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, build.hex.read_bytes())  # fits the pipe's buffer
        os.close(write_end)
        image = load_image(Path(f"/dev/fd/{read_end}"))
    finally:
        os.close(read_end)
    assert image.data == build.image and image.format is ImageFormat.INTEL_HEX


@pytest.mark.parametrize("head", [b"", b"\x7fELF"], ids=["raw", "elf"])
def test_an_endless_pipe_is_read_no_further_than_the_bound(head: bytes) -> None:
    """Raw bytes: the staging area + 1; an ELF from a pipe: MAX_CONTAINER_BYTES + 1."""
    read_end, write_end = os.pipe()
    written = 0
    limit = 64 * 1024 * 1024  # the writer's own bound, far beyond what may be read

    def writer() -> None:
        nonlocal written
        chunk = bytes(1 << 16)
        try:
            written += os.write(write_end, head)
            while written < limit:
                written += os.write(write_end, chunk)
        except BrokenPipeError:
            pass  # the reader closed: it read all it was going to
        finally:
            os.close(write_end)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        message = image_error(Path(f"/dev/fd/{read_end}"), pipe_silence_s=60)
    finally:
        os.close(read_end)
        thread.join(timeout=60)
    assert not thread.is_alive()
    bound = STAGING_CAPACITY if not head else image_module.MAX_CONTAINER_BYTES
    assert f"more than {bound} bytes" in message
    if head:
        assert "an ELF from a pipe is read whole" in message
        assert "give the ELF file's path" in message
    # What the writer got rid of: what was read, plus at most the pipe's buffer and a chunk.
    assert written <= bound + 1 + 2 * (1 << 16) + 1024 * 1024
    assert written < limit


# --- the CLI: one sentence, exit 2, before any connect ------------------------------------


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's `run` is what connects: a refused image must never get there."""

    def connect(*args: object) -> int:
        raise AssertionError("the CLI went on to connect with a refused image")

    monkeypatch.setattr("pytest_smartball.cli.run", connect)


def cli_refusal(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> str:
    code = main(["flash", "--sim", "--sim-trust", "none", str(path), *extra])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"smartball-ota: {path}: "), err
    assert "Traceback" not in out + err
    return lines[0]


@pytest.mark.usefixtures("no_connect")
def test_cli_refuses_a_program_for_this_computer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    true = shutil.which("true")
    assert true is not None
    path = tmp_path / "fw.bin"
    shutil.copyfile(true, path)
    assert "it is an ELF file for" in cli_refusal(capsys, path)


@pytest.mark.usefixtures("no_connect")
@pytest.mark.parametrize("size", [0x100000, 0x100000 + 1, STAGING_CAPACITY + 1])
def test_cli_refuses_an_image_over_the_staging_area_before_connecting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, size: int
) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes([0x5A]) * size)
    line = cli_refusal(capsys, path)
    assert f"the image is {size} bytes but a SmartBall's staging area holds 491520 bytes" in line


@pytest.mark.usefixtures("no_connect")
def test_cli_refuses_dev_zero_and_a_silent_fifo(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "is a character device" in cli_refusal(capsys, Path("/dev/zero"))
    monkeypatch.setattr(image_module, "PIPE_SILENCE_S", 0.0)
    fifo = tmp_path / "fw.fifo"
    os.mkfifo(fifo)
    assert "nothing came through the pipe" in cli_refusal(capsys, fifo)


@pytest.mark.usefixtures("no_connect")
def test_cli_refuses_a_tiny_image_and_says_why(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "tiny.bin"
    path.write_bytes(b"\x01\x02\x03\x04\x05")
    line = cli_refusal(capsys, path, "--json")  # --json too: the sentence on stderr
    assert "too small to be firmware" in line and "at least 256 bytes" in line


@pytest.mark.usefixtures("no_connect")
def test_cli_refuses_a_bootloader_package(
    capsys: pytest.CaptureFixture[str], build: arm_build.Build, tmp_path: Path
) -> None:
    path = arm_build.dfu_zip(tmp_path / "bl.zip", bootloader=build.hex)
    assert "updates the bootloader" in cli_refusal(capsys, path)


@pytest.mark.parametrize("kind", ["elf", "uf2", "zip"])
def test_cli_flashes_real_tool_output_and_says_which_format(
    capsys: pytest.CaptureFixture[str], build: arm_build.Build, tmp_path: Path, kind: str
) -> None:
    if kind == "elf":
        path, expected = build.elf, build.image
    elif kind == "uf2":
        path = arm_build.uf2(build.bin, tmp_path / "app.uf2")
        expected = build.image + bytes(-len(build.image) % 256)
    else:
        path, expected = arm_build.dfu_zip(tmp_path / "app.zip", application=build.hex), build.image
    code = main(["flash", "--sim", "--sim-trust", "none", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["success"] is True
    assert data["image_format"] == load_image(path).format.value
    assert data["sim_active_image"]["size"] == len(expected)
    assert data["info_after"]["active_image_size"] == len(expected)
    code = main(["flash", "--sim", "--sim-trust", "none", str(path)])
    _, err = capsys.readouterr()  # the first line, "Flashing PATH (FORMAT ...): ...", on stderr
    assert code == 0 and f"Flashing {path} ({load_image(path).described}): " in err

"""Image intake (issue 21) of ELF files and objcopy's Intel HEX: the bytes objcopy gives,
and every ELF that is not an application for this device refused in one sentence.

The firmware files are built at test time by Debian's arm-none-eabi-gcc and objcopy
(tests/arm_build.py); without the toolchain those tests skip, under CI=true they fail.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from pytest_smartball.image import MIN_IMAGE_SIZE, load_image
from pytest_smartball.image_formats import ImageFormat

from .. import arm_build
from .image_intake import APP, DATA, image_error

# --- ELF ------------------------------------------------------------------------------------


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

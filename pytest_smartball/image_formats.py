"""The image formats a build leaves on disk, read into the bytes a SmartBall stages.

Pure: each reader takes bytes (or, for ELF, a seekable binary stream) and returns the
image, or raises :class:`FormatError` with one sentence saying what is wrong and what to
do; :func:`pytest_smartball.image.load_image` adds the file's name and decides, from the
content, which reader runs. Every size is checked before the bytes it counts are read or
built, so no file makes these readers allocate more than the staging area holds.

- **Intel HEX**: data, extended segment / linear address records (where the data goes)
  and start segment / linear address records (the entry point: it must lie inside the
  image, else the hex is not of this application).
- **ELF**: the loadable segments (``PT_LOAD`` with file contents, at their load address,
  like ``objcopy -O binary``), for 32-bit little-endian ARM executables only; the entry
  point is checked like a hex's start address.
- **UF2**: 512-byte blocks with the nRF52840 family ID, every block the file announces
  once, assembled by target address without overlaps (uf2conv writes no block for an
  empty 256-byte page: that gap is erased flash).
- **Nordic DFU .zip**: the ``application`` image named by ``manifest.json``; packages that
  update the bootloader or SoftDevice are refused.

Every address-bearing image must start at the application's address (the bootloader
copies an image's first byte there) and end inside the staging area's size
(:func:`place`). A gap between a hex's or a UF2's parts is erased flash (``0xFF``, as
nrfutil and a UF2 bootloader leave it); between an ELF's, zeros, as ``objcopy -O binary``
writes them, so an ELF gives the same bytes and CRC as the ``.bin`` its build writes.
"""

from __future__ import annotations

import enum
import io
import json
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import contract
from .contract.codec import crc16_ccitt_false
from .contract.manifest import ManifestError, SignedImage, is_signed_image


class FormatError(ValueError):
    """The file is not a usable image; the message is one sentence without the file name."""


class ImageFormat(enum.Enum):
    """What a file was read as (the value is what the CLI prints)."""

    RAW = "raw binary"
    INTEL_HEX = "Intel HEX"
    ELF = "ELF"
    UF2 = "UF2"
    DFU_ZIP = "Nordic DFU package"
    #: A signed image file (``.sbi``, what ``smartball-ota sign`` writes): manifest,
    #: signature, image (docs/protocol.md section 16).
    SIGNED = "signed image"


@dataclass(frozen=True, slots=True)
class Parsed:
    data: bytes
    format: ImageFormat
    #: Where the image's first byte goes (address-bearing formats), and its entry point.
    address: int | None = None
    entry: int | None = None
    #: A signed image: its manifest and signature (``data`` is the image they sign).
    signed: SignedImage | None = None


ELF_MAGIC = b"\x7fELF"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
UF2_MAGIC_START0 = 0x0A324655  # "UF2\n"
UF2_MAGIC_START1 = 0x9E5D5157
UF2_MAGIC_END = 0x0AB16F30
UF2_BLOCK = 512
UF2_MAX_PAYLOAD = 476
UF2_FLAG_NOT_MAIN_FLASH = 0x00000001
UF2_FLAG_FILE_CONTAINER = 0x00001000
UF2_FLAG_FAMILY_ID = 0x00002000
#: The nRF52840's UF2 family (Adafruit's nRF52 bootloader, the XIAO nRF52840's).
UF2_FAMILY_NRF52840 = 0xADA52840
#: Families a wrong UF2 is most likely for, to name them in the refusal.
UF2_FAMILIES = {
    0x1B57745F: "nRF52 (nRF52832)",
    0x621E937A: "nRF52833",
    0xE48BFF56: "Raspberry Pi RP2040",
    0xE48BFF59: "Raspberry Pi RP2350",
    0x68ED2B88: "Microchip SAMD21",
    0x55114460: "Microchip SAMD51",
    0x57755A57: "STM32F4",
    0xBFDD4EEE: "ESP32-S2",
    0xC47E5767: "ESP32-S3",
    0x00FF6919: "STM32L4",
}


#: What a Windows editor may put before a text file's first line (then it is still a hex).
UTF8_BOM = b"\xef\xbb\xbf"


def is_intel_hex_start(head: bytes) -> bool:
    """The first line is an Intel HEX record's text: ``:`` and hex digits to the line's end
    (after a UTF-8 byte order mark, if any)."""
    line = head.removeprefix(UTF8_BOM).split(b"\n", 1)[0].rstrip(b"\r")
    digits = line[1:]
    return (
        line[:1] == b":"
        and len(digits) >= 10
        and all(c in b"0123456789ABCDEFabcdef" for c in digits)
    )


def sniff(head: bytes) -> ImageFormat | None:
    """The format the file's first bytes show (None: no magic, raw unless it is text)."""
    if head.startswith(ELF_MAGIC):
        return ImageFormat.ELF
    if is_signed_image(head):
        return ImageFormat.SIGNED
    if len(head) >= 8 and struct.unpack_from("<II", head) == (UF2_MAGIC_START0, UF2_MAGIC_START1):
        return ImageFormat.UF2
    if head[:4] in ZIP_MAGICS:
        return ImageFormat.DFU_ZIP
    if is_intel_hex_start(head):
        return ImageFormat.INTEL_HEX
    return None


#: What a file with no image magic may be instead of a raw image: compressed files and
#: archives (a CI artefact such as firmware.elf.gz). None of these can begin a real raw
#: image, whose first word is the initial stack pointer: 8-byte aligned, in RAM (only
#: zstd's first byte is aligned, and its word 0xFD2FB528 is no RAM address).
PACKED_MAGICS = (
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
)
_TAR_MAGIC_OFFSET = 257  # "ustar" in a tar header, within the 512 bytes sniffed


def packed_kind(head: bytes) -> str | None:
    """What compressed file or archive ``head`` begins, if any (a raw image begins none)."""
    if head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "a tar archive"
    return next((what for magic, what in PACKED_MAGICS if head.startswith(magic)), None)


# --- placing address-bearing data ------------------------------------------------------------

#: What a gap between a hex's or a UF2's parts holds: erased flash.
ERASED = 0xFF
#: What ``objcopy -O binary`` (without --gap-fill) writes between an ELF's sections.
OBJCOPY_GAP_FILL = 0x00


def check_spans(spans: Iterable[tuple[int, int]], capacity: int, *, complete: bool = True) -> None:
    """Every ``(address, length)`` inside the application's range, and (when the spans are
    the ``complete`` image) the lowest at its start.

    Checked on addresses alone, before any buffer is built: a merged hex with UICR data at
    0x10001014 would otherwise span 256 MB."""
    layout = contract.flash_layout()
    start, end = layout.application_start, layout.application_start + capacity
    spans = sorted((a, n) for a, n in spans if n > 0)
    if not spans:
        return
    where = (
        f"the application's range (0x{start:08X} to 0x{end - 1:08X}: the {capacity}-byte "
        "staging area from the address the bootloader copies an image to)"
    )
    lowest = spans[0][0]
    if lowest < start:
        raise FormatError(
            f"data at 0x{lowest:08X} lies below {where}; below 0x{start:08X} are the MBR and "
            "the SoftDevice, so this file holds more than the application (a merged hex?) or "
            f"was linked for another layout: build the application alone, linked at 0x{start:08X}"
        )
    for address, length in spans:
        if address + length > end:
            outside = max(address, end)
            last = max(a + n for a, n in spans) - 1
            hint = (
                "that is not flash at all (UICR or another memory), so this file holds more "
                "than the application: build the application's image alone"
                if outside >= layout.flash_size
                else "build a smaller image (and leave any bootloader or settings data out)"
            )
            raise FormatError(
                f"data at 0x{outside:08X} is outside {where}; the image would span "
                f"{last - start + 1} bytes: {hint}"
            )
    if lowest > start and complete:
        raise FormatError(
            f"the image's first data is at 0x{lowest:08X}, but a SmartBall's application "
            f"starts at 0x{start:08X}, where the bootloader copies an image's first byte (its "
            f"vector table): link the application at 0x{start:08X}"
        )


def place(
    segments: Iterable[tuple[int, bytes]], capacity: int, *, fill: int = ERASED
) -> tuple[bytes, int | None]:
    """The image the segments make from the application's start, gaps filled with ``fill``
    (erased flash unless told otherwise); overlaps are refused. Returns the bytes and their
    address (None when there is no data)."""
    parts = sorted((a, d) for a, d in segments if d)
    check_spans(((a, len(d)) for a, d in parts), capacity)
    if not parts:
        return b"", None
    start = parts[0][0]
    end = start
    for address, data in parts:
        if address < end:
            raise FormatError(
                f"two parts of the image overlap at 0x{address:08X}: the file is inconsistent; "
                "rebuild it"
            )
        end = address + len(data)
    image = bytearray(bytes([fill]) * (end - start))
    for address, data in parts:
        image[address - start : address - start + len(data)] = data
    return bytes(image), start


def check_entry(entry: int | None, address: int | None, size: int, what: str) -> None:
    """An entry point (a hex's start address record, an ELF's ``e_entry``) must lie in the
    image: one outside means the file is not (only) this application. 0 means none."""
    if not entry or address is None:
        return
    code = entry & ~1  # the Thumb bit
    if not address <= code < address + size:
        raise FormatError(
            f"its {what} is 0x{entry:08X}, outside the image's data (0x{address:08X} to "
            f"0x{address + size - 1:08X}): the file's entry point is not in this application; "
            "rebuild it"
        )


# --- Intel HEX ----------------------------------------------------------------------------


def read_intel_hex(raw: bytes, capacity: int) -> Parsed:
    from intelhex import IntelHex, IntelHexError

    raw = raw.removeprefix(UTF8_BOM)
    bad = next((i for i, b in enumerate(raw) if b > 0x7F), None)
    if bad is not None:
        line = raw.count(b"\n", 0, bad) + 1
        raise FormatError(
            f"not a valid Intel HEX file: line {line} holds a byte that is not text "
            f"(0x{raw[bad]:02X} at offset {bad}); Intel HEX is ASCII text: rebuild the file"
        )
    text = raw.decode("ascii")
    if not is_intel_hex_start(raw):
        raise FormatError(
            "not a valid Intel HEX file: line 1 is not a record (':' and hex digits); "
            "rebuild the file, or give the raw .bin"
        )
    ih = IntelHex()
    try:
        ih.loadhex(io.StringIO(text))
    except IntelHexError as exc:
        message = str(exc)
        raise FormatError(
            f"not a valid Intel HEX file: {message[:1].lower()}{message[1:]}"
        ) from None
    # intelhex stops quietly at the end of the text: without the EOF record a file cut
    # short at a line boundary would load as a shorter image with a CRC to match.
    if not any(_is_eof_record(line) for line in text.splitlines()):
        raise FormatError(
            "not a valid Intel HEX file: no end-of-file record (:00000001FF); the file is truncated"
        )
    spans = [(s, e - s) for s, e in ih.segments()]
    check_spans(spans, capacity)  # before filling any gap
    data, address = place(((s, bytes(ih.tobinarray(start=s, size=n))) for s, n in spans), capacity)
    entry = _hex_entry(ih.start_addr)
    record = "start linear address record (type 05)"
    if ih.start_addr and "EIP" not in ih.start_addr:
        record = "start segment address record (type 03, CS:IP)"
    check_entry(entry, address, len(data), record)
    return Parsed(data, ImageFormat.INTEL_HEX, address, entry)


def _hex_entry(start_addr: dict[str, int] | None) -> int | None:
    if not start_addr:
        return None
    if "EIP" in start_addr:
        return start_addr["EIP"]
    return start_addr.get("CS", 0) * 16 + start_addr.get("IP", 0)


def _is_eof_record(line: str) -> bool:
    line = line.strip()
    return line.startswith(":") and len(line) >= 11 and line[1:3] == "00" and line[7:9] == "01"


# --- ELF ------------------------------------------------------------------------------------


#: Machines whose ELF files are programs for a computer (`cp /bin/true fw.elf`), not firmware.
COMPUTER_MACHINES = frozenset({"EM_X86_64", "EM_386", "EM_AARCH64", "EM_PPC64", "EM_S390"})
#: A linker script makes one program header per region and kind (code, initialised data,
#: perhaps a no-init area): far fewer than this. The bound keeps a damaged header count
#: (e_phnum, or section 0's sh_info behind PN_XNUM: up to 2**32 - 1) from being walked.
ELF_MAX_SEGMENTS = 256


def read_elf(stream: BinaryIO, capacity: int) -> Parsed:
    """The loadable segments of a 32-bit ARM executable, read lazily from ``stream``: the
    headers and the segments' bytes, never the debug sections (often megabytes)."""
    try:
        segments = _elf_segments(stream, capacity)
    except FormatError:
        raise
    except Exception:  # pyelftools raises many types (its own, construct's) on damaged input
        raise FormatError(
            "not a valid ELF file: its headers are cut short or damaged; rebuild it"
        ) from None
    entry, parts = segments
    data, address = place(parts, capacity, fill=OBJCOPY_GAP_FILL)
    if not data:
        raise FormatError(
            "the ELF file has no loadable data (no PT_LOAD segment with contents): it is "
            "not a firmware image; give the application's linked ELF"
        )
    check_entry(entry, address, len(data), "entry point (e_entry)")
    return Parsed(data, ImageFormat.ELF, address, entry)


def _elf_segments(stream: BinaryIO, capacity: int) -> tuple[int, list[tuple[int, bytes]]]:
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(stream)
    machine = elf["e_machine"]
    if elf.elfclass != 32 or not elf.little_endian or machine != "EM_ARM":
        bits = f"{elf.elfclass}-bit {'little' if elf.little_endian else 'big'}-endian"
        other = "a computer's program" if machine in COMPUTER_MACHINES else "another chip's"
        raise FormatError(
            f"it is an ELF file for {elf.get_machine_arch()} ({machine}, {bits}), not for the "
            "nRF52840's 32-bit ARM Cortex-M4: give the ELF the SmartBall firmware's build "
            f"wrote (arm-none-eabi-gcc), not {other}"
        )
    kind = elf["e_type"]
    if kind == "ET_REL":
        raise FormatError(
            "it is an ELF object file (.o), not a linked program: link it into the "
            "application's ELF first"
        )
    if kind != "ET_EXEC":
        raise FormatError(
            f"it is an ELF file of type {kind}, not an executable: give the application's "
            "linked ELF"
        )
    count = elf.num_segments()  # with e_phnum 0xFFFF, section 0's sh_info: up to 2**32 - 1
    if count > ELF_MAX_SEGMENTS:
        raise FormatError(
            f"it has {count} program headers; a firmware ELF has a few (at most "
            f"{ELF_MAX_SEGMENTS} are read): the file is damaged; rebuild it"
        )
    parts: list[tuple[int, bytes]] = []
    total = 0
    for segment in elf.iter_segments():
        size = segment["p_filesz"]
        if segment["p_type"] != "PT_LOAD" or size == 0:
            continue  # .bss and the stack take no bytes in flash
        address = segment["p_paddr"]
        total += size
        if total > capacity:
            raise FormatError(
                f"its loadable segments hold more than {capacity} bytes (the segment at "
                f"0x{address:08X} brings them to {total}), more than the staging area holds: "
                "build a smaller image"
            )
        check_spans([(address, size)], capacity, complete=False)  # before reading it
        data = segment.data()
        if len(data) != size:
            raise FormatError(
                f"its segment at 0x{address:08X} should hold {size} bytes but the file ends "
                f"after {len(data)}: the file is truncated; rebuild it"
            )
        parts.append((address, data))
    return elf["e_entry"], parts


# --- UF2 ------------------------------------------------------------------------------------

_UF2_HEADER = struct.Struct("<8I")


def read_uf2(raw: bytes, capacity: int) -> Parsed:
    if len(raw) % UF2_BLOCK:
        raise FormatError(
            f"not a valid UF2 file: {len(raw)} bytes is not a whole number of {UF2_BLOCK}-byte "
            "blocks (truncated?); rebuild it"
        )
    count = len(raw) // UF2_BLOCK  # bounded: the caller read at most MAX_CONTAINER_BYTES
    parts: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    total_blocks: int | None = None
    for index in range(count):
        block = raw[index * UF2_BLOCK : (index + 1) * UF2_BLOCK]
        magic0, magic1, flags, address, size, number, blocks, family = _UF2_HEADER.unpack_from(
            block
        )
        (magic_end,) = struct.unpack_from("<I", block, UF2_BLOCK - 4)
        where = f"block {index} (byte {index * UF2_BLOCK})"
        if (magic0, magic1, magic_end) != (UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END):
            raise FormatError(
                f"not a valid UF2 file: {where} lacks the UF2 magic numbers; the file is "
                "damaged or not UF2: rebuild it"
            )
        if flags & UF2_FLAG_NOT_MAIN_FLASH:
            raise FormatError(
                f"{where} is marked 'not main flash' (flag 0x00000001): this UF2 carries more "
                "than an application image; convert the application's .bin or .hex alone"
            )
        if flags & UF2_FLAG_FILE_CONTAINER:
            raise FormatError(
                f"{where} is a file-container block (flag 0x00001000), not flash contents: "
                "this UF2 is not a firmware image"
            )
        if not flags & UF2_FLAG_FAMILY_ID:
            raise FormatError(
                f"{where} names no family ID: a SmartBall takes UF2 files for the nRF52840 "
                f"(family 0x{UF2_FAMILY_NRF52840:08X}); convert with uf2conv -f "
                f"0x{UF2_FAMILY_NRF52840:08X}"
            )
        if family != UF2_FAMILY_NRF52840:
            name = UF2_FAMILIES.get(family, "another chip")
            raise FormatError(
                f"{where} is for family 0x{family:08X} ({name}), not the nRF52840 "
                f"(0x{UF2_FAMILY_NRF52840:08X}): this is another board's firmware"
            )
        if size > UF2_MAX_PAYLOAD:
            raise FormatError(
                f"not a valid UF2 file: {where} claims {size} data bytes, more than the "
                f"{UF2_MAX_PAYLOAD} a block holds; rebuild it"
            )
        if total_blocks is None:
            total_blocks = blocks
        if blocks != total_blocks or number >= blocks or number in seen:
            raise FormatError(
                f"not a valid UF2 file: {where} is numbered {number} of {blocks}, which does "
                f"not fit the file's other blocks ({total_blocks} in all, each once); the file "
                "is damaged or two files were joined: rebuild it"
            )
        seen.add(number)
        parts.append((address, block[32 : 32 + size]))
    if total_blocks is not None and len(seen) != total_blocks:
        raise FormatError(
            f"not a valid UF2 file: it has {len(seen)} of the {total_blocks} blocks it "
            "announces; the file is truncated: rebuild it"
        )
    data, address = place(parts, capacity)
    return Parsed(data, ImageFormat.UF2, address)


# --- Nordic DFU packages ----------------------------------------------------------------------

#: Packages are small: the image, an init packet and the manifest.
DFU_MAX_MEMBERS = 16
DFU_MAX_MANIFEST = 64 * 1024
DFU_OTHER_PARTS = ("softdevice_bootloader", "bootloader", "softdevice")


def read_dfu_zip(raw: bytes, capacity: int) -> Parsed:
    """The application image of a Nordic DFU package (``nrfutil pkg generate``,
    ``adafruit-nrfutil dfu genpkg``), each member's size checked before it is read."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = archive.infolist()
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # a "version needed to extract" zipfile does not know
        ValueError,
        EOFError,
        OSError,
        struct.error,
    ) as exc:
        raise FormatError(f"not a valid zip archive ({exc}); rebuild the DFU package") from None
    if len(members) > DFU_MAX_MEMBERS:
        raise FormatError(
            f"it is a zip archive of {len(members)} files, not a Nordic DFU package (a "
            "manifest, an image and its init packet)"
        )
    manifest = _json_member(archive, "manifest.json")
    entries = manifest.get("manifest") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict):
        raise FormatError(
            "its manifest.json has no 'manifest' object: not a Nordic DFU package; build one "
            "with nrfutil pkg generate or adafruit-nrfutil dfu genpkg"
        )
    others = [name for name in DFU_OTHER_PARTS if name in entries]
    if others:
        raise FormatError(
            f"it is a DFU package that updates the {' and the '.join(others)}, not only the "
            "application: a SmartBall's OTA updates the application alone; build a package "
            "with --application only (or give the application's .bin or .hex)"
        )
    application = entries.get("application")
    if not isinstance(application, dict):
        application = {}
    bin_file = application.get("bin_file")
    if not isinstance(bin_file, str):
        raise FormatError(
            "its manifest names no application image ('application' with a 'bin_file'): "
            "this DFU package carries nothing a SmartBall can flash"
        )
    data = _member(archive, bin_file, capacity, what="application image")
    expected = _crc16_of_manifest(application)
    if expected is not None and crc16_ccitt_false(data) != expected:
        raise FormatError(
            f"its application image {bin_file} does not match the CRC-16 its manifest "
            f"gives (0x{expected:04X}): the package is damaged; rebuild it"
        )
    return Parsed(data, ImageFormat.DFU_ZIP)


def _crc16_of_manifest(application: dict[str, Any]) -> int | None:
    init = application.get("init_packet_data")
    value = init.get("firmware_crc16") if isinstance(init, dict) else None
    return value if isinstance(value, int) else None


def _member(archive: zipfile.ZipFile, name: str, limit: int, *, what: str) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise FormatError(
            f"its {what} {name} is named by the manifest but missing from the archive: the "
            "package is damaged; rebuild it"
        ) from None
    if info.flag_bits & 0x1:
        raise FormatError(f"its {what} {name} is encrypted: give an unencrypted package")
    if info.file_size > limit:
        raise FormatError(
            f"its {what} {name} is {info.file_size} bytes, more than the staging area's "
            f"{limit} bytes: build a smaller image"
            if what == "application image"
            else f"its {name} is {info.file_size} bytes: too large for a DFU package's {what}"
        )
    try:
        with archive.open(info) as member:
            data: bytes = member.read(limit + 1)  # the header's size may lie: read no more
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, ValueError) as exc:
        raise FormatError(f"its {name} cannot be read ({exc}): rebuild the package") from None
    if len(data) > limit:
        raise FormatError(
            f"its {name} unpacks to more than its header says (over {limit} bytes): the "
            "archive is damaged or hostile"
        )
    return data


def _json_member(archive: zipfile.ZipFile, name: str) -> Any:
    try:
        archive.getinfo(name)
    except KeyError:
        raise FormatError(
            "it is a zip archive without manifest.json, not a Nordic DFU package; give the "
            "package nrfutil or adafruit-nrfutil built, or the application's .bin or .hex"
        ) from None
    text = _member(archive, name, DFU_MAX_MANIFEST, what="manifest")
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(
            f"its manifest.json is not valid JSON ({exc}): rebuild the package"
        ) from None


def read_signed(raw: bytes, capacity: int) -> Parsed:
    """A signed image file: its image must be exactly the one its manifest names (size,
    CRC-32 and SHA-256), or the file was changed after it was signed. The signature is the
    device's to check (it alone knows which keys it trusts)."""
    try:
        signed = SignedImage.decode(raw)
    except ManifestError as exc:
        raise FormatError(f"a signed image that cannot be flashed: {exc}") from None
    return Parsed(signed.image, ImageFormat.SIGNED, signed=signed)

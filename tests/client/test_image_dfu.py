"""Image intake (issue 21) of Nordic DFU packages as adafruit-nrfutil writes them: the
application taken, everything else (bootloader, SoftDevice, zip bombs, damaged or
unknown zips, compressed or archived images) refused in one sentence.

The firmware files are built at test time (tests/arm_build.py); without the toolchain
those tests skip, under CI=true they fail.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball.image import STAGING_CAPACITY, load_image
from pytest_smartball.image_formats import ImageFormat

from .. import arm_build
from .image_intake import DATA, image_error

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

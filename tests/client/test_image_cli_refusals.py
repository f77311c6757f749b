"""The CLI's image intake (issue 21): an unusable image is one sentence and exit 2 before
any connect, and real tool output is flashed with its format named.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pytest_smartball import image as image_module
from pytest_smartball.cli import main
from pytest_smartball.image import STAGING_CAPACITY, load_image

from .. import arm_build

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

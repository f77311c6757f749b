"""``smartball-ota --bluez=emulated``: the CLI's real-device path against the emulated BlueZ
it starts and stops itself (sim/smartball_sim/bluez). Real time, short simulated timings."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pytest_smartball.cli import EXIT_BAD_INPUT, main
from smartball_sim.make_image import make_image

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None,
    reason="needs dbus-daemon (apt-get install -y dbus-daemon); .ci/run installs it",
)

FAST = ["--settle", "0.05", "--scan-timeout", "5"]


def test_flash_through_the_emulated_bluez_survives_a_drop_in_the_erase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "emu.bin"
    image.write_bytes(make_image(12_000, 4))
    before = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    argv = ["flash", str(image), "--bluez=emulated", "--faults", "drop@erase:50%", "--json"]
    code = main([*argv, *FAST, "--stabilise", "0.05"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    result = json.loads(out)
    assert result["ok"] and result["reconnects"] >= 1 and result["restarts"] == 0
    assert os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") == before  # stopped and restored


def test_info_through_the_emulated_bluez(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--bluez=emulated", "--json", *FAST]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ok"] and info["protocol_version"] == 1


def test_emulated_bluez_is_not_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--bluez=emulated", "--sim"]) == EXIT_BAD_INPUT
    assert "leave out --sim" in capsys.readouterr().err

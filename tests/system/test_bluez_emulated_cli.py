"""``smartball-ota --bluez=emulated``: the CLI's real-device path against the emulated BlueZ
it starts and stops itself (sim/smartball_sim/bluez). Real time, short simulated timings."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from pytest_smartball.cli import EXIT_BAD_INPUT, main
from pytest_smartball.cli.errors import EXIT_INTERRUPTED, interrupted_sentence
from pytest_smartball.ota import OtaEngine, OtaResult
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


def test_ctrl_c_with_the_emulated_bluez_in_process_promises_no_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --bus the emulated BlueZ and its simulated SmartBall live in the command's own
    process and end with it: no rerun can resume, so Ctrl-C must not say one will."""

    async def interrupted(self: OtaEngine) -> OtaResult:
        signal.raise_signal(signal.SIGINT)  # asyncio.Runner cancels the update
        await asyncio.sleep(60)
        raise AssertionError("not interrupted")

    monkeypatch.setattr(OtaEngine, "run", interrupted)
    image = tmp_path / "emu.bin"
    image.write_bytes(make_image(12_000, 4))
    assert main(["flash", str(image), "--bluez=emulated", *FAST]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert interrupted_sentence(simulated=True) in err
    assert "resume" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["info", "--bus", "unix:path=/nonexistent"], "--bus works with --bluez=emulated only"),
        (
            ["info", "--bluez=emulated", "--bus", "unix:path=/x", "--faults", "drop@erase:50%"],
            "--faults: the simulated SmartBall behind --bus is the server's",
        ),
        (
            ["info", "--bluez=emulated", "--bus", "unix:path=/x", "--seed", "3"],
            "--seed: the simulated SmartBall behind --bus is the server's",
        ),
    ],
)
def test_bus_is_checked_before_anything_starts(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_BAD_INPUT
    assert says in capsys.readouterr().err

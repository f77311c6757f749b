"""E1's third outcome everywhere it is shown: the CLI (exit code 6, its sentence, --json),
the report's JSON and the JUnit properties. The plan is one of issue 10's: the device
verifies the new image and resets into it, and is then out of reach for 1000 s."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_smartball.cli import main
from pytest_smartball.cli.errors import EXIT_CODES, EXIT_UNCONFIRMED, interrupted_sentence
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import EventKind, OtaEngine, OtaEvent, OtaResult, Outcome
from pytest_smartball.ota.record import Commit
from pytest_smartball.plugin import report as rep
from smartball_sim.bluez.launcher import EmulatedBluez

PLAN = "adv-pause:1000s@cmd:CMD_OTA_FINISH"


def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(random.Random(7).randbytes(20_000))
    return path


def test_the_cli_exits_6_with_a_sentence_that_does_not_say_old_image(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(
        ["flash", str(image_file(tmp_path)), "--sim", "--sim-trust", "none", "--faults", PLAN]
    )
    out, err = capsys.readouterr()
    assert code == EXIT_UNCONFIRMED == 6
    assert "Update UNCONFIRMED" in out
    line = [x for x in err.splitlines() if x.startswith("smartball-ota: ")][-1]
    assert line.startswith("smartball-ota: update unconfirmed: ")
    assert "keeps its old image" not in line and "smartball-ota info" in line
    assert "(the new image)" in out  # the simulated device does run it
    assert "6    unconfirmed" in EXIT_CODES


def test_the_cli_json_has_the_outcome(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(
        [
            "flash",
            str(image_file(tmp_path)),
            "--sim",
            "--sim-trust",
            "none",
            "--faults",
            PLAN,
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 6 and data["exit_code"] == 6
    assert (data["ok"], data["outcome"], data["failure"]) == (False, "unconfirmed", None)
    assert "CMD_OTA_FINISH was sent" in data["error"] or "verified" in data["error"]


def unconfirmed_result() -> OtaResult:
    image = FirmwareImage(b"\x02" * 1000, "fw.bin")
    return OtaResult(
        outcome=Outcome.UNCONFIRMED,
        error="... could not be reached afterwards to confirm that it runs it",
        image_size=image.size,
        image_crc32=image.crc32,
        events=[OtaEvent(0.0, EventKind.START, "x")],
    )


def test_the_report_and_junit_carry_the_outcome() -> None:
    image = FirmwareImage(b"\x02" * 1000, "fw.bin")
    record = rep.update_record(
        unconfirmed_result(), test="t.py::test_x", index=1, image=image, device=None
    )
    assert record["outcome"] == "unconfirmed" and record["success"] is False
    assert record["failure"] is None and "could not be reached" in record["error"]
    props = dict(rep.junit_properties([record]))
    assert props["ota.outcome"] == "unconfirmed" and props["ota.success"] == "false"
    assert "ota.failure" not in props and "could not be reached" in props["ota.error"]
    run = rep.RunReport(device={}, firmware=image)
    run.add_test_report(
        type(
            "R",
            (),
            {
                "nodeid": "t.py::test_x",
                "when": "teardown",
                "failed": False,
                "skipped": False,
                "outcome": "passed",
                "smartball_updates": [record],
            },
        )()
    )
    summary = run.to_dict()
    assert (summary["updates_failed"], summary["updates_unconfirmed"]) == (0, 1)


def test_success_is_the_outcome_succeeded_and_nothing_else() -> None:
    assert OtaResult(outcome=Outcome.SUCCEEDED).success
    assert not OtaResult(outcome=Outcome.UNCONFIRMED).success
    assert not OtaResult().success and OtaResult().outcome is Outcome.FAILED
    assert OtaResult(outcome=Outcome.SUCCEEDED).to_dict()["success"] is True


@pytest.mark.skipif(
    shutil.which("dbus-daemon") is None or sys.platform == "win32",
    reason="the real-device path needs the emulated BlueZ (dbus-daemon) and POSIX signals",
)
@pytest.mark.parametrize("asked", [False, True])
def test_ctrl_c_after_the_switch_was_asked_for_does_not_say_old_image(
    asked: bool,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C on a real device (the emulated BlueZ's path, run outside the command and reached
    with --bus, so the device outlives it): before FINISH the device keeps its old image;
    after it, it may run the new one."""

    async def interrupted(self: OtaEngine) -> OtaResult:
        if asked:
            self.record = replace(self.record, commit=Commit.FINISH_SENT)
        signal.raise_signal(signal.SIGINT)  # asyncio.Runner cancels the update
        await asyncio.sleep(60)
        raise AssertionError("not interrupted")

    monkeypatch.setattr(OtaEngine, "run", interrupted)
    with EmulatedBluez(set_environment=False) as bluez:
        argv = ["flash", str(image_file(tmp_path)), "--bluez=emulated", "--bus", bluez.bus.address]
        code = main([*argv, "--scan-timeout", "5"])
    err = capsys.readouterr().err
    assert code == 130
    assert interrupted_sentence(simulated=False, switch_asked=asked) in err
    assert ("keeps its old image" in err) is not asked

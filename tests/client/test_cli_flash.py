"""``smartball-ota flash`` against the simulated SmartBall: what it prints on success, on
failure and on an interrupt, and that each sentence says what is true.

Every run uses the simulator's virtual clock, so a 30 s erase or a minute of reconnects
costs well under a second of wall time.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import pytest
from intelhex import IntelHex

from pytest_smartball.cli.errors import interrupted_sentence
from pytest_smartball.ota import OtaEngine

from .cli_runs import SIM_ADDRESS, SIM_OLD_IMAGE_SIZE, image_file, one_error_line, run, run_json

# --- flash: success -----------------------------------------------------------------------


def test_flash_human_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = image_file(tmp_path, 40_000)
    code, out, err = run(
        capsys, "flash", "--sim", "--sim-trust", "none", str(path), "--stabilise", "0.5"
    )
    assert code == 0
    assert "Update succeeded" in out
    assert "40000 bytes" in out and f"{zlib.crc32(path.read_bytes()):08x}" in out
    assert "throughput" in out and "phases" in out and "device now" in out
    assert "simulated" in out
    assert "Faults on the simulated device (0)" in out
    assert "transfer" in err  # the progress bar
    assert "Event log:" not in out


def test_flash_verbose_prints_the_event_log(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = image_file(tmp_path, 20_000)
    code, out, _ = run(capsys, "flash", "--sim", "--sim-trust", "none", "-v", str(path))
    assert code == 0
    assert "Event log:" in out
    assert "transferring -> finishing" in out


def test_flash_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = image_file(tmp_path, 30_000)
    code, data, err = run_json(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 0
    assert data["success"] is True and data["exit_code"] == 0
    assert data["simulated"] is True and data["virtual_time"] is True
    assert data["device"] == {"name": "SmartBall", "address": SIM_ADDRESS}
    assert data["bytes_sent"] >= 30_000
    assert data["info_after"]["active_image_crc32"] == f"{zlib.crc32(path.read_bytes()):08x}"
    assert data["fault_log"] == []
    assert "%|" not in err  # no progress bars with --json


def test_flash_field_linux_resumes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # field-linux drops the link at offset 247354: the image must reach past it to resume.
    path = image_file(tmp_path, 300_000, seed=11)
    crc = zlib.crc32(path.read_bytes())
    code, out, err = run(
        capsys, "flash", "--sim", "--sim-trust", "none", "--faults", "field-linux", str(path)
    )
    assert code == 0
    assert "resume: at offset" in err
    assert "link-lost" in err and "recover" in err
    assert "Update succeeded" in out
    assert "slow-erase:30s" in out and "adv-pause:20s" in out  # the device's fault log

    code, data, _ = run_json(
        capsys, "flash", "--sim", "--sim-trust", "none", "--faults", "field-linux", str(path)
    )
    assert code == 0
    assert data["success"] is True
    assert data["reconnects"] >= 1 and data["resumes"] >= 1
    assert data["info_after"]["active_image_crc32"] == f"{crc:08x}"
    assert any("drop" in line for line in data["fault_log"])


def test_flash_valid_intel_hex(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    payload = random.Random(5).randbytes(25_000)
    ih = IntelHex()
    ih.frombytes(payload, offset=0x27000)
    path = tmp_path / "app.hex"
    ih.write_hex_file(str(path))
    code, data, _ = run_json(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 0
    assert data["image_size"] == len(payload)
    assert data["info_after"]["active_image_crc32"] == f"{zlib.crc32(payload):08x}"


def test_erase_time_sets_the_simulated_erase(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = image_file(tmp_path, 20_000)
    code, data, _ = run_json(
        capsys, "flash", "--sim", "--sim-trust", "none", "--erase-time", "20", str(path)
    )
    assert code == 0
    assert data["phase_s"]["waiting-ready"] >= 20


def test_sim_progressive_erase_removes_the_erase_wait(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A device that offers progressive erase is asked for it: READY comes at once, so the
    20 s erase is never waited for (the replay line of a progressive fuzz case uses this)."""
    path = image_file(tmp_path, 20_000)
    argv = (
        "flash",
        "--sim",
        "--sim-trust",
        "none",
        "--erase-time",
        "20",
        "--sim-progressive-erase",
        str(path),
    )
    code, data, _ = run_json(capsys, *argv)
    assert code == 0 and data["success"] is True
    assert data["phase_s"].get("waiting-ready", 0) < 1
    code, _, err = run(capsys, "flash", "--sim-progressive-erase", str(path))
    assert code == 2 and "--sim-progressive-erase" in one_error_line(err)


def test_clear_cache_forgets_the_simulated_gatt_cache(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = image_file(tmp_path, 20_000)
    args = ("flash", "--sim", "--sim-trust", "none", "--faults", "stale-cache", str(path))
    code, _, err = run(capsys, *args, "--clear-cache")
    assert code == 0
    assert "cache-cleared" in err and "services-missing" not in err
    code, _, err = run(capsys, *args)
    assert code == 0
    assert "services-missing" in err  # the control: without the clear, the stale cache bites


# --- flash: failure -----------------------------------------------------------------------


def test_failure_after_retries_is_exit_4_and_keeps_the_old_image(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = image_file(tmp_path, 40_000)
    argv = (
        "flash",
        "--sim",
        "--sim-trust",
        "none",
        "--faults",
        "connect-timeout:50",
        "--max-attempts",
        "2",
        str(path),
    )
    code, data, err = run_json(capsys, *argv)
    assert code == 4
    assert data["success"] is False and data["failure"] == "link"
    assert "keeps its old image" in data["error"]
    assert data["sim_active_image"]["size"] == SIM_OLD_IMAGE_SIZE
    assert data["sim_active_image"]["crc32"] != f"{zlib.crc32(path.read_bytes()):08x}"
    assert "update failed" in one_error_line(err)

    code, out, err = run(capsys, *argv)
    assert code == 4
    assert "Update FAILED (link)" in out and "(its old image)" in out
    assert "keeps its old image" in err


def test_keyboard_interrupt_is_exit_130(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(OtaEngine, "run", interrupted)
    path = image_file(tmp_path, 20_000)
    code, _, err = run(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 130
    assert interrupted_sentence(simulated=True) in err
    assert "simulated SmartBall" in err and "gone" in err


# --- wording: each sentence says what is true -----------------------------------------------


def test_no_reset_headline_events_and_connections_agree(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A device that verifies, commits the switch and never resets: it still runs its old
    image, so the headline must not say it "may run" the new one; the last no-reset event
    must not promise a look at the device that never comes; the planned connection after
    the reset is not a "reconnect" the line seems to deny."""
    path = image_file(tmp_path, 20_000)
    code, out, err = run(
        capsys, "flash", "--sim", "--sim-trust", "none", "--faults", "no-reset", "-v", str(path)
    )
    assert code == 6
    headline = next(line for line in out.splitlines() if line.startswith("Update "))
    assert "may run" not in headline
    assert headline.startswith("Update UNCONFIRMED: ") and "not seen running" in headline
    assert "it still runs crc32" in err
    assert "(its old image)" in out  # what the simulated device holds
    connections = next(line for line in out.splitlines() if "connections" in line)
    assert connections.split()[1:5] == ["2", "(0", "after", "a"], connections
    assert "reconnects" not in connections

    code, data, _ = run_json(
        capsys, "flash", "--sim", "--sim-trust", "none", "--faults", "no-reset", str(path)
    )
    events = data["events"]
    no_resets = [i for i, e in enumerate(events) if e["kind"] == "no-reset"]
    assert len(no_resets) == 2
    for index in no_resets:
        promised = "reconnecting to check its image" in events[index]["detail"]
        followed = any(e["kind"] == "connected" for e in events[index + 1 :])
        assert promised == followed, events[index]
    assert events[no_resets[-1]]["detail"].endswith("(2 of 2); no more waits")
    # The device never reset: the link the host closed after each wait is not its reset.
    assert [e for e in events if e["kind"] == "device-reset"] == []
    assert "device-reset" not in err

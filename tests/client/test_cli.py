"""Tests of the ``smartball-ota`` command line, against the simulated SmartBall.

Every run uses the simulator's virtual clock, so a 30 s erase or a minute of reconnects
costs well under a second of wall time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from intelhex import IntelHex

from pytest_smartball.cli import main
from pytest_smartball.cli.errors import interrupted_sentence
from pytest_smartball.ota import OtaEngine

SIM_ADDRESS = "C0:FF:EE:00:00:01"
STAGING = 480 * 1024
SIM_OLD_IMAGE_SIZE = 64 * 1024  # what a fresh SimDevice runs


def image_file(tmp_path: Path, size: int, *, seed: int = 7, name: str = "fw.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = run(capsys, *argv, "--json")
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one line, got: {out!r}"
    return code, json.loads(lines[0]), err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one clear message, got: {err!r}"
    assert lines[0].startswith("smartball-ota: ")
    return lines[0]


def has_system_bus() -> bool:
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")
    candidates = [address.removeprefix("unix:path=").split(",")[0]] if address else []
    candidates += ["/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket"]
    return any(c and Path(c).exists() for c in candidates)


# --- help and arguments -----------------------------------------------------------------


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "exit codes:" in out
    for line in ("0    success", "2    bad input", "3    device not found", "4    update failed"):
        assert line in out
    assert "5    the device refused" in out
    code, out, _ = run(capsys, "flash", "--help")
    assert code == 0
    assert "--max-attempts" in out and "exit codes:" in out


def test_usage_error_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert "invalid choice" in err
    code, _, err = run(capsys, "flash", "--sim", "x.bin", "--max-attempts", "0")
    assert code == 2
    assert "--max-attempts" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("flash", "--sim", "x.bin", "--max-attempts", "0"),
        ("flash", "--sim"),
        ("frobnicate",),
        ("info", "--faults", "field-linux"),
        ("status", "--sim", "--faults", "drop@erase:150%"),
        ("info", "--scan-timeout", "-1"),
    ],
)
def test_a_bad_argument_is_one_sentence_and_the_usage_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("smartball-ota: ") and lines[0].count(". ") == 0, lines
    assert len(lines) <= 2, f"one sentence plus the usage line, got {err!r}"
    if len(lines) == 2:
        assert lines[1].startswith("usage: smartball-ota") and "\n" not in lines[1]


@pytest.mark.parametrize(
    "argv",
    [
        ("flash", "--sim", "x.bin", "--max-attempts", "0"),
        ("flash", "--sim"),
        ("info", "--faults", "field-linux"),
        ("frobnicate",),
    ],
)
def test_json_with_a_bad_argument_prints_one_object(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, data, err = run_json(capsys, *argv)
    assert code == 2
    assert data["ok"] is False and data["exit_code"] == 2 and data["error"]
    assert data["error"] in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"smartball-ota {version('pytest-smartball')}"


@pytest.mark.parametrize(
    ("segments", "name", "sentence"),
    [
        ({0xFFFFFFF0: b"\x01"}, "far.hex", "data at 0xFFFFFFF0 is outside"),
        ({0x27000: bytes(300), 0x10000000: b"\x02"}, "merged.hex", "data at 0x10000000 is outside"),
        ({0x26000: bytes(300)}, "hex-text.bin", "data at 0x00026000 lies below the application's"),
    ],
)
def test_image_problems_are_bad_input_before_any_bluetooth(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    segments: dict[int, bytes],
    name: str,
    sentence: str,
) -> None:
    """Without --sim: exit 2, not 3 (no BlueZ here) or 4, so nothing was probed or connected."""
    ih = IntelHex()
    for address, data in segments.items():
        ih.frombytes(data, offset=address)
    path = tmp_path / name
    ih.write_hex_file(str(path))
    code, out, err = run(capsys, "flash", str(path))
    assert code == 2 and out == ""
    assert sentence in one_error_line(err)


def test_faults_without_sim_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "info", "--faults", "field-linux")
    assert code == 2
    assert "--faults" in one_error_line(err) and "--sim" in err
    assert out == ""


def test_bad_fault_spec_is_exit_2_with_the_parsers_sentence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "status", "--sim", "--faults", "drop@erase:150%")
    assert code == 2
    line = one_error_line(err)
    assert "bad --faults" in line and "must be 0% to 100%" in line


def test_options_before_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, data, _ = run_json(capsys, "--sim", "--seed", "3", "info")
    assert code == 0
    assert data["simulated"] is True


# --- scan / info / status / abort ---------------------------------------------------------


def test_scan_lists_the_simulated_smartball(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "scan", "--sim")
    assert code == 0
    assert SIM_ADDRESS in out and "SmartBall" in out
    assert "simulated" in out

    code, data, _ = run_json(capsys, "scan", "--sim")
    assert code == 0
    [device] = data["devices"]
    assert device["address"] == SIM_ADDRESS and device["name"] == "SmartBall"
    assert isinstance(device["rssi"], int)


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", "--sim")
    assert code == 0
    assert "1.0.0" in out and f"{STAGING} bytes" in out and "times are simulated" in out

    code, data, _ = run_json(capsys, "info", "--sim")
    assert code == 0
    assert data["firmware"] == "1.0.0"
    assert data["active_image_size"] == SIM_OLD_IMAGE_SIZE
    assert data["staging_capacity"] == STAGING
    assert data["device"] == {"name": "SmartBall", "address": SIM_ADDRESS}


def test_status(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "--sim")
    assert code == 0
    assert "idle" in out and "next offset" in out

    code, data, _ = run_json(capsys, "status", "--sim")
    assert code == 0
    assert data["state"] == "idle"
    assert data["next_expected_offset"] == 0


def test_abort(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "abort", "--sim")
    assert code == 0
    assert "aborted" in out

    code, data, _ = run_json(capsys, "abort", "--sim", "--address", SIM_ADDRESS)
    assert code == 0
    assert data["command"] == "abort" and data["state"] == "idle"


def test_unknown_device_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("info", "--sim", "--address", "AA:BB:CC:DD:EE:FF", "--scan-timeout", "2")
    code, out, err = run(capsys, *argv)
    assert code == 3
    assert "AA:BB:CC:DD:EE:FF" in one_error_line(err)
    assert out == ""

    code, data, _ = run_json(capsys, *argv)
    assert code == 3
    assert data["ok"] is False and data["exit_code"] == 3


def test_link_trouble_in_info_is_exit_4(capsys: pytest.CaptureFixture[str]) -> None:
    # Every connect times out: the link layer gives up with ConnectFailed.
    code, _, err = run(capsys, "info", "--sim", "--faults", "connect-timeout:10")
    assert code == 4
    assert "could not connect" in one_error_line(err)


def test_real_radio_without_bluez_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    if has_system_bus():
        pytest.skip("this machine has a system D-Bus; the no-BlueZ path cannot be shown")
    code, out, err = run(capsys, "info")
    assert code == 3
    line = one_error_line(err)
    assert "BlueZ" in line or "D-Bus" in line
    assert "--sim" in line
    assert out == ""


# --- flash: bad input ---------------------------------------------------------------------


def test_missing_image_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(
        capsys, "flash", "--sim", "--sim-trust", "none", str(tmp_path / "nope.bin")
    )
    assert code == 2
    assert "no such file" in one_error_line(err)
    assert out == ""


def test_missing_image_fails_before_any_radio_activity(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No --sim and no BlueZ here: the image is checked first, so the answer is 2, not 3.
    code, _, err = run(capsys, "flash", str(tmp_path / "nope.bin"))
    assert code == 2
    assert "no such file" in one_error_line(err)


def test_empty_image_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    code, _, err = run(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 2
    assert "empty" in one_error_line(err)


def test_malformed_hex_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.hex"
    path.write_text(":10000000ZZ\n:00000001FF\n")
    code, _, err = run(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 2
    assert "not a valid Intel HEX" in one_error_line(err)


def test_image_larger_than_staging_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = image_file(tmp_path, STAGING + 1)
    code, data, err = run_json(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 2
    assert data["ok"] is False and data["exit_code"] == 2
    assert f"staging area holds {STAGING} bytes" in one_error_line(err)
    assert "sim_active_image" not in data  # refused before any connect (issue 21)


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


# --- the installed script -----------------------------------------------------------------


def test_installed_script_smoke(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "smartball-ota"
    exe = str(script) if script.exists() else shutil.which("smartball-ota")
    if exe is None:
        pytest.skip("the smartball-ota script is not installed")
    proc = subprocess.run(
        [exe, "status", "--sim", "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "idle"

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_smartball.cli",
            "flash",
            "--sim",
            "--sim-trust",
            "none",
            "missing.bin",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery is POSIX-only here")
def test_ctrl_c_mid_update_is_exit_130(tmp_path: Path) -> None:
    path = image_file(tmp_path, 20_000)
    # Real time and a long erase, so the update is surely still running when Ctrl-C arrives.
    # -v logs to stderr even with --json: its first line says the update has begun.
    argv = [
        "flash",
        "--sim",
        "--sim-trust",
        "none",
        "--realtime",
        "--erase-time",
        "30",
        "--json",
        "-v",
        str(path),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_smartball.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait for the first log line instead of guessing how long the interpreter takes
        # to start. A child that never prints is stopped by pytest-timeout; one that dies
        # gives EOF and fails the assert.
        assert proc.stderr is not None
        first_line = proc.stderr.readline()
        assert first_line, "the CLI exited before logging anything"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert interrupted_sentence(simulated=True) in err
    assert "Traceback" not in err
    assert json.loads(out) == {
        "command": "flash",
        "ok": False,
        "exit_code": 130,
        "error": interrupted_sentence(simulated=True),
    }


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


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (("--faults", "lose:+3"), "'+3' is not a positive whole number"),
        (("--faults", "lose:1_000"), "'1_000' is not a positive whole number"),
        (("--faults", "lose:-1"), "'-1' is not a positive whole number"),
        (("--faults", "lose:bogus"), "unknown message type 'bogus'"),
        (("--scan-timeout", "inf"), "'inf' is not a finite number of seconds"),
        (("--scan-timeout", "nan"), "'nan' is not a finite number of seconds"),
        (("--erase-time", "inf"), "'inf' is not a finite number of seconds"),
        (("--sim-address", "notanaddress"), "'notanaddress' is not a Bluetooth address"),
        (("--sim-address", "C0:FF:EE:00:00"), "'C0:FF:EE:00:00' is not a Bluetooth address"),
    ],
)
def test_bad_values_are_named_for_what_they_are(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], sentence: str
) -> None:
    code, out, err = run(capsys, "status", "--sim", *argv)
    assert code == 2 and out == ""
    assert sentence in err.splitlines()[0], err
    assert "unknown message type" not in err or "bogus" in err
    assert "must be more than 0" not in err


def test_a_sim_address_that_is_an_address_is_the_devices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, data, _ = run_json(capsys, "status", "--sim", "--sim-address", "C0:FF:EE:00:00:42")
    assert code == 0 and data["device"]["address"] == "C0:FF:EE:00:00:42"


def test_the_cli_does_not_import_the_plugins_release_gate_or_recording() -> None:
    """Layers: the CLI is a front of its own; the pytest plugin's gate (compare, figures)
    and its recording are not loaded with it."""
    code = (
        "import sys, pytest_smartball.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('pytest_smartball.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    for module in ("compare", "figures", "recording", "session", "plugin", "fixtures"):
        assert f"'pytest_smartball.{module}'" not in loaded, loaded


def test_a_tampered_signed_image_is_exit_2_before_any_radio_activity(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No --sim and no BlueZ here: a signed file whose image is not its manifest's is
    refused before anything is probed (2, not 3), in one sentence."""
    from pytest_smartball.contract import signing

    raw = bytearray(signing.sign(bytes(4096), signing.test_key(), (1, 0, 0), 1).encode())
    raw[-10] ^= 0x01
    path = tmp_path / "fw.sbi"
    path.write_bytes(raw)
    code, out, err = run(capsys, "flash", str(path))
    assert code == 2 and out == ""
    assert "changed after it was signed" in one_error_line(err)

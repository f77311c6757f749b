"""The ``smartball-ota`` commands that ask or tell the device without an update (scan, info,
status, abort) against the simulated SmartBall, and their exit codes when the device is
not there or the link fails.
"""

from __future__ import annotations

import pytest

from .cli_runs import (
    SIM_ADDRESS,
    SIM_OLD_IMAGE_SIZE,
    STAGING,
    has_system_bus,
    one_error_line,
    run,
    run_json,
)

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

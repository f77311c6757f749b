"""The installed ``smartball-ota`` script as its own process: a smoke run, Ctrl-C in the
middle of an update, and the modules it loads (not the pytest plugin's).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_smartball.cli.errors import interrupted_sentence

from .cli_runs import image_file

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

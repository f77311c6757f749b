"""What the tests of the ``smartball-ota`` command line share: the simulated device's address
and sizes, a random image file, and running ``main`` with its output captured (plain, one
JSON line, or one error sentence).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball.cli import main

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

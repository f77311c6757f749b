"""What the C core's tests share (tests/c_core.py holds the ctypes harness and its replay
model): the contract's vector files, the report each vector test prints, and a session on a
device of the vectors' kind.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from pytest_smartball import contract

from .. import c_core


def _vectors(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = contract.vectors(name)["vectors"]
    return vectors


def _report(name: str, passed: int, total: int, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nC core: {name}: {passed} of {total} vectors pass")


_SESSION_DEVICE = _vectors("device.json")[0]["device"]


def _session(lib: ctypes.CDLL, window: int = 4, **device: Any) -> c_core.Replay:
    """A device of the vectors' kind with ``window`` (its buffer as large), resetting when
    asked (the bootloader model switches to a verified image)."""
    flash = dict(_SESSION_DEVICE["flash"], rx_buffer_chunks=window)
    config = dict(_SESSION_DEVICE, resets_when_asked=True, window=window, flash=flash)
    return c_core.Replay(lib, {**config, **device})


def _types(out: list[dict[str, Any]]) -> list[str]:
    return [e.get("code", e.get("type", e.get("event", ""))) for e in out]

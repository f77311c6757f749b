"""Hooks of the SmartBall plugin (a conftest.py or another plugin implements them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .link import BleBackend


@pytest.hookspec(firstresult=True)
def pytest_smartball_backend(config: pytest.Config, adapter: str) -> BleBackend | None:
    """The bleak backend that reaches the devices of a ``--device=real`` run.

    The default is the platform's own radio on ``--ble-adapter``. A lab that reaches its
    boards another way (bleak backends exist for remote radios) returns its own; the
    plugin's tests return a simulated one to drive the real-device path without a radio.
    Preflight still asks the local BlueZ about the adapter.
    """

"""Hooks of the SmartBall plugin (a conftest.py or another plugin implements them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..link import BleBackend
    from ..targets import Target


@pytest.hookspec(firstresult=True)
def pytest_smartball_backend(config: pytest.Config, adapter: str) -> BleBackend | None:
    """The bleak backend that reaches the devices of a ``--device=real`` run.

    The default is the platform's own radio on ``--ble-adapter``. A lab that reaches its
    boards another way (bleak backends exist for remote radios) returns its own; the
    plugin's tests return a simulated one to drive the real-device path without a radio.
    Preflight still asks the local BlueZ about the adapter.
    """


@pytest.hookspec(firstresult=True)
def pytest_smartball_power_cycle(config: pytest.Config, device: Target) -> bool | None:
    """Cut the power of ``device`` (the board under test) and restore it, e.g. through a
    USB hub that switches its ports; return True once the power is back (the board then
    boots and advertises again on its own). Called from a worker thread, so it may block.

    The tests that reset a board in the middle of an update use it through the
    ``power_cycle`` fixture. On real hardware they skip, saying so, when no conftest.py or
    plugin implements this hook; on the simulator the plugin resets the simulated device.
    """

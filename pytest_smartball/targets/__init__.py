"""Targets: a device to talk to, and the bleak backend that reaches it.

A real SmartBall is reached through the platform's radio (:class:`~pytest_smartball.link.
BleBackend` with no classes). The modules of this package build the other kinds, and they
are the only place in ``pytest_smartball`` that imports the simulator (``smartball_sim``):

* :mod:`.simulated`: a simulated SmartBall in this process, behind bleak backends;
* :mod:`.emulated_bluez`: simulated SmartBalls behind an emulated bluetoothd on a private
  D-Bus, reached through the unchanged real-device path.

Everything else imports this package's ``__init__`` only, which imports no simulator code,
so neither ``import pytest_smartball.plugin`` nor a CLI command without ``--sim`` loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..image import FirmwareImage, generated_image, load_image
from ..link import BleBackend

if TYPE_CHECKING:
    import pytest

    from smartball_sim.device import SimDevice

#: The generated image's size for simulated devices that run in real time (behind an
#: emulated or a real bluetoothd): small enough that an update takes seconds.
REAL_TIME_IMAGE_SIZE = 16_195


def real_time_firmware_image(config: pytest.Config) -> FirmwareImage:
    """``--firmware``, or a generated image of REAL_TIME_IMAGE_SIZE bytes."""
    path = config.getoption("--firmware")
    if path:
        return load_image(path)
    return generated_image(config.getoption("--sim-seed"), REAL_TIME_IMAGE_SIZE)


@dataclass(slots=True)
class Target:
    """The device under test, as the client reaches it."""

    backend: BleBackend
    name: str
    address: str | None
    #: The simulated device itself (fault injection, inspection); None on a real radio.
    sim: SimDevice | None = None

    @property
    def is_sim(self) -> bool:
        return self.sim is not None

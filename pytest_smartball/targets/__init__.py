"""Targets: a device to talk to, and the bleak backend that reaches it.

A real SmartBall is reached through the platform's radio (:class:`~pytest_smartball.link.
BleBackend` with no classes). The modules of this package build the other kinds, and they
are the only place in ``pytest_smartball`` that imports the simulator (``smartball_sim``):

* :mod:`.simulated`: a simulated SmartBall in this process, behind bleak backends;
* :mod:`.bumble`: a simulated SmartBall in this process, reached over Google's Bumble stack;
* :mod:`.emulated_bluez`: simulated SmartBalls behind an emulated bluetoothd on a private
  D-Bus, reached through the unchanged real-device path;
* :mod:`.vhci_bluez`: simulated SmartBalls behind a virtual controller of the system's BlueZ;
* :mod:`.labgrid_loopback`: a labgrid farm of simulated SmartBalls on loopback (CI tooling).

Library code: nothing here imports pytest (the plugin's fixtures, :mod:`pytest_smartball.
plugin`, call these modules).

Everything else imports this package's ``__init__`` only, which imports no simulator code,
so neither ``import pytest_smartball.plugin`` nor a CLI command without ``--sim`` loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..image import FirmwareImage, generated_image, load_image
from ..link import BleBackend, LinkSettings
from ..ota import OtaSettings

if TYPE_CHECKING:
    from smartball_sim.device import SimDevice

#: The generated image's size for simulated devices that run in real time (behind an
#: emulated or a real bluetoothd): small enough that an update takes seconds.
REAL_TIME_IMAGE_SIZE = 16_195


#: Short pauses for emulated devices that erase a page in 5 ms and boot in 0.3 s.
FAST_LINK = LinkSettings(settle_s=0.05, services_retry_backoff_s=0.05, scan_timeout_s=5.0)
FAST_OTA = OtaSettings(
    link=FAST_LINK,
    stabilise_s=0.05,
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    reappear_timeout_s=10.0,
)


def real_time_firmware_image(path: str | None, seed: int) -> FirmwareImage:
    """The image at ``path`` (``--firmware``), or a generated image of REAL_TIME_IMAGE_SIZE
    bytes."""
    if path:
        return load_image(path)
    return generated_image(seed, REAL_TIME_IMAGE_SIZE)


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

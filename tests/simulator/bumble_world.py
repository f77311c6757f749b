"""What the Bumble tests share: a BumbleWorld with the simulated SmartBall advertising on it,
finding it through bleak's scanner, and a NUS host connected to it.
"""

from __future__ import annotations

import re

from bleak import BleakScanner
from bleak.backends.device import BLEDevice

from smartball_sim.bumble.central import BumbleWorld
from smartball_sim.device import SimDevice
from tests.hosts import NusHost

ADDRESS = "C0:FF:EE:00:00:01"
IMAGE = bytes(range(256)) * 4
SERVICE_DISCOVERY = re.escape("Service Discovery has not been performed yet")


def make_world(
    faults: str | None = None, exchange_mtu: int | None = 517, **kwargs: object
) -> tuple[BumbleWorld, SimDevice]:
    device = SimDevice("SmartBall", ADDRESS, active_image=IMAGE, faults=faults, **kwargs)  # type: ignore[arg-type]
    return BumbleWorld([device], exchange_mtu=exchange_mtu), device


async def find(world: BumbleWorld, timeout: float = 5.0) -> BLEDevice:
    found = await BleakScanner.find_device_by_name(
        "SmartBall", timeout=timeout, backend=world.scanner_backend
    )
    assert found is not None, "SmartBall not found"
    return found


class Host_(NusHost):
    """A host on the Bumble central; ``reason``: the HCI code of its last disconnection."""

    def __init__(self, world: BumbleWorld, device: BLEDevice | str) -> None:
        super().__init__(world.client_backend, device)

    @property
    def reason(self) -> int | None:
        return self.client._backend.last_disconnect_reason  # type: ignore[attr-defined]


async def connected(world: BumbleWorld) -> Host_:
    host = Host_(world, await find(world))
    await host.open()
    return host

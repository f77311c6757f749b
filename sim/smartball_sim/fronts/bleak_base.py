"""What every bleak backend onto simulated SmartBalls shares, whatever carries the bytes
(the in-process radio model in :mod:`.in_process`, Bumble's ATT in :mod:`..bumble.central`):
the world's device registry, and the parts of bleak's scanner and client interfaces that do not
depend on the link.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import BaseBleakScanner

from ..device import SimDevice


class DeviceRegistry:
    """Simulated devices by address (case-insensitive, as BlueZ compares them)."""

    def __init__(self) -> None:
        self.devices: dict[str, SimDevice] = {}

    def add(self, device: SimDevice) -> SimDevice:
        key = device.address.upper()
        if key in self.devices:
            raise ValueError(f"a simulated device with address {device.address} already exists")
        self._check_can_add()
        self.devices[key] = device
        return device

    def _check_can_add(self) -> None:
        """Raise when the world can no longer take devices (e.g. once it is serving them)."""

    def find(self, address: str) -> SimDevice | None:
        return self.devices.get(address.upper())

    async def warnings(self) -> list[str]:
        """What preflight would warn about on this stack: nothing (no known GATT bugs)."""
        return []

    def backends_for(
        self, scanner: type[BaseBleakScanner], client: type[BaseBleakClient]
    ) -> tuple[type[BaseBleakScanner], type[BaseBleakClient]]:
        """Scanner and client classes bound to this world (bleak instantiates them itself,
        so the world travels as a class attribute)."""
        bound = {"world": self}
        return (
            type(f"{scanner.__name__}Backend", (scanner,), bound),
            type(f"{client.__name__}Backend", (client,), bound),
        )


class SimulatedScanner(BaseBleakScanner):
    """bleak's scanner interface, as bleak's own backends take their arguments."""

    world: ClassVar[Any]

    def __init__(
        self,
        detection_callback: Any = None,
        service_uuids: list[str] | None = None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)


class SimulatedClient(BaseBleakClient):
    """bleak's client interface, as bleak's own backends take their arguments; the simulated
    SmartBall does not pair."""

    world: ClassVar[Any]

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        services: Any = None,
        *,
        disconnected_callback: Any = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._ble_device = (
            address_or_ble_device if isinstance(address_or_ble_device, BLEDevice) else None
        )

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the simulated SmartBall does not pair")

    async def unpair(self) -> None:
        raise NotImplementedError("the simulated SmartBall does not pair")

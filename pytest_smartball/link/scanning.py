"""Scanning for SmartBalls: the one scanning loop (:func:`observe`) that finding a device,
listing devices and preflight all use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from ..bluez import connected_devices
from ..contract import codec as p
from .backend import BleBackend
from .errors import STACK_ERRORS, DeviceNotFound

log = logging.getLogger("pytest_smartball.link")

#: Starting and stopping a scanner: bounded on top of the scan itself.
SCANNER_START_STOP_S = 10.0


@dataclass(frozen=True, slots=True)
class Sighting:
    """One advertiser a scan saw: what it advertised, and the BLEDevice to connect to."""

    address: str
    name: str | None
    rssi: int | None = None
    nus: bool = False  # advertises the Nordic UART Service
    device: BLEDevice | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        rssi = f", {self.rssi} dBm" if self.rssi is not None else ""
        return f"{self.name or '(no name)'} ({self.address}{rssi})"

    @property
    def ble_device(self) -> BLEDevice:
        assert self.device is not None, f"{self} was not seen by a scan"
        return self.device


async def observe(
    backend: BleBackend,
    *,
    timeout: float,
    done: Callable[[Mapping[str, Sighting]], bool] = lambda seen: False,
) -> dict[str, Sighting]:
    """Scan until ``done(seen)`` holds or ``timeout`` passes; every advertiser seen, by
    upper-case address. The one scanning loop: finding a device, listing devices and
    preflight all use it. Raises DeviceNotFound when the scanner itself fails (no adapter,
    adapter off, stack not running)."""
    seen: dict[str, Sighting] = {}
    complete = asyncio.Event()

    def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[device.address.upper()] = Sighting(
            device.address,
            adv.local_name or device.name,
            adv.rssi,
            p.NUS_SERVICE_UUID in (u.lower() for u in adv.service_uuids),
            device,
        )
        if done(seen):
            complete.set()

    scanner = BleakScanner(detection_callback=on_advertisement, **backend.scanner_kwargs())
    try:
        async with asyncio.timeout(timeout + SCANNER_START_STOP_S):  # start and stop bounded
            async with scanner:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await complete.wait()
    except STACK_ERRORS as exc:  # no adapter, stack not running
        why = str(exc) or "the scanner did not start or stop in time"
        raise DeviceNotFound(
            f"scanning failed ({type(exc).__name__}: {why}); check that Bluetooth is on and "
            "the adapter is present"
        ) from None
    return seen


async def find_device(
    backend: BleBackend,
    *,
    name: str | None = None,
    address: str | None = None,
    timeout: float,
) -> Sighting:
    """Scan for a SmartBall by address (preferred) or advertised name."""
    if not (address or name):
        raise ValueError("find_device needs a name or an address")
    what = f"address {address}" if address else f"name {name!r}"

    def wanted(s: Sighting) -> bool:
        return s.address.upper() == address.upper() if address else s.name == name

    seen = await observe(
        backend, timeout=timeout, done=lambda seen: any(wanted(s) for s in seen.values())
    )
    for sighting in seen.values():
        if wanted(sighting):
            return sighting
    if backend.on_bluez:
        # Not advertising because BlueZ still holds it connected (a host process killed
        # mid-update leaves its link up): reach it through that connection.
        held = [
            Sighting(device.address, device.name, None, _has_nus(device), device)
            for device in await connected_devices(backend.adapter)
        ]
        found = pick_held(held, wanted, what)
        if found is not None:
            log.warning(
                "%s: not advertising, but BlueZ holds it connected (a host killed mid-update "
                "leaves its link up); using that connection",
                found,
            )
            return found
    raise DeviceNotFound(
        f"no SmartBall with {what} advertised within {timeout:g} s; check that it is "
        "powered, in range and not connected to another host"
    )


def pick_held(
    held: list[Sighting], wanted: Callable[[Sighting], bool], what: str
) -> Sighting | None:
    """The SmartBall asked for among the devices BlueZ holds connected, or None. Only a
    device with that address (or name) and the Nordic UART Service; when several connected
    devices share the name, none is guessed (one may be another program's update)."""
    matches = [s for s in held if s.nus and wanted(s)]
    if len(matches) > 1:
        listed = ", ".join(str(s) for s in matches)
        raise DeviceNotFound(
            f"no SmartBall with {what} advertised, and BlueZ holds several connected "
            f"({listed}); give its address to pick one"
        )
    return matches[0] if matches else None


def _has_nus(device: BLEDevice) -> bool:
    uuids = device.details["props"].get("UUIDs", []) if isinstance(device.details, dict) else []
    return p.NUS_SERVICE_UUID in (str(u).lower() for u in uuids)


async def scan(backend: BleBackend, timeout: float) -> list[Sighting]:
    """Devices advertising NUS, strongest first."""
    seen = await observe(backend, timeout=timeout)
    nus = [s for s in seen.values() if s.nus]
    return sorted(nus, key=lambda s: -(s.rssi if s.rssi is not None else -999))

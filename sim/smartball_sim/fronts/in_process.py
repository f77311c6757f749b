"""bleak backends (scanner and client) that reach simulated SmartBalls instead of a radio.

The stock ``BleakScanner``/``BleakClient`` front-ends drive these through ``backend=``,
so the OTA client runs unchanged against a real device or the simulator. They copy what
bleak's BlueZ backend does where the field's failures live (read from bleak's
``backends/bluezdbus``): services only after a successful connect, dropped on
every disconnect (so the next GATT call raises "Service Discovery has not been performed
yet"), a plain ``disconnected_callback`` delivered through the loop like a D-Bus signal,
BlueZ's error strings, and a non-dict ``BLEDevice.details`` so bleak-retry-connector makes
no D-Bus calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError

from ..bluez.errors import CONNECT_FAILED_TEXT
from ..device import ConnectRefused, SimDevice, SimLink, SimLinkError
from ..radio import gatt_layout as gatt
from .bleak_base import DeviceRegistry, SimulatedClient, SimulatedScanner

log = logging.getLogger("sim.in_process")

# BlueZ's view of the layout: characteristics by their declaration handle (gatt_layout).
_RX_HANDLE = gatt.NUS_RX.declaration_handle
_TX_HANDLE = gatt.NUS_TX.declaration_handle
_NAME_HANDLE = gatt.DEVICE_NAME.declaration_handle


@dataclass(frozen=True, slots=True)
class SimDetails:
    """``BLEDevice.details`` for a simulated device: deliberately not a dict (see module doc)."""

    device: SimDevice


class SimWorld(DeviceRegistry):
    """The simulated radio neighbourhood: its devices and the bleak backends that reach them."""

    def __init__(self, devices: Iterable[SimDevice] = ()) -> None:
        super().__init__()
        for device in devices:
            self.add(device)
        self.scanner_backend, self.client_backend = self.backends_for(SimScanner, SimClient)

    async def forget(self, address: str) -> bool:
        """What BlueZ's ``Adapter1.RemoveDevice`` does to a device: drop any link and the
        cached GATT database (so an armed stale-cache fault no longer applies)."""
        device = self.find(address)
        if device is None:
            return False
        device.disconnect("host removed the device from its cache")
        device.injector.forget_cache()
        return True


class SimScanner(SimulatedScanner):
    world: ClassVar[SimWorld]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        # Advertise from a task, repeatedly: bleak's find_device_* registers its queue only
        # once iterated, so an advertisement emitted inside start() would be missed.
        self._task = asyncio.get_running_loop().create_task(self._advertise_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _advertise_loop(self) -> None:
        interval = min((d.radio.adv_interval_s for d in self.world.devices.values()), default=0.1)
        while True:
            await asyncio.sleep(interval)
            for device in self.world.devices.values():
                if not device.advertising:
                    continue
                ad = device.advertisement()
                if not self.is_allowed_uuid(ad["service_uuids"]):  # type: ignore[arg-type]
                    continue
                adv = AdvertisementData(platform_data=(device,), **ad)  # type: ignore[arg-type]
                found = self.create_or_update_device(
                    device.address, device.address, device.name, SimDetails(device), adv
                )
                self.call_detection_callbacks(found, adv)


class SimClient(SimulatedClient):
    world: ClassVar[SimWorld]

    def __init__(self, address_or_ble_device: BLEDevice | str, *args: Any, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, *args, **kwargs)
        self._link: SimLink | None = None
        self._notify_callbacks: dict[int, NotifyCallback] = {}

    # --- connection --------------------------------------------------------------------

    def _resolve_device(self) -> SimDevice:
        if self._ble_device is not None and isinstance(self._ble_device.details, SimDetails):
            return self._ble_device.details.device
        device = self.world.find(self.address)
        if device is None:
            raise BleakDeviceNotFoundError(
                self.address, f"Device with address {self.address} was not found."
            )
        return device

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if self.is_connected:
            raise BleakError("Client is already connected")
        device = self._resolve_device()
        timeout = kwargs.get("timeout", self._timeout)
        try:
            async with asyncio.timeout(timeout):
                link = await device.connect(self)
        except ConnectRefused as exc:
            raise BleakError(
                f"[org.bluez.Error.Failed] {CONNECT_FAILED_TEXT[exc.refusal]}"
            ) from None
        self._link = link
        self.services = self._build_services(link)

    async def disconnect(self) -> None:
        link = self._link
        if link is None:
            return
        link.device.host_disconnect(link)
        self._on_disconnected()

    @property
    def is_connected(self) -> bool:
        return self._link is not None and self._link.alive

    @property
    def name(self) -> str:
        return (
            self._link.device.name
            if self._link
            else ((self._ble_device.name or "") if self._ble_device else "")
        )

    @property
    def mtu_size(self) -> int:
        return self._link.mtu if self._link else 23

    # --- callbacks from the device (LinkPeer) --------------------------------------------

    def sim_notification(self, data: bytes) -> None:
        # Delivered through the loop, in order with link loss, as a D-Bus signal would be.
        asyncio.get_running_loop().call_soon(self._deliver, self._link, bytes(data))

    def sim_link_lost(self, reason: str) -> None:
        asyncio.get_running_loop().call_soon(self._on_disconnected, self._link)

    def _deliver(self, link: SimLink | None, data: bytes) -> None:
        callback = self._notify_callbacks.get(_TX_HANDLE)
        if callback is not None and link is self._link:
            callback(bytearray(data))

    def _on_disconnected(self, link: SimLink | None = None) -> None:
        if link is not None and link is not self._link:
            return  # an old link's late signal
        if self._link is None:
            return
        self._link = None
        self.services = None  # what makes the front-end raise "Service Discovery ..."
        self._notify_callbacks.clear()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    # --- GATT --------------------------------------------------------------------------

    def _build_services(self, link: SimLink) -> BleakGATTServiceCollection:
        shown = gatt.SERVICES if link.nus_visible else (gatt.GAP, gatt.GATT)
        return services_from_layout(shown, lambda: link.max_write)

    def _live_link(self) -> SimLink:
        link = self._link
        if link is None or not link.alive:
            raise BleakError("Not connected")
        return link

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, **kwargs: Any
    ) -> bytearray:
        link = self._live_link()
        if characteristic.handle == _NAME_HANDLE:
            return bytearray(link.device.name.encode())
        raise BleakError(f"characteristic {characteristic.uuid} is not readable")

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, **kwargs: Any
    ) -> bytearray:
        self._live_link()
        enabled = _TX_HANDLE in self._notify_callbacks
        return bytearray(b"\x01\x00" if enabled else b"\x00\x00")

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        link = self._live_link()
        if characteristic.handle != _RX_HANDLE:
            raise BleakError(f"characteristic {characteristic.uuid} is not writable")
        try:
            await link.device.write(link, bytes(data))
        except SimLinkError as exc:
            raise BleakError(str(exc)) from None

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        self._live_link()
        raise BleakError("descriptor writes are not supported by the simulator")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        self._live_link()
        if characteristic.handle != _TX_HANDLE:
            raise BleakError(f"characteristic {characteristic.uuid} does not notify")
        self._notify_callbacks[characteristic.handle] = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self._live_link()
        self._notify_callbacks.pop(characteristic.handle, None)


def services_from_layout(
    services: Iterable[gatt.GattService], max_write: Callable[[], int]
) -> BleakGATTServiceCollection:
    """The layout as bleak's BlueZ backend shows it: characteristics by declaration handle."""
    collection = BleakGATTServiceCollection()
    for service in services:
        bleak_service = BleakGATTService(None, service.handle, service.uuid)
        collection.add_service(bleak_service)
        for char in service.characteristics:
            bleak_char = BleakGATTCharacteristic(
                None,
                char.declaration_handle,
                char.uuid,
                cast(list[CharacteristicPropertyName], list(char.properties)),
                max_write,
                bleak_service,
            )
            collection.add_characteristic(bleak_char)
            for desc in char.descriptors:
                collection.add_descriptor(
                    BleakGATTDescriptor(None, desc.handle, desc.uuid, bleak_char)
                )
    return collection

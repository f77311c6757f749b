"""``Adapter1``: discovery (per-client ``StartDiscovery``/``StopDiscovery``; each
advertising device appears, then reports its RSSI when it changes) and ``RemoveDevice``."""

from __future__ import annotations

import asyncio
import logging

from dbus_fast import Message, Variant

from .characteristics import CharacteristicInterface
from .gatt_database import GattDatabase
from .objects import (
    ADAPTER,
    DEVICE,
    ERR_DOES_NOT_EXIST,
    ERR_FAILED,
    ERR_IN_PROGRESS,
    DBusFailure,
    ObjectTree,
    current_caller,
)
from .records import EmulatedDevice, EmulatorTiming

log = logging.getLogger("sim.bluez")


class AdapterInterface:
    """``Adapter1``: discovery and ``RemoveDevice``."""

    def __init__(
        self,
        tree: ObjectTree,
        gatt: GattDatabase,
        characteristics: CharacteristicInterface,
        devices: dict[str, EmulatedDevice],
        timing: EmulatorTiming,
        adapter_path: str,
    ) -> None:
        self.tree = tree
        self.gatt = gatt
        self.characteristics = characteristics
        self.devices = devices
        self.timing = timing
        self.adapter_path = adapter_path
        #: The bus names of the clients that asked for discovery.
        self._discovery_clients: set[str] = set()
        self._scan_task: asyncio.Task[None] | None = None

    def m_SetDiscoveryFilter(self, msg: Message) -> Message:
        return Message.new_method_return(msg)

    def m_GetDiscoveryFilters(self, msg: Message) -> Message:
        filters = ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable"]
        return Message.new_method_return(msg, "as", [filters])

    def m_StartDiscovery(self, msg: Message) -> Message:
        caller = current_caller.get()
        if caller in self._discovery_clients:
            raise DBusFailure(ERR_IN_PROGRESS, "Operation already in progress")
        self._discovery_clients.add(caller)
        if self._scan_task is None:
            self.tree.set(self.adapter_path, ADAPTER, Discovering=Variant("b", True))
            self._scan_task = asyncio.get_running_loop().create_task(self._scan_loop())
        return Message.new_method_return(msg)

    def m_StopDiscovery(self, msg: Message) -> Message:
        caller = current_caller.get()
        if caller not in self._discovery_clients:
            raise DBusFailure(ERR_FAILED, "No discovery started")
        self._discovery_clients.discard(caller)
        if not self._discovery_clients:
            self._discovery_stopped()
        return Message.new_method_return(msg)

    def client_left(self, name: str) -> None:
        """A bus client went away: its discovery ends."""
        if name in self._discovery_clients:
            self._discovery_clients.discard(name)
            if not self._discovery_clients:
                self._discovery_stopped()

    def stop(self) -> None:
        if self._scan_task is not None:
            self._scan_task.cancel()

    def _discovery_stopped(self) -> None:
        if self._scan_task is not None:
            self._scan_task.cancel()
            self._scan_task = None
        self.tree.set(self.adapter_path, ADAPTER, Discovering=Variant("b", False))
        # src/adapter.c discovery_cleanup: RSSI and TxPower of devices are invalidated.
        for dev in self.devices.values():
            dev.last_rssi = None
            if dev.exported and not self.tree.prop(dev.path, DEVICE, "Connected"):
                self.tree.invalidate(dev.path, DEVICE, "RSSI", "TxPower")

    async def _scan_loop(self) -> None:
        """While discovering: each advertising device appears (InterfacesAdded) and then
        reports its RSSI (PropertiesChanged) when it changes, as BlueZ does per report."""
        while True:
            for dev in self.devices.values():
                if not dev.sim.advertising:
                    continue
                ad = dev.sim.advertisement()
                rssi = int(ad["rssi"])  # type: ignore[call-overload]
                if not dev.exported:
                    self._export_device(dev, ad)
                elif rssi != dev.last_rssi:
                    self.tree.set(dev.path, DEVICE, RSSI=Variant("n", rssi))
                dev.last_rssi = rssi
            await asyncio.sleep(self.timing.rssi_interval_s)

    def _export_device(self, dev: EmulatedDevice, ad: dict[str, object]) -> None:
        sim = dev.sim
        props = {
            "Address": Variant("s", sim.address.upper()),
            "AddressType": Variant("s", "random"),
            "Name": Variant("s", sim.name),
            "Alias": Variant("s", sim.name),
            "Paired": Variant("b", False),
            "Bonded": Variant("b", False),
            "Trusted": Variant("b", False),
            "Blocked": Variant("b", False),
            "LegacyPairing": Variant("b", False),
            "RSSI": Variant("n", int(ad["rssi"])),  # type: ignore[call-overload]
            "Connected": Variant("b", False),
            "UUIDs": Variant("as", list(ad["service_uuids"])),  # type: ignore[call-overload]
            "Adapter": Variant("o", self.adapter_path),
            "ManufacturerData": Variant("a{qv}", {}),
            "ServiceData": Variant("a{sv}", {}),
            "AdvertisingFlags": Variant("ay", b"\x06"),
            "ServicesResolved": Variant("b", False),
        }
        dev.exported = True
        self.tree.add_object(dev.path, {DEVICE: props})

    def m_RemoveDevice(self, msg: Message) -> Message:
        (path,) = msg.body
        dev = self.devices.get(path)
        if dev is None or not dev.exported:
            raise DBusFailure(ERR_DOES_NOT_EXIST, "Does Not Exist")
        # src/adapter.c adapter_remove_device -> device_remove: disconnect, drop the
        # GATT cache (the simulated device's stale-cache faults go with it), unexport.
        if dev.connect_task is not None:
            dev.connect_task.cancel()
        if dev.link is not None:
            dev.sim.disconnect("host removed the device from its cache")
        dev.sim.injector.forget_cache()
        self.gatt.drop(dev)
        self.characteristics.close_socks(dev)
        dev.exported = False
        dev.last_rssi = None
        self.tree.remove_object(dev.path)
        log.info("RemoveDevice %s", path)
        return Message.new_method_return(msg)

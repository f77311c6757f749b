"""An emulated ``bluetoothd``: ``org.bluez`` on a D-Bus bus, serving simulated SmartBalls.

Stock bleak (its BlueZ backend), bleak-retry-connector and dbus-fast talk to it exactly as
they talk to BlueZ: ``GetManagedObjects``, ``InterfacesAdded``/``InterfacesRemoved`` from
``/``, ``PropertiesChanged`` on each object, ``Adapter1`` discovery and ``RemoveDevice``,
``Device1.Connect``/``Disconnect``, and NUS as ``GattService1``/``GattCharacteristic1``/
``GattDescriptor1`` objects with ``StartNotify``, ``AcquireNotify``, ``AcquireWrite`` and
``WriteValue``. Shapes, orders, paths and error names follow BlueZ's ``src/device.c``,
``src/gatt-client.c`` and ``src/adapter.c`` (docs/faults.md, "Emulated BlueZ"), and what
real bluetoothd 5.66 says on D-Bus:
``tests/system/test_real_bluez.py`` runs the same scenarios against both (in CI's VM stage) and
compares them phase by phase.

Each device is a :class:`smartball_sim.device.SimDevice`, the same radio, firmware and fault
injection as the in-process bleak backend (``smartball_sim/fronts/in_process.py``). The emulator is
the link's :class:`~smartball_sim.device.LinkPeer`: notifications become
``PropertiesChanged{Value}`` on the TX characteristic (or datagrams on an ``AcquireNotify``
socket), a lost link becomes ``ServicesResolved=false`` then ``Connected=false``. As in BlueZ,
the GATT objects stay exported across disconnects (without their ``MTU`` property, silently)
until ``RemoveDevice``; the GAP service has no object (bluetoothd claims it). Fault
decisions are the device's own (``connect_outcome``, ``nus_hidden_on_connect``,
``forget_cache``); this module only expresses them the BlueZ way:

* ``connect-fail``: ``Connect`` answers ``org.bluez.Error.Failed: br-connection-canceled``;
* ``connect-timeout``: ``Connect`` never answers (the client's timeout fires; its
  ``Disconnect`` cancels the attempt);
* a ``Connect`` to a device that does not advertise: ``org.bluez.Error.Failed:
  le-connection-abort-by-local`` after :attr:`EmulatorTiming.le_connect_timeout_s` (40 s);
* ``race`` (BlueZ before 5.55): ``ServicesResolved=true`` goes out with only the GATT
  service exported, and the NUS objects follow :attr:`EmulatorTiming.race_gap_s` later; the racing
  connection's objects go when it ends;
* ``stale-cache``: the device's cached database (the GATT service, no NUS) is what a
  connect resolves to; it stays exported across disconnects until ``RemoveDevice``.

All of it runs on one asyncio loop and one bus connection (:meth:`BluezEmulator.start`);
:mod:`smartball_sim.bluez.launcher` runs it on a thread of its own next to a private
``dbus-daemon``.

The emulator holds collaborators, one per concern, each in a module of its own: the object
tree (:mod:`.objects`: ``ObjectManager``, ``Properties``, the dispatch of a call to the object
that answers its interface) and one object per D-Bus interface: ``Adapter1`` (:mod:`.adapter`,
discovery), ``Device1`` (:mod:`.devices`, connect and disconnect), ``GattCharacteristic1`` and
``GattDescriptor1`` (:mod:`.characteristics`, the acquired fds, notifications), beside the
exported GATT objects (:mod:`.gatt_database`); :mod:`.records` holds the per-device state and
``EmulatorTiming``. Each is given what it uses; none knows the emulator.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from dbus_fast import BusType, Message, Variant

from smartball_sim.device import SimDevice

from .adapter import AdapterInterface
from .characteristics import CharacteristicInterface, DescriptorInterface
from .devices import DeviceInterface
from .gatt_database import GattDatabase
from .objects import ADAPTER, BLUEZ, CHARACTERISTIC, DESCRIPTOR, DEVICE, BluezBus, ObjectTree
from .records import EmulatedDevice, EmulatorTiming, device_path

__all__ = ["BluezEmulator", "EmulatorTiming"]

log = logging.getLogger("sim.bluez")


class BluezEmulator:
    """``org.bluez`` with one adapter and the given simulated devices, on ``bus_address``:
    the object tree and one object per D-Bus interface, which it builds and wires."""

    def __init__(
        self,
        bus_address: str,
        devices: Iterable[SimDevice] = (),
        *,
        adapter: str = "hci0",
        adapter_address: str = "00:1A:7D:DA:71:13",
        timing: EmulatorTiming | None = None,
    ) -> None:
        self.bus_address = bus_address
        self.adapter = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.adapter_address = adapter_address
        self.timing = timing or EmulatorTiming()
        self.devices: dict[str, EmulatedDevice] = {}
        self.tree = ObjectTree()
        #: The tree's objects and the calls it handled (tests and debugging read them).
        self.objects = self.tree.objects
        self.calls = self.tree.calls
        self.gatt = GattDatabase(self.tree)
        self.characteristic1 = CharacteristicInterface(self.tree, self.devices)
        self.descriptor1 = DescriptorInterface(self.devices)
        self.device1 = DeviceInterface(
            self.tree, self.gatt, self.characteristic1, self.devices, self.timing
        )
        self.adapter1 = AdapterInterface(
            self.tree, self.gatt, self.characteristic1, self.devices, self.timing, self.adapter_path
        )
        self.tree.interfaces.update(
            {
                ADAPTER: self.adapter1,
                DEVICE: self.device1,
                CHARACTERISTIC: self.characteristic1,
                DESCRIPTOR: self.descriptor1,
            }
        )
        self.tree.on_client_left = self._client_left
        for device in devices:
            self.add_device(device)

    # --- set-up ------------------------------------------------------------------------

    def add_device(self, device: SimDevice) -> None:
        path = device_path(self.adapter_path, device.address)
        self.devices[path] = EmulatedDevice(device, path)

    async def start(self) -> None:
        """Connect to the bus, own ``org.bluez`` and export the adapter."""
        bus = self.tree.bus = await BluezBus(
            bus_address=self.bus_address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True
        ).connect()
        bus.add_message_handler(self.tree.on_message)
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"],
            )
        )
        self.objects["/org/bluez"] = {
            "org.bluez.AgentManager1": {},
            "org.bluez.ProfileManager1": {},
        }
        self.objects[self.adapter_path] = {
            ADAPTER: {
                "Address": Variant("s", self.adapter_address),
                "AddressType": Variant("s", "public"),
                "Name": Variant("s", "smartball-ci"),
                "Alias": Variant("s", "smartball-ci"),
                "Class": Variant("u", 0x7C010C),
                "Powered": Variant("b", True),
                "PowerState": Variant("s", "on"),
                "Discoverable": Variant("b", False),
                "DiscoverableTimeout": Variant("u", 180),
                "Pairable": Variant("b", True),
                "PairableTimeout": Variant("u", 0),
                "Discovering": Variant("b", False),
                "UUIDs": Variant("as", []),
                "Modalias": Variant("s", "usb:v1D6Bp0246d0548"),
                "Roles": Variant("as", ["central", "peripheral"]),
            },
            "org.bluez.GattManager1": {},
            "org.bluez.LEAdvertisingManager1": {},
        }
        await bus.request_name(BLUEZ)
        log.info("emulated BlueZ on %s: %s", self.bus_address, self.adapter_path)

    async def stop(self) -> None:
        """Drop links, remove every object and leave the bus. bleak keeps one BlueZManager
        per event loop and ignores org.bluez leaving the bus, so without the removals a
        restarted emulator on the same loop would leave bleak with the old objects (a real
        bluetoothd that exits sends no such removals)."""
        for dev in self.devices.values():
            if dev.connect_task is not None:
                dev.connect_task.cancel()
            if dev.link is not None:
                dev.sim.host_disconnect(dev.link)
                self.device1.link_lost(dev, "emulator stopped", remote=False)
            self.characteristic1.close_socks(dev)
        for task in list(self.tree.tasks):
            task.cancel()
        self.adapter1.stop()
        for path in sorted(self.objects, key=len, reverse=True):
            if path.startswith(self.adapter_path + "/"):
                self.tree.remove_object(path)
        bus, self.tree.bus = self.tree.bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()

    def _client_left(self, name: str) -> None:
        """A bus client went away: its discovery and notify sessions end (BlueZ keeps the
        device connected, see bluez#89, which is why bleak disconnects explicitly)."""
        self.adapter1.client_left(name)
        self.characteristic1.client_left(name)

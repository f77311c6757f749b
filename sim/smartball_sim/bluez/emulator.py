"""An emulated ``bluetoothd``: ``org.bluez`` on a D-Bus bus, serving simulated SmartBalls.

Stock bleak (its BlueZ backend), bleak-retry-connector and dbus-fast talk to it exactly as
they talk to BlueZ: ``GetManagedObjects``, ``InterfacesAdded``/``InterfacesRemoved`` from
``/``, ``PropertiesChanged`` on each object, ``Adapter1`` discovery and ``RemoveDevice``,
``Device1.Connect``/``Disconnect``, and NUS as ``GattService1``/``GattCharacteristic1``/
``GattDescriptor1`` objects with ``StartNotify``, ``AcquireNotify``, ``AcquireWrite`` and
``WriteValue``. Shapes, orders, paths and error names follow BlueZ's ``src/device.c``,
``src/gatt-client.c`` and ``src/adapter.c`` (docs/faults.md, "Emulated BlueZ"), and what
real bluetoothd 5.66 says on D-Bus:
``tests/test_real_bluez.py`` runs the same scenarios against both (in CI's VM stage) and
compares them phase by phase.

Each device is a :class:`smartball_sim.device.SimDevice`, the same radio, firmware and fault
injection as the in-process bleak backend (``smartball_sim/bleak_backend.py``). The emulator is the
link's :class:`~smartball_sim.device.LinkPeer`: notifications become ``PropertiesChanged{Value}`` on
the TX characteristic (or datagrams on an ``AcquireNotify`` socket), a lost link becomes
``ServicesResolved=false`` then ``Connected=false``. As in BlueZ, the GATT objects stay
exported across disconnects (without their ``MTU`` property, silently) until
``RemoveDevice``; the GAP service has no object (bluetoothd claims it). Fault
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

The class is built from one module per concern: :mod:`.objects` (the object tree,
``ObjectManager``, ``Properties``, the dispatch), :mod:`.adapter` (``Adapter1``, discovery),
:mod:`.devices` (``Device1``, connect and disconnect), :mod:`.gatt_database` (the exported
GATT objects), :mod:`.characteristics` (``GattCharacteristic1``/``GattDescriptor1``, the
acquired fds, notifications); :mod:`.records` holds the per-device state and ``EmulatorTiming``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from dbus_fast import BusType, Message, Variant

from smartball_sim.device import SimDevice

from .adapter import AdapterInterface
from .devices import DeviceInterface
from .objects import ADAPTER, BLUEZ, CHARACTERISTIC, BluezBus
from .records import EmulatedDevice, EmulatorTiming, device_path

__all__ = ["BluezEmulator", "EmulatorTiming"]

log = logging.getLogger("sim.bluez")


class BluezEmulator(AdapterInterface, DeviceInterface):
    """``org.bluez`` with one adapter and the given simulated devices, on ``bus_address``."""

    def __init__(
        self,
        bus_address: str,
        devices: Iterable[SimDevice] = (),
        *,
        adapter: str = "hci0",
        adapter_address: str = "00:1A:7D:DA:71:13",
        timing: EmulatorTiming | None = None,
    ) -> None:
        # The state of every layer; each declares (and documents) what it uses.
        self.bus_address = bus_address
        self.adapter = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.adapter_address = adapter_address
        self.timing = timing or EmulatorTiming()
        self.bus = None
        self.objects = {}
        self.devices = {}
        self._discovery_clients = set()
        self._tasks = set()
        self._scan_task = None
        self._fd_replies = []
        self.calls = []
        for device in devices:
            self.add_device(device)

    # --- set-up ------------------------------------------------------------------------

    def add_device(self, device: SimDevice) -> None:
        path = device_path(self.adapter_path, device.address)
        self.devices[path] = EmulatedDevice(self, device, path)

    async def start(self) -> None:
        """Connect to the bus, own ``org.bluez`` and export the adapter."""
        self.bus = await BluezBus(
            bus_address=self.bus_address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True
        ).connect()
        self.bus.add_message_handler(self._on_message)
        await self.bus.call(
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
        await self.bus.request_name(BLUEZ)
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
                self._link_lost(dev, "emulator stopped", remote=False)
            self._close_socks(dev)
        for task in list(self._tasks):
            task.cancel()
        if self._scan_task is not None:
            self._scan_task.cancel()
        for path in sorted(self.objects, key=len, reverse=True):
            if path.startswith(self.adapter_path + "/"):
                self._remove_object(path)
        if self.bus is not None:
            self.bus.disconnect()
            with contextlib.suppress(Exception):
                await self.bus.wait_for_disconnect()
            self.bus = None

    def _client_left(self, name: str) -> None:
        """A bus client went away: its discovery and notify sessions end (BlueZ keeps the
        device connected, see bluez#89, which is why bleak disconnects explicitly)."""
        if name in self._discovery_clients:
            self._discovery_clients.discard(name)
            if not self._discovery_clients:
                self._discovery_stopped()
        for dev in self.devices.values():
            if name in dev.notify_clients:
                dev.notify_clients.discard(name)
                if not dev.notify_clients and dev.gatt.tx is not None:
                    self._set(dev.gatt.tx, CHARACTERISTIC, Notifying=Variant("b", False))

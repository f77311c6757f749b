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
injection as the in-process bleak backend (``sim/bleak_backend.py``). The emulator is the
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
  le-connection-abort-by-local`` after :attr:`Timing.le_connect_timeout_s` (40 s);
* ``race`` (BlueZ before 5.55): ``ServicesResolved=true`` goes out with only the GATT
  service exported, and the NUS objects follow :attr:`Timing.race_gap_s` later; the racing
  connection's objects go when it ends;
* ``stale-cache``: the device's cached database (the GATT service, no NUS) is what a
  connect resolves to; it stays exported across disconnects until ``RemoveDevice``.

All of it runs on one asyncio loop and one bus connection (:meth:`BluezEmulator.start`);
:mod:`smartball_sim.bluez.launcher` runs it on a thread of its own next to a private
``dbus-daemon``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from smartball_sim import gatt_layout as gatt
from smartball_sim.bluez_errors import CONNECT_FAILED_TEXT
from smartball_sim.device import (
    ConnectRefusal,
    ConnectRefused,
    SimDevice,
    SimLink,
    SimLinkError,
)

log = logging.getLogger("sim.bluez")

BLUEZ = "org.bluez"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
SERVICE = "org.bluez.GattService1"
CHARACTERISTIC = "org.bluez.GattCharacteristic1"
DESCRIPTOR = "org.bluez.GattDescriptor1"
#: Interfaces BlueZ lists for every object in GetManagedObjects / InterfacesAdded.
STANDARD = (INTROSPECTABLE, PROPERTIES)

# BlueZ's error names (src/error.h) and the texts bleak and bleak-retry-connector match on.
ERR_FAILED = "org.bluez.Error.Failed"
ERR_NOT_PERMITTED = "org.bluez.Error.NotPermitted"
ERR_NOT_CONNECTED = "org.bluez.Error.NotConnected"
ERR_IN_PROGRESS = "org.bluez.Error.InProgress"
ERR_DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
ERR_NOT_SUPPORTED = "org.bluez.Error.NotSupported"
ERR_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
ERR_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
ERR_UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
LE_CONNECTION_ABORT_BY_LOCAL = "le-connection-abort-by-local"


#: The caller of the method being handled (per-client StartNotify/StartDiscovery).
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


@dataclass(frozen=True, slots=True)
class Timing:
    """The emulator's own latencies (the device's come from its RadioTimings)."""

    #: From ``Connected=true`` to the GATT objects and ``ServicesResolved=true``.
    gatt_discovery_s: float = 0.01
    #: The race: how long after ``ServicesResolved=true`` the NUS objects are exported.
    #: It needs a real gap (>= 5 ms) or bleak handles both signals before it looks.
    race_gap_s: float = 0.02
    #: RSSI updates while discovering (BlueZ reports each advertisement; a change only).
    rssi_interval_s: float = 0.1
    #: A ``Connect`` to a device that does not advertise fails after the kernel's L2CAP
    #: connect timeout (``L2CAP_CONN_TIMEOUT``) with ``le-connection-abort-by-local``: what
    #: real bluetoothd 5.66 on Linux 6.1 answered in tests/test_real_bluez.py.
    le_connect_timeout_s: float = 40.0


class DBusFailure(Exception):
    """A BlueZ error reply: ``name`` and its text."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def _dev_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


@dataclass(eq=False, slots=True)
class _Gatt:
    """The GATT objects exported for one device, by path, and which are NUS's."""

    paths: list[str] = field(default_factory=list)
    rx: str | None = None
    tx: str | None = None
    cccd: str | None = None
    stale: bool = False  # a cached database kept across disconnects (stale-cache)


class _LinkPeer:
    """The host side of one link (smartball_sim.device.LinkPeer): forwards to the emulator."""

    def __init__(self, dev: _EmulatedDevice) -> None:
        self.dev = dev
        self.link: SimLink | None = None
        self.lost_early = False

    def sim_notification(self, data: bytes) -> None:
        if self.link is not None and self.link is self.dev.link:
            self.dev.emu._notify(self.dev, bytes(data))

    def sim_link_lost(self, reason: str) -> None:
        if self.link is None:
            self.lost_early = True  # a connect-triggered fault dropped it before we saw it
            return
        if self.link is self.dev.link:
            self.dev.emu._link_lost(self.dev, reason, remote=True)


@dataclass(eq=False, slots=True)
class _EmulatedDevice:
    emu: BluezEmulator
    sim: SimDevice
    path: str
    exported: bool = False
    link: SimLink | None = None
    connect_task: asyncio.Task[None] | None = None
    gatt: _Gatt = field(default_factory=_Gatt)
    #: StartNotify sessions on TX: unique bus names of the callers.
    notify_clients: set[str] = field(default_factory=set)
    notify_sock: socket.socket | None = None
    #: The current link's discovery raced (its objects go when it ends).
    link_raced: bool = False
    write_sock: socket.socket | None = None
    last_rssi: int | None = None


class _Bus(MessageBus):
    """A MessageBus that never sends dbus-fast's own ObjectManager signals: BlueZ sends one
    ``InterfacesAdded`` per object from ``/``, which the emulator does itself."""

    def _emit_interface_added(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover
        pass

    def _emit_interface_removed(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover
        pass


class BluezEmulator:
    """``org.bluez`` with one adapter and the given simulated devices, on ``bus_address``."""

    def __init__(
        self,
        bus_address: str,
        devices: Iterable[SimDevice] = (),
        *,
        adapter: str = "hci0",
        adapter_address: str = "00:1A:7D:DA:71:13",
        timing: Timing | None = None,
    ) -> None:
        self.bus_address = bus_address
        self.adapter = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.adapter_address = adapter_address
        self.timing = timing or Timing()
        self.bus: MessageBus | None = None
        #: path -> interface -> property -> Variant
        self.objects: dict[str, dict[str, dict[str, Variant]]] = {}
        self.devices: dict[str, _EmulatedDevice] = {}
        self._discovery_clients: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._scan_task: asyncio.Task[None] | None = None
        self._fd_replies: list[tuple[asyncio.Future[Any], socket.socket]] = []
        #: Every method call handled, as (interface, member, path), for tests and debugging.
        self.calls: list[tuple[str, str, str]] = []
        for device in devices:
            self.add_device(device)

    # --- set-up ------------------------------------------------------------------------

    def add_device(self, device: SimDevice) -> None:
        path = _dev_path(self.adapter_path, device.address)
        self.devices[path] = _EmulatedDevice(self, device, path)

    async def start(self) -> None:
        """Connect to the bus, own ``org.bluez`` and export the adapter."""
        self.bus = await _Bus(
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

    # --- the object store and its signals ----------------------------------------------

    def _send(self, msg: Message) -> None:
        if self.bus is not None and self.bus.connected:
            self.bus.send(msg)

    def _add_object(self, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        self.objects[path] = interfaces
        body = {**{i: {} for i in STANDARD}, **interfaces}
        self._send(
            Message.new_signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, body])
        )

    def _remove_object(self, path: str) -> None:
        interfaces = self.objects.pop(path, None)
        if interfaces is None:
            return
        names = [*STANDARD, *interfaces]
        self._send(
            Message.new_signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, names])
        )

    def _set(self, path: str, interface: str, **changes: Variant) -> None:
        """Set properties and send PropertiesChanged with those that changed."""
        props = self.objects.get(path, {}).get(interface)
        if props is None:
            return
        changed = {}
        for name, value in changes.items():
            old = props.get(name)
            if old is None or old.signature != value.signature or old.value != value.value:
                props[name] = value
                changed[name] = value
        if changed:
            self._send(
                Message.new_signal(
                    path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, changed, []]
                )
            )

    def _invalidate(self, path: str, interface: str, *names: str) -> None:
        props = self.objects.get(path, {}).get(interface)
        if props is None:
            return
        gone = [n for n in names if props.pop(n, None) is not None]
        if gone:
            self._send(
                Message.new_signal(
                    path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, {}, gone]
                )
            )

    def _prop(self, path: str, interface: str, name: str) -> Any:
        value = self.objects.get(path, {}).get(interface, {}).get(name)
        return value.value if value is not None else None

    # --- dispatch ------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
                name, _old, new = msg.body
                if name.startswith(":") and not new:
                    self._client_left(name)
            return None
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        self.calls.append((msg.interface or "", msg.member or "", msg.path or ""))
        token = _caller.set(msg.sender or "")
        try:
            return self._dispatch(msg)
        except DBusFailure as exc:
            return Message.new_error(msg, exc.name, exc.text)
        finally:
            _caller.reset(token)

    def _dispatch(self, msg: Message) -> Message | bool:
        path, interface, member = msg.path or "", msg.interface, msg.member
        if interface == INTROSPECTABLE and member == "Introspect":
            return Message.new_method_return(msg, "s", [self._introspect(path)])
        if path == "/" and interface == OBJECT_MANAGER and member == "GetManagedObjects":
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._managed_objects()])
        if path not in self.objects:
            raise DBusFailure(
                ERR_UNKNOWN_OBJECT,
                f'Method "{member}" with signature "{msg.signature}" on interface '
                f'"{interface}" doesn\'t exist',
            )
        if interface == PROPERTIES:
            return self._properties_call(msg)
        if interface not in self.objects[path]:
            raise DBusFailure(
                ERR_UNKNOWN_METHOD,
                f'Method "{member}" with signature "{msg.signature}" on interface '
                f'"{interface}" doesn\'t exist',
            )
        handler = getattr(self, f"_m_{interface.rsplit('.', 1)[1]}_{member}", None)
        if handler is None:
            raise DBusFailure(ERR_NOT_SUPPORTED, f"{interface}.{member} is not emulated")
        result = handler(msg)
        if asyncio.iscoroutine(result):
            self._spawn(self._reply_later(msg, result))
            return True
        return result

    async def _reply_later(self, msg: Message, coro: Any) -> None:
        try:
            reply = await coro
        except DBusFailure as exc:
            reply = Message.new_error(msg, exc.name, exc.text)
        except asyncio.CancelledError:
            if msg.member == "Connect":  # cancelled by Disconnect or RemoveDevice
                self._send(Message.new_error(msg, ERR_FAILED, "br-connection-canceled"))
            return
        except Exception as exc:  # a bug in the emulator: answer, and log it
            log.exception("emulated %s.%s failed", msg.interface, msg.member)
            reply = Message.new_error(msg, ERR_FAILED, f"emulator error: {exc}")
        if reply is not None:
            self._send(reply)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _managed_objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        return {
            path: {**{i: {} for i in STANDARD}, **{i: dict(p) for i, p in ifaces.items()}}
            for path, ifaces in self.objects.items()
        }

    def _introspect(self, path: str) -> str:
        prefix = path.rstrip("/") + "/"
        children = sorted(
            {p[len(prefix) :].split("/")[0] for p in self.objects if p.startswith(prefix)}
        )
        nodes = "".join(f'<node name="{c}"/>' for c in children)
        ifaces = "".join(f'<interface name="{i}"/>' for i in self.objects.get(path, {}))
        return f"<node>{ifaces}{nodes}</node>"

    def _properties_call(self, msg: Message) -> Message:
        path = msg.path or ""
        if msg.member == "GetAll":
            (interface,) = msg.body
            props = self.objects[path].get(interface, {})
            return Message.new_method_return(msg, "a{sv}", [dict(props)])
        if msg.member == "Get":
            interface, name = msg.body
            value = self.objects[path].get(interface, {}).get(name)
            if value is None:
                raise DBusFailure(ERR_UNKNOWN_PROPERTY, f"No such property '{name}'")
            return Message.new_method_return(msg, "v", [value])
        if msg.member == "Set":
            interface, name, value = msg.body
            if interface == DEVICE and name in ("Trusted", "Blocked", "Alias"):
                self._set(path, interface, **{name: value})
                return Message.new_method_return(msg)
            raise DBusFailure(ERR_NOT_SUPPORTED, f"Property '{name}' is read-only here")
        raise DBusFailure(ERR_UNKNOWN_METHOD, f"Properties.{msg.member} doesn't exist")

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

    # --- Adapter1 ----------------------------------------------------------------------

    def _m_Adapter1_SetDiscoveryFilter(self, msg: Message) -> Message:
        return Message.new_method_return(msg)

    def _m_Adapter1_GetDiscoveryFilters(self, msg: Message) -> Message:
        filters = ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable"]
        return Message.new_method_return(msg, "as", [filters])

    def _m_Adapter1_StartDiscovery(self, msg: Message) -> Message:
        caller = _caller.get()
        if caller in self._discovery_clients:
            raise DBusFailure(ERR_IN_PROGRESS, "Operation already in progress")
        self._discovery_clients.add(caller)
        if self._scan_task is None:
            self._set(self.adapter_path, ADAPTER, Discovering=Variant("b", True))
            self._scan_task = asyncio.get_running_loop().create_task(self._scan_loop())
        return Message.new_method_return(msg)

    def _m_Adapter1_StopDiscovery(self, msg: Message) -> Message:
        caller = _caller.get()
        if caller not in self._discovery_clients:
            raise DBusFailure(ERR_FAILED, "No discovery started")
        self._discovery_clients.discard(caller)
        if not self._discovery_clients:
            self._discovery_stopped()
        return Message.new_method_return(msg)

    def _discovery_stopped(self) -> None:
        if self._scan_task is not None:
            self._scan_task.cancel()
            self._scan_task = None
        self._set(self.adapter_path, ADAPTER, Discovering=Variant("b", False))
        # src/adapter.c discovery_cleanup: RSSI and TxPower of devices are invalidated.
        for dev in self.devices.values():
            dev.last_rssi = None
            if dev.exported and not self._prop(dev.path, DEVICE, "Connected"):
                self._invalidate(dev.path, DEVICE, "RSSI", "TxPower")

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
                    self._set(dev.path, DEVICE, RSSI=Variant("n", rssi))
                dev.last_rssi = rssi
            await asyncio.sleep(self.timing.rssi_interval_s)

    def _export_device(self, dev: _EmulatedDevice, ad: dict[str, object]) -> None:
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
        self._add_object(dev.path, {DEVICE: props})

    def _m_Adapter1_RemoveDevice(self, msg: Message) -> Message:
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
        self._drop_gatt(dev)
        self._close_socks(dev)
        dev.exported = False
        dev.last_rssi = None
        self._remove_object(dev.path)
        log.info("RemoveDevice %s", path)
        return Message.new_method_return(msg)

    # --- Device1 -----------------------------------------------------------------------

    def _dev(self, msg: Message) -> _EmulatedDevice:
        return self.devices[msg.path or ""]

    def _m_Device1_Connect(self, msg: Message) -> bool | Message:
        dev = self._dev(msg)
        if dev.link is not None:
            return Message.new_method_return(msg)  # already connected: nothing to do
        if dev.connect_task is not None:
            raise DBusFailure(ERR_IN_PROGRESS, "In Progress")

        async def connect() -> Message:
            try:
                await self._connect(dev)
            finally:
                if dev.connect_task is asyncio.current_task():
                    dev.connect_task = None
            return Message.new_method_return(msg)

        dev.connect_task = self._spawn(self._reply_later(msg, connect()))
        return True

    async def _connect(self, dev: _EmulatedDevice) -> None:
        sim = dev.sim
        peer = _LinkPeer(dev)
        try:
            async with asyncio.timeout(self.timing.le_connect_timeout_s):
                link = await sim.connect(peer)
        except TimeoutError:
            raise DBusFailure(ERR_FAILED, LE_CONNECTION_ABORT_BY_LOCAL) from None
        except ConnectRefused as exc:
            if exc.refusal is ConnectRefusal.ABORTED_AT_ONCE:
                # BlueZ connected and lost it at once: bleak waits for Connected to go
                # true -> false before it retries; without it bleak hangs until its timeout.
                self._set(dev.path, DEVICE, Connected=Variant("b", True))
                self._set(dev.path, DEVICE, Connected=Variant("b", False))
            raise DBusFailure(ERR_FAILED, CONNECT_FAILED_TEXT[exc.refusal]) from None
        peer.link = link
        dev.link = link
        # src/device.c att_connect_cb: Connected=true, then the Connect reply, then the
        # GATT client's discovery exports the objects and sets ServicesResolved.
        self._set(dev.path, DEVICE, Connected=Variant("b", True))
        if peer.lost_early or not link.alive:
            self._link_lost(dev, "dropped at once", remote=True)
            return
        self._spawn(self._discover(dev, link))

    async def _discover(self, dev: _EmulatedDevice, link: SimLink) -> None:
        """BlueZ keeps a device's GATT objects across disconnects (until RemoveDevice): a
        reconnect to a known device exports nothing new and only sets ServicesResolved;
        the first connect (or one after RemoveDevice) exports every object first."""
        await asyncio.sleep(self.timing.gatt_discovery_s)
        if dev.link is not link or not link.alive:
            return
        if link.nus_visible:
            if dev.gatt.stale or dev.gatt.tx is None:
                self._drop_gatt(dev)  # a fresh discovery replaces the stale database
                self._export_gatt(dev, link, nus=True)
            else:
                self._mtu_known(dev, link)
            self._set(dev.path, DEVICE, ServicesResolved=Variant("b", True))
            return
        if link.nus_hidden == "stale-cache":
            # Discovery skipped: the cached database (no NUS) is what the device resolves to.
            if not dev.gatt.stale:
                self._drop_gatt(dev)
                self._export_gatt(dev, link, nus=False, stale=True)
            else:
                self._mtu_known(dev, link)
            self._set(dev.path, DEVICE, ServicesResolved=Variant("b", True))
            return
        # The race (BlueZ before 5.55 re-discovering): ServicesResolved=true while only the
        # GATT service is exported; NUS comes later.
        dev.link_raced = True
        self._drop_gatt(dev)
        self._export_gatt(dev, link, nus=False)
        self._set(dev.path, DEVICE, ServicesResolved=Variant("b", True))
        await asyncio.sleep(self.timing.race_gap_s)
        if dev.link is link and link.alive:
            self._export_gatt(dev, link, nus=True, gatt_service=False)

    def _m_Device1_Disconnect(self, msg: Message) -> Any:
        dev = self._dev(msg)
        if dev.connect_task is not None:
            # "Calling Disconnect cancels any pending connect request" (bleak's comment).
            dev.connect_task.cancel()
            dev.connect_task = None
        link = dev.link
        if link is None:
            raise DBusFailure(ERR_NOT_CONNECTED, "Not Connected")
        dev.sim.host_disconnect(link)
        self._link_lost(dev, "disconnected by host", remote=False)
        return Message.new_method_return(msg)

    def _m_Device1_Pair(self, msg: Message) -> Message:
        raise DBusFailure(ERR_NOT_SUPPORTED, "the simulated SmartBall does not pair")

    def _m_Device1_CancelPairing(self, msg: Message) -> Message:
        raise DBusFailure(ERR_DOES_NOT_EXIST, "Does Not Exist")

    def _link_lost(self, dev: _EmulatedDevice, reason: str, *, remote: bool) -> None:
        """src/device.c device_disconnected, as the D-Bus side sees it: ServicesResolved
        false, Disconnected, Connected false. The GATT objects stay exported (real
        bluetoothd 5.66 keeps them until RemoveDevice; tests/test_real_bluez.py compares),
        without their MTU; a call on them answers "Not connected". Notify sessions end."""
        if dev.link is None:
            return
        dev.link = None
        self._set(dev.path, DEVICE, ServicesResolved=Variant("b", False))
        self._close_socks(dev)
        self._mtu_unknown(dev)
        if dev.link_raced:
            # The race imitates BlueZ before 5.55 resolving services early. A connection
            # that raced leaves no objects behind, so the next connect discovers afresh;
            # kept objects would let bleak-retry-connector reuse bleak's NUS-less
            # collection on every reconnect (it does so when all cached paths exist).
            dev.link_raced = False
            self._drop_gatt(dev)
        dev.notify_clients.clear()
        if dev.gatt.tx is not None:
            self._set(dev.gatt.tx, CHARACTERISTIC, Notifying=Variant("b", False))
        who = "org.bluez.Reason.Remote" if remote else "org.bluez.Reason.Local"
        self._send(
            Message.new_signal(
                dev.path, DEVICE, "Disconnected", "ss", [who, f"Connection terminated: {reason}"]
            )
        )
        self._set(dev.path, DEVICE, Connected=Variant("b", False))
        log.info("%s: disconnected (%s)", dev.path, reason)

    # --- GATT objects --------------------------------------------------------------------

    def _export_gatt(
        self,
        dev: _EmulatedDevice,
        link: SimLink,
        *,
        nus: bool,
        gatt_service: bool = True,
        stale: bool = False,
    ) -> None:
        """InterfacesAdded for each service, characteristic and descriptor, in order.
        Paths are ``<dev>/serviceXXXX/charYYYY/descZZZZ`` with 4 hex digits: bleak
        derives the device and the handle from them. The GAP service (0x1800) gets no
        object: bluetoothd claims it for itself (its UUID is still in Device1.UUIDs)."""
        mtu = Variant("q", link.mtu)

        def service(handle: int, uuid: str) -> str:
            path = f"{dev.path}/service{handle:04x}"
            self._add_object(
                path,
                {
                    SERVICE: {
                        "UUID": Variant("s", uuid),
                        "Device": Variant("o", dev.path),
                        "Primary": Variant("b", True),
                        "Includes": Variant("ao", []),
                        "Handle": Variant("q", handle),
                    }
                },
            )
            dev.gatt.paths.append(path)
            return path

        def char(svc: str, handle: int, uuid: str, flags: list[str], **extra: Variant) -> str:
            path = f"{svc}/char{handle:04x}"
            props = {
                "UUID": Variant("s", uuid),
                "Service": Variant("o", svc),
                "Flags": Variant("as", flags),
                "MTU": mtu,
                "Handle": Variant("q", handle + 1),
                **extra,
            }
            self._add_object(path, {CHARACTERISTIC: props})
            dev.gatt.paths.append(path)
            return path

        def desc(chr_path: str, handle: int, uuid: str) -> str:
            path = f"{chr_path}/desc{handle:04x}"
            props = {
                "UUID": Variant("s", uuid),
                "Characteristic": Variant("o", chr_path),
                "Handle": Variant("q", handle),
            }
            self._add_object(path, {DESCRIPTOR: props})
            dev.gatt.paths.append(path)
            return path

        def export(definition: gatt.GattService) -> dict[int, str]:
            """The service's objects; the paths of its characteristics and descriptors
            by handle (declaration handles for characteristics, as BlueZ names them)."""
            svc = service(definition.handle, definition.uuid)
            paths: dict[int, str] = {}
            for c in definition.characteristics:
                extra: dict[str, Variant] = {}
                if "notify" in c.properties or "indicate" in c.properties:
                    extra["Notifying"] = Variant("b", False)
                if "notify" in c.properties:
                    extra["NotifyAcquired"] = Variant("b", False)
                if "write-without-response" in c.properties:
                    extra["WriteAcquired"] = Variant("b", False)
                path = paths[c.declaration_handle] = char(
                    svc, c.declaration_handle, c.uuid, list(c.properties), **extra
                )
                for d in c.descriptors:
                    paths[d.handle] = desc(path, d.handle, d.uuid)
            return paths

        if gatt_service:
            export(gatt.GATT)
        dev.gatt.stale = stale
        if not nus:
            return
        paths = export(gatt.NUS)
        dev.gatt.rx = paths[gatt.NUS_RX.declaration_handle]
        dev.gatt.tx = paths[gatt.NUS_TX.declaration_handle]
        dev.gatt.cccd = paths[gatt.NUS_TX_CCCD.handle]

    def _drop_gatt(self, dev: _EmulatedDevice) -> None:
        """InterfacesRemoved for every GATT object, in bluetoothd's order: service by
        service, each characteristic after its descriptors, the service last."""
        paths = dev.gatt.paths
        for svc in [p for p in paths if "/char" not in p]:
            chars = [p for p in paths if p.startswith(f"{svc}/char") and "/desc" not in p]
            for char in chars:
                for desc in [p for p in paths if p.startswith(f"{char}/desc")]:
                    self._remove_object(desc)
                self._remove_object(char)
            self._remove_object(svc)
        dev.gatt = _Gatt()
        dev.notify_clients.clear()

    def _characteristics(self, dev: _EmulatedDevice) -> list[str]:
        return [p for p in dev.gatt.paths if "/char" in p and "/desc" not in p]

    def _mtu_known(self, dev: _EmulatedDevice, link: SimLink) -> None:
        """A connected characteristic has the link's ATT MTU as its ``MTU`` property.
        Silently, as real bluetoothd 5.66 does: no PropertiesChanged when it comes back
        on a reconnect (bleak keeps the value it read when the object appeared)."""
        for path in self._characteristics(dev):
            props = self.objects.get(path, {}).get(CHARACTERISTIC)
            if props is not None:
                props["MTU"] = Variant("q", link.mtu)

    def _mtu_unknown(self, dev: _EmulatedDevice) -> None:
        """Without a link the characteristics have no ``MTU`` in GetManagedObjects, and
        no signal says so (real bluetoothd 5.66)."""
        for path in self._characteristics(dev):
            self.objects.get(path, {}).get(CHARACTERISTIC, {}).pop("MTU", None)

    def _gatt_target(self, msg: Message) -> tuple[_EmulatedDevice, str]:
        path = msg.path or ""
        for dev in self.devices.values():
            if path.startswith(dev.path + "/"):
                return dev, path
        raise DBusFailure(ERR_UNKNOWN_OBJECT, f"no such object {path}")  # pragma: no cover

    def _live(self, dev: _EmulatedDevice) -> SimLink:
        link = dev.link
        if link is None or not link.alive or dev.gatt.stale:
            # A cached object of a device that is not connected (or whose cache is stale:
            # the handles no longer answer).
            raise DBusFailure(ERR_FAILED, "Not connected")
        return link

    def _m_GattCharacteristic1_ReadValue(self, msg: Message) -> Message:
        dev, path = self._gatt_target(msg)
        link = self._live(dev)
        if self._prop(path, CHARACTERISTIC, "UUID") == gatt.DEVICE_NAME_UUID:
            return Message.new_method_return(msg, "ay", [link.device.name.encode()])
        raise DBusFailure(ERR_NOT_PERMITTED, "Read not permitted")

    def _m_GattCharacteristic1_WriteValue(self, msg: Message) -> Any:
        dev, path = self._gatt_target(msg)
        data, options = msg.body
        link = self._live(dev)
        if path != dev.gatt.rx:
            raise DBusFailure(ERR_NOT_PERMITTED, "Write not permitted")
        self._check_write_released(dev)
        if self._prop(path, CHARACTERISTIC, "WriteAcquired"):
            raise DBusFailure(ERR_NOT_PERMITTED, "Write acquired")
        if len(data) > link.max_write and options.get("type", Variant("s", "")).value == "command":
            raise DBusFailure(ERR_FAILED, "Failed to initiate write")

        async def write() -> Message:
            try:
                await link.device.write(link, bytes(data))
            except SimLinkError as exc:
                raise DBusFailure(ERR_FAILED, str(exc)) from None
            return Message.new_method_return(msg)

        return write()

    def _m_GattCharacteristic1_StartNotify(self, msg: Message) -> Message:
        dev, path = self._gatt_target(msg)
        self._live(dev)
        if path != dev.gatt.tx:
            raise DBusFailure(ERR_NOT_SUPPORTED, "Operation is not supported")
        if self._prop(path, CHARACTERISTIC, "NotifyAcquired"):
            raise DBusFailure(ERR_NOT_PERMITTED, "Notify acquired")
        caller = _caller.get()
        if caller in dev.notify_clients:
            raise DBusFailure(ERR_IN_PROGRESS, "In Progress")
        dev.notify_clients.add(caller)
        self._set(path, CHARACTERISTIC, Notifying=Variant("b", True))
        return Message.new_method_return(msg)

    def _m_GattCharacteristic1_StopNotify(self, msg: Message) -> Message:
        dev, path = self._gatt_target(msg)
        caller = _caller.get()
        if caller not in dev.notify_clients:
            raise DBusFailure(ERR_FAILED, "No notify session started")
        dev.notify_clients.discard(caller)
        if not dev.notify_clients:
            self._set(path, CHARACTERISTIC, Notifying=Variant("b", False))
        return Message.new_method_return(msg)

    def _m_GattCharacteristic1_AcquireNotify(self, msg: Message) -> bool:
        dev, path = self._gatt_target(msg)
        link = self._live(dev)
        if path != dev.gatt.tx:
            raise DBusFailure(ERR_NOT_SUPPORTED, "Operation is not supported")
        if dev.notify_sock is not None or dev.notify_clients:
            raise DBusFailure(ERR_IN_PROGRESS, "Notify already acquired")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        dev.notify_sock = mine
        loop = asyncio.get_running_loop()
        loop.add_reader(mine.fileno(), self._acquired_hup, dev)
        self._set(path, CHARACTERISTIC, NotifyAcquired=Variant("b", True))
        self._set(path, CHARACTERISTIC, Notifying=Variant("b", True))
        self._send_fd_reply(msg, theirs, link.mtu)
        return True

    def _m_GattCharacteristic1_AcquireWrite(self, msg: Message) -> bool:
        dev, path = self._gatt_target(msg)
        link = self._live(dev)
        if path != dev.gatt.rx:
            raise DBusFailure(ERR_NOT_SUPPORTED, "Operation is not supported")
        self._check_write_released(dev)
        if dev.write_sock is not None:
            raise DBusFailure(ERR_NOT_PERMITTED, "Write acquired")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        dev.write_sock = mine
        asyncio.get_running_loop().add_reader(mine.fileno(), self._acquired_write_ready, dev)
        self._set(path, CHARACTERISTIC, WriteAcquired=Variant("b", True))
        self._send_fd_reply(msg, theirs, link.mtu)
        return True

    def _send_fd_reply(self, msg: Message, fd_sock: socket.socket, mtu: int) -> None:
        """Reply ``(h, q)``; our copy of the client's end is closed once the reply is
        written. libdbus dups the fd it sends, dbus-fast does not: kept open any longer,
        our copy would hide the client's close (no HUP), and a write right after
        ``_acquire_mtu()`` would fail with ``NotPermitted: Write acquired``."""
        reply = Message.new_method_return(msg, "hq", [0, mtu], unix_fds=[fd_sock.fileno()])
        assert self.bus is not None
        future = self.bus.send(reply)
        self._fd_replies.append((future, fd_sock))
        future.add_done_callback(lambda _f: self._close_sent_fds())

    def _close_sent_fds(self) -> None:
        """Close our copies of the fds of replies already written. Also called before a
        call that depends on the client having closed its end: the done callback may not
        have run yet when the client's next call arrives."""
        keep = []
        for future, sock in self._fd_replies:
            if future.done():
                sock.close()
            else:
                keep.append((future, sock))
        self._fd_replies = keep

    def _acquired_hup(self, dev: _EmulatedDevice) -> None:
        if _hung_up(dev.notify_sock):
            self._release_notify(dev)

    def _release_notify(self, dev: _EmulatedDevice) -> None:
        sock, dev.notify_sock = dev.notify_sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        if dev.gatt.tx is not None:
            self._set(dev.gatt.tx, CHARACTERISTIC, NotifyAcquired=Variant("b", False))
            if not dev.notify_clients:
                self._set(dev.gatt.tx, CHARACTERISTIC, Notifying=Variant("b", False))

    def _acquired_write_ready(self, dev: _EmulatedDevice) -> None:
        sock = dev.write_sock
        if sock is None:
            return
        try:
            data = sock.recv(512)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._release_write(dev)
            return
        link = dev.link
        if link is not None and link.alive:
            self._spawn(self._write_quietly(link, data))

    async def _write_quietly(self, link: SimLink, data: bytes) -> None:
        with contextlib.suppress(SimLinkError):
            await link.device.write(link, data)

    def _check_write_released(self, dev: _EmulatedDevice) -> None:
        """The client may have closed its AcquireWrite fd just before this call; notice
        the hang-up now rather than when the loop gets to the reader."""
        if dev.write_sock is None:
            return
        self._close_sent_fds()
        if _hung_up(dev.write_sock):
            self._release_write(dev)

    def _release_write(self, dev: _EmulatedDevice) -> None:
        sock, dev.write_sock = dev.write_sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        if dev.gatt.rx is not None:
            self._set(dev.gatt.rx, CHARACTERISTIC, WriteAcquired=Variant("b", False))

    def _close_socks(self, dev: _EmulatedDevice) -> None:
        self._release_notify(dev)
        self._release_write(dev)

    def _m_GattDescriptor1_ReadValue(self, msg: Message) -> Message:
        dev, path = self._gatt_target(msg)
        self._live(dev)
        enabled = path == dev.gatt.cccd and (dev.notify_clients or dev.notify_sock is not None)
        return Message.new_method_return(msg, "ay", [b"\x01\x00" if enabled else b"\x00\x00"])

    def _m_GattDescriptor1_WriteValue(self, msg: Message) -> Message:
        # BlueZ refuses CCCD writes from clients: StartNotify is the way.
        raise DBusFailure(ERR_NOT_PERMITTED, "Write not permitted")

    # --- from the device ---------------------------------------------------------------

    def _notify(self, dev: _EmulatedDevice, data: bytes) -> None:
        tx = dev.gatt.tx
        if tx is None:
            return  # NUS not exported (race, stale cache): BlueZ has nowhere to put it
        if dev.notify_sock is not None:
            with contextlib.suppress(OSError):
                dev.notify_sock.send(data)
            return
        if dev.notify_clients:
            self._send(
                Message.new_signal(
                    tx,
                    PROPERTIES,
                    "PropertiesChanged",
                    "sa{sv}as",
                    [CHARACTERISTIC, {"Value": Variant("ay", data)}, []],
                )
            )


def _hung_up(sock: socket.socket | None) -> bool:
    """Whether the client closed its end of an acquired fd (peek: nothing is consumed)."""
    if sock is None:
        return False
    try:
        return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True

"""The emulator's D-Bus side: bluetoothd's names and error replies, and the object tree
every interface lives in (``ObjectTree``). The tree holds the objects and their properties,
the signals that announce changes (``InterfacesAdded``/``InterfacesRemoved`` from ``/``,
``PropertiesChanged``), ``ObjectManager``, ``Properties`` and ``Introspectable``, and the
dispatch of a method call to the object that answers its interface (one per D-Bus interface,
in the modules beside this one), at its method ``m_<Member>``."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

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
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class DBusFailure(Exception):
    """A BlueZ error reply: ``name`` and its text."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


class BluezBus(MessageBus):
    """A MessageBus that never sends dbus-fast's own ObjectManager signals: BlueZ sends one
    ``InterfacesAdded`` per object from ``/``, which the emulator does itself."""

    def _emit_interface_added(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover
        pass

    def _emit_interface_removed(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover
        pass


class ObjectTree:
    """The objects ``org.bluez`` exports and the dispatch of calls on them."""

    def __init__(self) -> None:
        self.bus: MessageBus | None = None
        #: path -> interface -> property -> Variant
        self.objects: dict[str, dict[str, dict[str, Variant]]] = {}
        #: D-Bus interface name -> the object whose ``m_<Member>`` methods answer it.
        self.interfaces: dict[str, object] = {}
        #: Told the unique bus name of a client that left the bus.
        self.on_client_left: Callable[[str], None] = lambda name: None
        #: Every method call handled, as (interface, member, path), for tests and debugging.
        self.calls: list[tuple[str, str, str]] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    # --- the object store and its signals ----------------------------------------------

    def send(self, msg: Message) -> None:
        if self.bus is not None and self.bus.connected:
            self.bus.send(msg)

    def add_object(self, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        self.objects[path] = interfaces
        body = {**{i: {} for i in STANDARD}, **interfaces}
        self.send(
            Message.new_signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, body])
        )

    def remove_object(self, path: str) -> None:
        interfaces = self.objects.pop(path, None)
        if interfaces is None:
            return
        names = [*STANDARD, *interfaces]
        self.send(
            Message.new_signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, names])
        )

    def set(self, path: str, interface: str, **changes: Variant) -> None:
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
            self.send(
                Message.new_signal(
                    path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, changed, []]
                )
            )

    def invalidate(self, path: str, interface: str, *names: str) -> None:
        props = self.objects.get(path, {}).get(interface)
        if props is None:
            return
        gone = [n for n in names if props.pop(n, None) is not None]
        if gone:
            self.send(
                Message.new_signal(
                    path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, {}, gone]
                )
            )

    def prop(self, path: str, interface: str, name: str) -> Any:
        value = self.objects.get(path, {}).get(interface, {}).get(name)
        return value.value if value is not None else None

    # --- dispatch ------------------------------------------------------------------------

    def on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
                name, _old, new = msg.body
                if name.startswith(":") and not new:
                    self.on_client_left(name)
            return None
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        self.calls.append((msg.interface or "", msg.member or "", msg.path or ""))
        token = current_caller.set(msg.sender or "")
        try:
            return self._dispatch(msg)
        except DBusFailure as exc:
            return Message.new_error(msg, exc.name, exc.text)
        finally:
            current_caller.reset(token)

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
        handler = getattr(self.interfaces.get(interface or ""), f"m_{member}", None)
        if handler is None:
            raise DBusFailure(ERR_NOT_SUPPORTED, f"{interface}.{member} is not emulated")
        result = handler(msg)
        if asyncio.iscoroutine(result):
            self.spawn(self.reply_later(msg, result))
            return True
        return result

    async def reply_later(self, msg: Message, coro: Any) -> None:
        try:
            reply = await coro
        except DBusFailure as exc:
            reply = Message.new_error(msg, exc.name, exc.text)
        except asyncio.CancelledError:
            if msg.member == "Connect":  # cancelled by Disconnect or RemoveDevice
                self.send(Message.new_error(msg, ERR_FAILED, "br-connection-canceled"))
            return
        except Exception as exc:  # a bug in the emulator: answer, and log it
            log.exception("emulated %s.%s failed", msg.interface, msg.member)
            reply = Message.new_error(msg, ERR_FAILED, f"emulator error: {exc}")
        if reply is not None:
            self.send(reply)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
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
                self.set(path, interface, **{name: value})
                return Message.new_method_return(msg)
            raise DBusFailure(ERR_NOT_SUPPORTED, f"Property '{name}' is read-only here")
        raise DBusFailure(ERR_UNKNOWN_METHOD, f"Properties.{msg.member} doesn't exist")

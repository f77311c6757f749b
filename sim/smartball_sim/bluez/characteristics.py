"""``GattCharacteristic1`` and ``GattDescriptor1``, one object each: reads, writes and notify
sessions on the exported objects, the file descriptors of ``AcquireNotify``/``AcquireWrite``
(socket pairs, released when the client hangs up), and the device's notifications on their
way to the client (``PropertiesChanged{Value}`` or a datagram on the acquired socket)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from dbus_fast import Message, Variant

from smartball_sim.device import SimLink, SimLinkError
from smartball_sim.radio import gatt_layout as gatt

from .objects import (
    CHARACTERISTIC,
    ERR_FAILED,
    ERR_IN_PROGRESS,
    ERR_NOT_PERMITTED,
    ERR_NOT_SUPPORTED,
    ERR_UNKNOWN_OBJECT,
    PROPERTIES,
    DBusFailure,
    ObjectTree,
    current_caller,
)
from .records import EmulatedDevice


def gatt_target(devices: dict[str, EmulatedDevice], msg: Message) -> tuple[EmulatedDevice, str]:
    """The device a GATT object's path belongs to, and the path."""
    path = msg.path or ""
    for dev in devices.values():
        if path.startswith(dev.path + "/"):
            return dev, path
    raise DBusFailure(ERR_UNKNOWN_OBJECT, f"no such object {path}")  # pragma: no cover


def live(dev: EmulatedDevice) -> SimLink:
    """The device's link, or the error a call on a cached object answers without one."""
    link = dev.link
    if link is None or not link.alive or dev.gatt.stale:
        # A cached object of a device that is not connected (or whose cache is stale:
        # the handles no longer answer).
        raise DBusFailure(ERR_FAILED, "Not connected")
    return link


class CharacteristicInterface:
    """``GattCharacteristic1``: its methods, the acquired fds, and the device's
    notifications on their way to the client."""

    def __init__(self, tree: ObjectTree, devices: dict[str, EmulatedDevice]) -> None:
        self.tree = tree
        self.devices = devices
        #: Replies carrying an fd, with our copy of it (closed once the reply is written).
        self._fd_replies: list[tuple[asyncio.Future[Any], socket.socket]] = []

    def m_ReadValue(self, msg: Message) -> Message:
        dev, path = gatt_target(self.devices, msg)
        link = live(dev)
        if self.tree.prop(path, CHARACTERISTIC, "UUID") == gatt.DEVICE_NAME_UUID:
            return Message.new_method_return(msg, "ay", [link.device.name.encode()])
        raise DBusFailure(ERR_NOT_PERMITTED, "Read not permitted")

    def m_WriteValue(self, msg: Message) -> Any:
        dev, path = gatt_target(self.devices, msg)
        data, options = msg.body
        link = live(dev)
        if path != dev.gatt.rx:
            raise DBusFailure(ERR_NOT_PERMITTED, "Write not permitted")
        self._check_write_released(dev)
        if self.tree.prop(path, CHARACTERISTIC, "WriteAcquired"):
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

    def m_StartNotify(self, msg: Message) -> Message:
        dev, path = gatt_target(self.devices, msg)
        live(dev)
        if path != dev.gatt.tx:
            raise DBusFailure(ERR_NOT_SUPPORTED, "Operation is not supported")
        if self.tree.prop(path, CHARACTERISTIC, "NotifyAcquired"):
            raise DBusFailure(ERR_NOT_PERMITTED, "Notify acquired")
        caller = current_caller.get()
        if caller in dev.notify_clients:
            raise DBusFailure(ERR_IN_PROGRESS, "In Progress")
        dev.notify_clients.add(caller)
        self.tree.set(path, CHARACTERISTIC, Notifying=Variant("b", True))
        return Message.new_method_return(msg)

    def m_StopNotify(self, msg: Message) -> Message:
        dev, path = gatt_target(self.devices, msg)
        caller = current_caller.get()
        if caller not in dev.notify_clients:
            raise DBusFailure(ERR_FAILED, "No notify session started")
        dev.notify_clients.discard(caller)
        if not dev.notify_clients:
            self.tree.set(path, CHARACTERISTIC, Notifying=Variant("b", False))
        return Message.new_method_return(msg)

    def m_AcquireNotify(self, msg: Message) -> bool:
        dev, path = gatt_target(self.devices, msg)
        link = live(dev)
        if path != dev.gatt.tx:
            raise DBusFailure(ERR_NOT_SUPPORTED, "Operation is not supported")
        if dev.notify_sock is not None or dev.notify_clients:
            raise DBusFailure(ERR_IN_PROGRESS, "Notify already acquired")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        dev.notify_sock = mine
        loop = asyncio.get_running_loop()
        loop.add_reader(mine.fileno(), self._acquired_hup, dev)
        self.tree.set(path, CHARACTERISTIC, NotifyAcquired=Variant("b", True))
        self.tree.set(path, CHARACTERISTIC, Notifying=Variant("b", True))
        self._send_fd_reply(msg, theirs, link.mtu)
        return True

    def m_AcquireWrite(self, msg: Message) -> bool:
        dev, path = gatt_target(self.devices, msg)
        link = live(dev)
        if path != dev.gatt.rx:
            raise DBusFailure(ERR_NOT_SUPPORTED, "Operation is not supported")
        self._check_write_released(dev)
        if dev.write_sock is not None:
            raise DBusFailure(ERR_NOT_PERMITTED, "Write acquired")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        dev.write_sock = mine
        asyncio.get_running_loop().add_reader(mine.fileno(), self._acquired_write_ready, dev)
        self.tree.set(path, CHARACTERISTIC, WriteAcquired=Variant("b", True))
        self._send_fd_reply(msg, theirs, link.mtu)
        return True

    def _send_fd_reply(self, msg: Message, fd_sock: socket.socket, mtu: int) -> None:
        """Reply ``(h, q)``; our copy of the client's end is closed once the reply is
        written. libdbus dups the fd it sends, dbus-fast does not: kept open any longer,
        our copy would hide the client's close (no HUP), and a write right after
        ``_acquire_mtu()`` would fail with ``NotPermitted: Write acquired``."""
        reply = Message.new_method_return(msg, "hq", [0, mtu], unix_fds=[fd_sock.fileno()])
        assert self.tree.bus is not None
        future = self.tree.bus.send(reply)
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

    def _acquired_hup(self, dev: EmulatedDevice) -> None:
        if _hung_up(dev.notify_sock):
            self.release_notify(dev)

    def release_notify(self, dev: EmulatedDevice) -> None:
        sock, dev.notify_sock = dev.notify_sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        if dev.gatt.tx is not None:
            self.tree.set(dev.gatt.tx, CHARACTERISTIC, NotifyAcquired=Variant("b", False))
            if not dev.notify_clients:
                self.tree.set(dev.gatt.tx, CHARACTERISTIC, Notifying=Variant("b", False))

    def _acquired_write_ready(self, dev: EmulatedDevice) -> None:
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
            self.release_write(dev)
            return
        link = dev.link
        if link is not None and link.alive:
            self.tree.spawn(self._write_quietly(link, data))

    async def _write_quietly(self, link: SimLink, data: bytes) -> None:
        with contextlib.suppress(SimLinkError):
            await link.device.write(link, data)

    def _check_write_released(self, dev: EmulatedDevice) -> None:
        """The client may have closed its AcquireWrite fd just before this call; notice
        the hang-up now rather than when the loop gets to the reader."""
        if dev.write_sock is None:
            return
        self._close_sent_fds()
        if _hung_up(dev.write_sock):
            self.release_write(dev)

    def release_write(self, dev: EmulatedDevice) -> None:
        sock, dev.write_sock = dev.write_sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        if dev.gatt.rx is not None:
            self.tree.set(dev.gatt.rx, CHARACTERISTIC, WriteAcquired=Variant("b", False))

    def close_socks(self, dev: EmulatedDevice) -> None:
        self.release_notify(dev)
        self.release_write(dev)

    def client_left(self, name: str) -> None:
        """A bus client went away: its notify sessions end (BlueZ keeps the device
        connected, see bluez#89, which is why bleak disconnects explicitly)."""
        for dev in self.devices.values():
            if name in dev.notify_clients:
                dev.notify_clients.discard(name)
                if not dev.notify_clients and dev.gatt.tx is not None:
                    self.tree.set(dev.gatt.tx, CHARACTERISTIC, Notifying=Variant("b", False))

    # --- from the device ---------------------------------------------------------------

    def notify(self, dev: EmulatedDevice, data: bytes) -> None:
        tx = dev.gatt.tx
        if tx is None:
            return  # NUS not exported (race, stale cache): BlueZ has nowhere to put it
        if dev.notify_sock is not None:
            with contextlib.suppress(OSError):
                dev.notify_sock.send(data)
            return
        if dev.notify_clients:
            self.tree.send(
                Message.new_signal(
                    tx,
                    PROPERTIES,
                    "PropertiesChanged",
                    "sa{sv}as",
                    [CHARACTERISTIC, {"Value": Variant("ay", data)}, []],
                )
            )


class DescriptorInterface:
    """``GattDescriptor1``: the CCCD reads what the notify sessions make it; writes are
    refused."""

    def __init__(self, devices: dict[str, EmulatedDevice]) -> None:
        self.devices = devices

    def m_ReadValue(self, msg: Message) -> Message:
        dev, path = gatt_target(self.devices, msg)
        live(dev)
        enabled = path == dev.gatt.cccd and (dev.notify_clients or dev.notify_sock is not None)
        return Message.new_method_return(msg, "ay", [b"\x01\x00" if enabled else b"\x00\x00"])

    def m_WriteValue(self, msg: Message) -> Message:
        # BlueZ refuses CCCD writes from clients: StartNotify is the way.
        raise DBusFailure(ERR_NOT_PERMITTED, "Write not permitted")


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

"""``Device1``: ``Connect`` (the device's connect outcome the BlueZ way, then the GATT
discovery, the race and the stale cache), ``Disconnect``, and the link's end as bluetoothd
signals it. The host side of each link (``_LinkPeer``) forwards the device's notifications
and link loss to the emulator."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dbus_fast import Message, Variant

from smartball_sim.bluez.errors import CONNECT_FAILED_TEXT
from smartball_sim.device import ConnectRefusal, ConnectRefused, SimLink

from .characteristics import CharacteristicInterface
from .gatt_database import GattDatabase
from .objects import (
    CHARACTERISTIC,
    DEVICE,
    ERR_DOES_NOT_EXIST,
    ERR_FAILED,
    ERR_IN_PROGRESS,
    ERR_NOT_CONNECTED,
    ERR_NOT_SUPPORTED,
    LE_CONNECTION_ABORT_BY_LOCAL,
    DBusFailure,
    ObjectTree,
)
from .records import EmulatedDevice, EmulatorTiming

log = logging.getLogger("sim.bluez")


class _LinkPeer:
    """The host side of one link (smartball_sim.device.LinkPeer): forwards the device's
    notifications to ``GattCharacteristic1`` and the link's loss to ``Device1``."""

    def __init__(self, dev: EmulatedDevice, device1: DeviceInterface) -> None:
        self.dev = dev
        self.device1 = device1
        self.link: SimLink | None = None
        self.lost_early = False

    def sim_notification(self, data: bytes) -> None:
        if self.link is not None and self.link is self.dev.link:
            self.device1.characteristics.notify(self.dev, bytes(data))

    def sim_link_lost(self, reason: str) -> None:
        if self.link is None:
            self.lost_early = True  # a connect-triggered fault dropped it before we saw it
            return
        if self.link is self.dev.link:
            self.device1.link_lost(self.dev, reason, remote=True)


class DeviceInterface:
    """``Device1``: its methods and the link's life."""

    def __init__(
        self,
        tree: ObjectTree,
        gatt: GattDatabase,
        characteristics: CharacteristicInterface,
        devices: dict[str, EmulatedDevice],
        timing: EmulatorTiming,
    ) -> None:
        self.tree = tree
        self.gatt = gatt
        self.characteristics = characteristics
        self.devices = devices
        self.timing = timing

    def _dev(self, msg: Message) -> EmulatedDevice:
        return self.devices[msg.path or ""]

    def m_Connect(self, msg: Message) -> bool | Message:
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

        dev.connect_task = self.tree.spawn(self.tree.reply_later(msg, connect()))
        return True

    async def _connect(self, dev: EmulatedDevice) -> None:
        sim = dev.sim
        peer = _LinkPeer(dev, self)
        try:
            async with asyncio.timeout(self.timing.le_connect_timeout_s):
                link = await sim.connect(peer)
        except TimeoutError:
            raise DBusFailure(ERR_FAILED, LE_CONNECTION_ABORT_BY_LOCAL) from None
        except ConnectRefused as exc:
            if exc.refusal is ConnectRefusal.ABORTED_AT_ONCE:
                # BlueZ connected and lost it at once: bleak waits for Connected to go
                # true -> false before it retries; without it bleak hangs until its timeout.
                self.tree.set(dev.path, DEVICE, Connected=Variant("b", True))
                self.tree.set(dev.path, DEVICE, Connected=Variant("b", False))
            raise DBusFailure(ERR_FAILED, CONNECT_FAILED_TEXT[exc.refusal]) from None
        peer.link = link
        dev.link = link
        # src/device.c att_connect_cb: Connected=true, then the Connect reply, then the
        # GATT client's discovery exports the objects and sets ServicesResolved.
        self.tree.set(dev.path, DEVICE, Connected=Variant("b", True))
        if peer.lost_early or not link.alive:
            self.link_lost(dev, "dropped at once", remote=True)
            return
        self.tree.spawn(self._discover(dev, link))

    async def _discover(self, dev: EmulatedDevice, link: SimLink) -> None:
        """BlueZ keeps a device's GATT objects across disconnects (until RemoveDevice): a
        reconnect to a known device exports nothing new and only sets ServicesResolved;
        the first connect (or one after RemoveDevice) exports every object first."""
        await asyncio.sleep(self.timing.gatt_discovery_s)
        if dev.link is not link or not link.alive:
            return
        if link.nus_visible:
            if dev.gatt.stale or dev.gatt.tx is None:
                self.gatt.drop(dev)  # a fresh discovery replaces the stale database
                self.gatt.export(dev, link, nus=True)
            else:
                self.gatt.mtu_known(dev, link)
            self.tree.set(dev.path, DEVICE, ServicesResolved=Variant("b", True))
            return
        if link.nus_hidden == "stale-cache":
            # Discovery skipped: the cached database (no NUS) is what the device resolves to.
            if not dev.gatt.stale:
                self.gatt.drop(dev)
                self.gatt.export(dev, link, nus=False, stale=True)
            else:
                self.gatt.mtu_known(dev, link)
            self.tree.set(dev.path, DEVICE, ServicesResolved=Variant("b", True))
            return
        # The race (BlueZ before 5.55 re-discovering): ServicesResolved=true while only the
        # GATT service is exported; NUS comes later.
        dev.link_raced = True
        self.gatt.drop(dev)
        self.gatt.export(dev, link, nus=False)
        self.tree.set(dev.path, DEVICE, ServicesResolved=Variant("b", True))
        await asyncio.sleep(self.timing.race_gap_s)
        if dev.link is link and link.alive:
            self.gatt.export(dev, link, nus=True, gatt_service=False)

    def m_Disconnect(self, msg: Message) -> Any:
        dev = self._dev(msg)
        if dev.connect_task is not None:
            # "Calling Disconnect cancels any pending connect request" (bleak's comment).
            dev.connect_task.cancel()
            dev.connect_task = None
        link = dev.link
        if link is None:
            raise DBusFailure(ERR_NOT_CONNECTED, "Not Connected")
        dev.sim.host_disconnect(link)
        self.link_lost(dev, "disconnected by host", remote=False)
        return Message.new_method_return(msg)

    def m_Pair(self, msg: Message) -> Message:
        raise DBusFailure(ERR_NOT_SUPPORTED, "the simulated SmartBall does not pair")

    def m_CancelPairing(self, msg: Message) -> Message:
        raise DBusFailure(ERR_DOES_NOT_EXIST, "Does Not Exist")

    def link_lost(self, dev: EmulatedDevice, reason: str, *, remote: bool) -> None:
        """src/device.c device_disconnected, as the D-Bus side sees it: ServicesResolved
        false, Disconnected, Connected false. The GATT objects stay exported (real
        bluetoothd 5.66 keeps them until RemoveDevice; tests/system/test_real_bluez.py compares),
        without their MTU; a call on them answers "Not connected". Notify sessions end."""
        if dev.link is None:
            return
        dev.link = None
        self.tree.set(dev.path, DEVICE, ServicesResolved=Variant("b", False))
        self.characteristics.close_socks(dev)
        self.gatt.mtu_unknown(dev)
        if dev.link_raced:
            # The race imitates BlueZ before 5.55 resolving services early. A connection
            # that raced leaves no objects behind, so the next connect discovers afresh;
            # kept objects would let bleak-retry-connector reuse bleak's NUS-less
            # collection on every reconnect (it does so when all cached paths exist).
            dev.link_raced = False
            self.gatt.drop(dev)
        dev.notify_clients.clear()
        if dev.gatt.tx is not None:
            self.tree.set(dev.gatt.tx, CHARACTERISTIC, Notifying=Variant("b", False))
        who = "org.bluez.Reason.Remote" if remote else "org.bluez.Reason.Local"
        self.tree.send(
            Message.new_signal(
                dev.path, DEVICE, "Disconnected", "ss", [who, f"Connection terminated: {reason}"]
            )
        )
        self.tree.set(dev.path, DEVICE, Connected=Variant("b", False))
        log.info("%s: disconnected (%s)", dev.path, reason)

"""The simulated SmartBall as a Bumble peripheral: the same SimDevice (firmware model, fault
plan, advertising, resets) served by a real BLE host stack over HCI, L2CAP and ATT.

API (stable; other code builds on it)::

    link = SmartBallLink()                        # or any bumble.link.LocalLink
    peripheral = await serve_smartball(device, link)
    ...                                           # centrals on ``link`` find and use it
    await peripheral.close()

``serve_smartball(device, link, *, controller_address=None)`` must run inside the event
loop that will drive it (Bumble's controller binds to the running loop). It gives the
device a Bumble controller of its own on ``link`` (a :class:`SmartBallController`, which
shapes connect attempts by the fault plan), a Bumble host and ``Device`` with the GATT
database of ``smartball_sim.radio.gatt_layout`` (it checks the handles), and attaches itself as
the device's link layer (``SimDevice.attach``): from then on the device advertises,
connects, notifies and drops its links over Bumble. Any Bumble controller on the same link
can be the central: the in-process one of ``smartball_sim.bumble.central``, or one that
exposes the link to the Linux kernel through ``/dev/vhci`` (use :class:`SmartBallLink` for
that: Bumble's own ``LocalLink`` drops the data of a central that scans with its random
address and connects with its public one).

How the device's behaviour maps onto the stack:

* Advertising: connectable, the NUS UUID and the name in the advertising data itself
  (Bumble's ``LocalLink`` carries no scan responses), Flags when they fit in 31 bytes;
  started and stopped as ``SimDevice.advertising`` changes (a connection, a reset and its
  boot time, an ``adv-pause``).
* Notifications: each device frame is cut at the negotiated ATT MTU - 3 (Bumble itself
  would silently truncate a longer value) and sent in order.
* Writes: a Write Command longer than the ATT MTU - 3 is not a valid PDU and is dropped
  (Bumble's server would take up to 512 bytes); ``write-drop`` loses the next writes.
* A link that dies (``drop``, ``flaky``, a ``reboot`` fault, ``adv-pause``): both
  controllers report HCI 0x08 (connection timeout) at once. A reset the firmware asks for
  (after DONE): the device hangs up, the host reads 0x13 (remote user terminated).
* ``connect-fail``: the device answers the connect request with silence; the central's
  controller reports the connection failed to be established (HCI 0x3E) after 6
  connection intervals. ``connect-timeout``: the request is ignored and the attempt hangs
  until the host's own timeout (Bumble's controllers have no supervision timeout).
* ``race`` and ``stale-cache`` are BlueZ's (a host's GATT cache and D-Bus export): a plan
  with them is refused with a sentence (``FaultSpecError``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bumble import data_types, hci, ll
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData, PhysicalTransport
from bumble.device import Connection, Device, DeviceConfiguration
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.host import Host
from bumble.link import LocalLink
from bumble.profiles.gatt_service import GenericAttributeProfileService
from bumble.transport.common import AsyncPipeSink

from ..device import Link, LinkEnd, SimDevice
from ..faults import FaultPlan
from ..radio import gatt_layout as gatt
from ..radio.airlog import Sender
from .faults import refuse_bluez_only
from .local_link import SmartBallLink, sever

__all__ = [
    "QuietController",
    "SmartBallController",
    "SmartBallLink",
    "SmartBallPeripheral",
    "serve_smartball",
]

log = logging.getLogger("sim.bumble.peripheral")

#: Legacy advertising data (Core 5.3, Vol 6, Part B, 2.3.1.1): at most 31 bytes.
ADV_DATA_MAX = 31
#: A central's link layer gives up on a connection whose first packets get no answer
#: after 6 connection intervals (Core 5.3, Vol 6, Part B, 4.5.2).
ESTABLISH_INTERVALS = 6
#: Longer than a virtual clock's resolution (looptime: 1 us), short against any timing here.
CLOCK_TICK_S = 1e-5
CONNECTION_FAILED_TO_BE_ESTABLISHED = hci.HCI_ErrorCode.CONNECTION_FAILED_TO_BE_ESTABLISHED_ERROR


async def serve_smartball(
    device: SimDevice, link: LocalLink, *, controller_address: str | None = None
) -> SmartBallPeripheral:
    """Serve ``device`` on ``link`` and start advertising (see the module docstring)."""
    peripheral = SmartBallPeripheral(device, link, controller_address=controller_address)
    await peripheral.start()
    return peripheral


def advertising_data(name: str) -> tuple[bytes, bytes]:
    """(advertising data, scan response data) for a SmartBall called ``name``.

    The NUS UUID and the complete name go in the advertising data, with the Flags (LE
    General Discoverable, BR/EDR not supported) when all three fit in 31 bytes. A name too
    long for that is shortened there and complete in the scan response."""
    nus = data_types.CompleteListOf128BitServiceUUIDs([UUID(gatt.NUS.uuid)])
    flags = data_types.Flags(
        AdvertisingData.Flags.LE_GENERAL_DISCOVERABLE_MODE
        | AdvertisingData.Flags.BR_EDR_NOT_SUPPORTED
    )
    full = bytes(AdvertisingData([flags, nus, data_types.CompleteLocalName(name)]))
    if len(full) <= ADV_DATA_MAX:
        return full, b""
    bare = bytes(AdvertisingData([nus, data_types.CompleteLocalName(name)]))
    if len(bare) <= ADV_DATA_MAX:
        return bare, b""
    room = ADV_DATA_MAX - len(bytes(AdvertisingData([nus]))) - 2
    short = name.encode()[:room].decode(errors="ignore")
    adv = bytes(AdvertisingData([nus, data_types.ShortenedLocalName(short)]))
    return adv, bytes(AdvertisingData([data_types.CompleteLocalName(name)]))


@dataclass(eq=False)
class BumbleLink:
    """One connection of the device, carried by a Bumble ``Connection``."""

    connection: Connection
    number: int
    alive: bool = True
    nus_hidden: str | None = None  # BlueZ's; never set on this link
    #: Notification fragments not yet handed to the stack, in order.
    outbox: deque[bytes] = field(default_factory=deque)
    sending: bool = False
    #: Called once the outbox is empty (handed to the controller) or the link has ended.
    sent_waiters: list[Callable[[], None]] = field(default_factory=list)

    @property
    def mtu(self) -> int:
        return self.connection.att_mtu

    @property
    def max_write(self) -> int:
        return self.mtu - 3


class QuietController(Controller):
    """A Bumble controller that drops a host's data for a link that has just ended without
    a warning each time: the host learns of the end one event later, and a real controller
    discards that data the same way."""

    def on_hci_acl_data_packet(self, packet: hci.HCI_AclDataPacket) -> None:
        if self.find_connection_by_handle(packet.connection_handle) is None:
            log.debug("%s: data for ended link 0x%04X dropped", self.name, packet.connection_handle)
            return
        super().on_hci_acl_data_packet(packet)

    def on_link_acl_data(
        self, sender_address: hci.Address, transport: PhysicalTransport, data: bytes
    ) -> None:
        if transport == PhysicalTransport.LE and sender_address not in self.le_connections:
            log.debug("%s: data from %s after its link ended dropped", self.name, sender_address)
            return
        super().on_link_acl_data(sender_address, transport, data)


class SmartBallController(QuietController):
    """A Bumble controller for the device: it lets the device's fault plan decide each
    incoming connect request, and fails one it cannot take the way a real link fails."""

    def __init__(
        self, peripheral: SmartBallPeripheral, link: LocalLink, public_address: str | None = None
    ) -> None:
        name = f"{peripheral.device.name}-controller"
        super().__init__(name, link=link, public_address=public_address)
        self.peripheral = peripheral

    def on_le_connect_ind(self, packet: ll.ConnectInd) -> None:
        if not self._is_mine(packet.advertiser_address):
            return
        if not self._advertising_as(packet.advertiser_address):
            # The central heard an advertisement the device has stopped sending since (a
            # reset, another host): nobody answers the new link.
            self._fail_to_establish(packet, "the device stopped advertising")
            return
        outcome = self.peripheral.device.injector.connect_outcome()
        if outcome == "fail":
            self._fail_to_establish(packet, "connect-fail")
        elif outcome == "timeout":
            log.info("%s: connect request ignored (connect-timeout)", self.name)
        else:
            super().on_le_connect_ind(packet)

    def on_ll_control_pdu(self, sender_address: hci.Address, packet: ll.ControlPdu) -> None:
        if isinstance(packet, ll.TerminateInd) and sender_address not in self.le_connections:
            # A central closing a link the device never took (connect-timeout): nothing to do.
            log.debug("%s: terminate for a link never made, from %s", self.name, sender_address)
            return
        super().on_ll_control_pdu(sender_address, packet)

    def _is_mine(self, address: hci.Address) -> bool:
        addresses = {self.random_address, self.public_address}
        addresses.update(s.address for s in self.advertising_sets.values() if s.address)
        return address in addresses

    def _advertising_as(self, address: hci.Address) -> bool:
        legacy = self.le_legacy_advertiser
        if legacy.enabled and legacy.address == address:
            return True
        return any(s.enabled and s.address == address for s in self.advertising_sets.values())

    def _fail_to_establish(self, packet: ll.ConnectInd, why: str) -> None:
        """Stay silent on the new link: the central's link layer gives up after 6
        connection intervals and tells its host HCI 0x3E."""
        delay = ESTABLISH_INTERVALS * packet.interval * 1.25e-3
        log.info("%s: connect request unanswered (%s)", self.name, why)

        def give_up() -> None:
            if self.link.find_le_controller(packet.initiator_address) is None:
                return
            self.link.send_ll_control_pdu(
                sender_address=packet.advertiser_address,
                receiver_address=packet.initiator_address,
                packet=ll.TerminateInd(CONNECTION_FAILED_TO_BE_ESTABLISHED),
            )

        asyncio.get_running_loop().call_later(delay, give_up)


class SmartBallPeripheral:
    """A SimDevice's link layer over a Bumble host stack (``SimDevice.link_layer``)."""

    connect_fail_detail = "unanswered: HCI 0x3E connection failed to be established"

    def __init__(
        self, device: SimDevice, link: LocalLink, *, controller_address: str | None = None
    ) -> None:
        self.device = device
        self.address = hci.Address(device.address)  # a random static address, as advertised
        self.controller = SmartBallController(self, link, controller_address)
        host = Host(self.controller, AsyncPipeSink(self.controller))
        config = DeviceConfiguration(name=device.name, gatt_service_enabled=False)
        self.bumble = Device(name=device.name, address=self.address, config=config, host=host)
        self.bumble.gatt_server.add_service(
            GenericAttributeProfileService(database_hash_enabled=False)
        )
        self.rx: Characteristic[bytes] = Characteristic(
            gatt.NUS_RX.uuid,
            Characteristic.Properties.WRITE | Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            Characteristic.WRITEABLE,
            CharacteristicValue[bytes](write=self._on_rx_write),
        )
        self.tx: Characteristic[bytes] = Characteristic(
            gatt.NUS_TX.uuid, Characteristic.Properties.NOTIFY, Characteristic.Permissions(0), b""
        )
        self.bumble.add_service(Service(gatt.NUS.uuid, [self.rx, self.tx]))
        check_layout(self.bumble)
        self.bumble.gatt_server.max_mtu = device.mtu
        self.adv_data, self.scan_response = advertising_data(device.name)
        self.links: dict[int, BumbleLink] = {}  # by connection handle
        self._started = False
        self._adv_dirty = False
        self._adv_running = False
        self._adv_resume: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.bumble.on(Device.EVENT_CONNECTION, self._on_connection)

    def __repr__(self) -> str:
        return f"the Bumble peripheral {self.address}"

    async def start(self) -> None:
        self.device.attach(self)
        await self.bumble.power_on()
        self._started = True
        self.advertising_changed()

    async def close(self) -> None:
        """Stop advertising, drop any link, leave the radio bus."""
        self._started = False
        for task in self._tasks:
            task.cancel()
        if self._adv_resume is not None:
            self._adv_resume.cancel()
        self.device.disconnect("peripheral closed")
        if self.controller in self.controller.link.controllers:
            self.controller.link.remove_controller(self.controller)

    def abandon(self) -> None:
        """Its event loop has ended: stop, and let the device forget a link that died with
        it (nothing of the old loop can run any more)."""
        self._started = False
        if self._adv_resume is not None:
            self._adv_resume.cancel()
        link = self.device.link
        if link is not None and self.device.link_layer is self:
            self.device.host_disconnect(link)

    # --- LinkLayer ---------------------------------------------------------------------

    def send(self, link: Link, frame: bytes) -> None:
        assert isinstance(link, BumbleLink)
        step = link.max_write
        link.outbox.extend(frame[start : start + step] for start in range(0, len(frame), step))
        if not link.sending:
            link.sending = True
            self._spawn(self._send_queued(link))

    def when_sent(self, link: Link, callback: Callable[[], None]) -> None:
        assert isinstance(link, BumbleLink)
        if link.outbox or link.sending:
            link.sent_waiters.append(callback)
        else:
            callback()

    def discard(self, link: Link) -> None:
        assert isinstance(link, BumbleLink)
        link.outbox.clear()
        _wake(link)

    def link_ended(self, link: Link, reason: str, end: LinkEnd) -> None:
        assert isinstance(link, BumbleLink)
        connection = link.connection
        if end == LinkEnd.CONNECTION_TIMEOUT:
            sever(self.controller, connection.peer_address, int(end))
        else:
            self._spawn(self._hang_up(connection, int(end)))

    def advertising_changed(self) -> None:
        self._adv_dirty = True
        if self._started and not self._adv_running:
            self._adv_running = True
            self._spawn(self._advertise())

    def check_faults(self, plan: FaultPlan) -> None:
        refuse_bluez_only(plan)

    # --- the stack's events ------------------------------------------------------------

    def _on_connection(self, connection: Connection) -> None:
        d = self.device
        if d.link is not None or not d.booted:
            # Made by the controller just before a reset or while another link is up.
            sever(self.controller, connection.peer_address, int(LinkEnd.CONNECTION_TIMEOUT))
            return
        link = BumbleLink(connection, d.next_connection_number())
        self.links[connection.handle] = link
        connection.on(
            Connection.EVENT_DISCONNECTION, lambda reason: self._on_disconnection(link, reason)
        )
        d.link_established(link)

    def _on_disconnection(self, link: BumbleLink, reason: int) -> None:
        self.links.pop(link.connection.handle, None)
        log.info("%s: link #%d ended, HCI reason 0x%02X", self.device.name, link.number, reason)
        self.device.host_disconnect(link)  # nothing to do when the device ended it itself

    def _on_rx_write(self, connection: Connection, value: bytes) -> None:
        link = self.links.get(connection.handle)
        if link is None or not link.alive or link is not self.device.link:
            return
        self.device.on_air(link, Sender.HOST, len(value))
        if len(value) > link.max_write:
            log.warning(
                "%s: dropped a %d-byte write: more than ATT MTU %d - 3 allows",
                self.device.name,
                len(value),
                link.mtu,
            )
            return
        self.device.receive_write(bytes(value))

    # --- tasks ----------------------------------------------------------------------
    # Short-lived, started when there is work: a task that waits forever for the next job
    # can outlive a cancellation (Python 3.11's wait_for inside Bumble's HCI commands
    # swallows one arriving with the command's reply) and then hang the loop's shutdown.

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_queued(self, link: BumbleLink) -> None:
        """Hand the link's notification fragments to the stack, in order."""
        try:
            while link.outbox and link.alive:
                fragment = link.outbox.popleft()
                await self.bumble.notify_subscriber(link.connection, self.tx, fragment)
                self.device.on_air(link, Sender.DEVICE, len(fragment))
        finally:
            link.sending = False
            _wake(link)

    async def _hang_up(self, connection: Connection, reason: int) -> None:
        try:
            await connection.disconnect(reason)
        except hci.HCI_Error as exc:  # already gone
            log.debug("%s: hang-up: %s", self.device.name, exc)

    async def _advertise(self) -> None:
        """Advertise exactly while ``SimDevice.advertising`` says so."""
        loop = asyncio.get_running_loop()
        d = self.device
        try:
            while self._adv_dirty and self._started:
                self._adv_dirty = False
                want, have = d.advertising, self.bumble.is_advertising
                if want and not have:
                    interval_ms = d.radio.adv_interval_s * 1000
                    await self.bumble.start_advertising(
                        advertising_data=self.adv_data,
                        scan_response_data=self.scan_response,
                        advertising_interval_min=interval_ms,
                        advertising_interval_max=interval_ms,
                    )
                elif have and not want:
                    await self.bumble.stop_advertising()
                paused_for = d.advertising_paused_until - d.now()
                if not want and d.booted and d.link is None and paused_for > 0:
                    if self._adv_resume is not None:
                        self._adv_resume.cancel()
                    # Past the pause's end by a clock tick: a virtual clock (looptime, 1 us)
                    # may run a timer at a time that reads just before its due time.
                    self._adv_resume = loop.call_later(
                        paused_for + CLOCK_TICK_S, self.advertising_changed
                    )
        finally:
            self._adv_running = False


def _wake(link: BumbleLink) -> None:
    waiters, link.sent_waiters = link.sent_waiters, []
    for callback in waiters:
        callback()


def check_layout(device: Device) -> None:
    """The handles Bumble allocated must be those of ``gatt_layout`` (one definition)."""
    server = device.gatt_server
    expected: list[tuple[int, str]] = []
    for service in gatt.SERVICES:
        expected.append((service.handle, service.uuid))
        for char in service.characteristics:
            expected.append((char.value_handle, char.uuid))
            expected.extend((d.handle, d.uuid) for d in char.descriptors)
    for handle, uuid in expected:
        attribute = server.get_attribute(handle)
        # a service or characteristic stands for its UUID, a descriptor for its type
        found = getattr(attribute, "uuid", None) or getattr(attribute, "type", None)
        if not isinstance(found, UUID) or found != UUID(uuid):
            raise RuntimeError(
                f"Bumble put {found or 'nothing'} at handle 0x{handle:04X}, where "
                f"smartball_sim.radio.gatt_layout has {uuid}"
            )

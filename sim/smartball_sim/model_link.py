"""The model radio: the in-process link layer of a SimDevice (the default), with connection
events and airtime (``smartball_sim.radio``), and its link, :class:`SimLink`. The bleak
backend in ``smartball_sim.fronts.in_process`` and the BlueZ emulator talk to it through
``connect``/``write``/``disconnect`` and receive notifications and link loss through the
``LinkPeer`` callbacks they register. It sees its device through :class:`RadioDevice`, a
narrow protocol: the device module imports this one, never the reverse."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .fault_injector import FaultInjector
from .faults import FaultPlan
from .radio.airlog import Sender
from .radio.profiles import RadioProfile
from .radio.seam import (
    ConnectRefusal,
    ConnectRefused,
    Link,
    LinkClosed,
    LinkEnd,
    LinkPeer,
    WriteTooLong,
)


class RadioTiming(Protocol):
    """The advertising and connect times of a device's radio (device.RadioTimings)."""

    @property
    def adv_interval_s(self) -> float: ...
    @property
    def connect_s(self) -> float: ...
    @property
    def link(self) -> RadioProfile: ...


class RadioDevice(Protocol):
    """What the model radio needs of the device it carries (smartball_sim.device.SimDevice)."""

    name: str
    mtu: int
    injector: FaultInjector

    @property
    def radio(self) -> RadioTiming: ...
    @property
    def advertising(self) -> bool: ...
    def next_connection_number(self) -> int: ...
    def link_established(self, link: Link) -> None: ...
    def on_air(self, link: Link, sender: Sender, size: int) -> None: ...
    def receive_write(self, data: bytes) -> None: ...
    def host_disconnect(self, link: Link) -> None: ...
    async def write(self, link: SimLink, data: bytes) -> None: ...


@dataclass(eq=False, slots=True)
class SimLink:
    """A link of the model radio (:class:`ModelLinkLayer`)."""

    device: RadioDevice
    peer: LinkPeer
    mtu: int
    number: int
    #: Why this connection's GATT database lacks NUS: None (it has it), "race" or
    #: "stale-cache". Backends express the two differently (bluez: late objects vs a cache).
    nus_hidden: str | None = None
    alive: bool = True
    #: Host writes and device notification fragments waiting for a connection event, and
    #: host writers waiting for room in the (bounded) write queue.
    tx_queue: deque[bytes] = field(default_factory=deque)
    rx_queue: deque[bytes] = field(default_factory=deque)
    space: asyncio.Event = field(default_factory=asyncio.Event)
    event_scheduled: bool = False
    #: Called once the device's queued notifications have all gone on air (or the link).
    sent_waiters: list[Callable[[], None]] = field(default_factory=list)

    @property
    def max_write(self) -> int:
        return self.mtu - 3

    @property
    def nus_visible(self) -> bool:
        return self.nus_hidden is None


class ModelLinkLayer:
    """The in-process radio model: advertising is polled by the scanner, a connect takes
    ``connect_s``, and bytes move only at connection events (``smartball_sim.radio``)."""

    connect_fail_detail = "br-connection-canceled"

    def __init__(self, device: RadioDevice) -> None:
        self.device = device

    def __repr__(self) -> str:
        return "the model radio"

    async def connect(self, peer: LinkPeer) -> SimLink:
        """Establish a link as BlueZ would: wait for an advertisement, then connect.

        Faults may make it fail (:class:`ConnectRefused`, a :class:`ConnectRefusal`) or
        never complete; the caller bounds it with its timeout, exactly as bleak's BlueZ
        backend does.
        """
        d = self.device
        outcome = d.injector.connect_outcome()
        if outcome == "timeout":
            await asyncio.Future()  # never completes: the host's connect timeout fires
        while not d.advertising:  # noqa: ASYNC110 - a connect waits for an advertisement
            await asyncio.sleep(d.radio.adv_interval_s)
        await asyncio.sleep(d.radio.connect_s)
        if outcome == "fail":
            raise ConnectRefused(ConnectRefusal.CANCELED)
        if not d.advertising:  # lost the race against a reboot or another host
            raise ConnectRefused(ConnectRefusal.ABORTED_AT_ONCE)
        link = SimLink(d, peer, d.mtu, d.next_connection_number())
        link.nus_hidden = d.injector.nus_hidden_on_connect()
        d.link_established(link)
        return link

    async def write(self, link: SimLink, data: bytes) -> None:
        """A write-without-response on NUS RX: queued in the host stack, carried to the
        device at a connection event. Waits only while the queue is full."""
        if len(data) > link.max_write:
            raise WriteTooLong(
                f"write of {len(data)} bytes exceeds the link's maximum of {link.max_write}"
            )
        while link.alive and len(link.tx_queue) >= self.device.radio.link.tx_queue_writes:
            link.space.clear()
            await link.space.wait()
        if not link.alive:
            raise LinkClosed("Not connected")
        link.tx_queue.append(bytes(data))
        self._schedule_event(link)

    # --- LinkLayer -----------------------------------------------------------------------

    def send(self, link: Link, frame: bytes) -> None:
        assert isinstance(link, SimLink)
        step = link.max_write
        link.rx_queue.extend(frame[start : start + step] for start in range(0, len(frame), step))
        self._schedule_event(link)

    def when_sent(self, link: Link, callback: Callable[[], None]) -> None:
        assert isinstance(link, SimLink)
        if not link.rx_queue:
            callback()
        else:
            link.sent_waiters.append(callback)

    def discard(self, link: Link) -> None:
        """Whatever was queued on air dies with the link; blocked writers wake to fail."""
        assert isinstance(link, SimLink)
        link.tx_queue.clear()
        link.rx_queue.clear()
        link.space.set()
        self._wake_sent_waiters(link)

    def link_ended(self, link: Link, reason: str, end: LinkEnd) -> None:
        assert isinstance(link, SimLink)
        link.peer.sim_link_lost(reason)

    def advertising_changed(self) -> None:
        pass  # the scanner asks SimDevice.advertising at every advertising interval

    def check_faults(self, plan: FaultPlan) -> None:
        pass  # the model expresses every effect

    # --- connection events ---------------------------------------------------------------

    def _wake_sent_waiters(self, link: SimLink) -> None:
        waiters, link.sent_waiters = link.sent_waiters, []
        for callback in waiters:
            callback()

    def _schedule_event(self, link: SimLink) -> None:
        if not link.event_scheduled:
            link.event_scheduled = True
            asyncio.get_running_loop().call_later(
                self.device.radio.link.connection_interval_s, self._connection_event, link
            )

    def _connection_event(self, link: SimLink) -> None:
        """One connection event: up to ``exchanges_per_event`` exchanges, each a central
        packet (a host write, or an empty poll) answered by a peripheral packet (a
        notification fragment, or empty). What the device sends in reply to a write goes
        out at a later event, as on a real controller."""
        link.event_scheduled = False
        if not link.alive:
            return
        profile = self.device.radio.link
        slots = per_event = profile.exchanges_per_event()
        replies = len(link.rx_queue)  # only what was queued before this event
        while slots > 0 and (link.tx_queue or replies):
            if link.tx_queue:
                cost = profile.ll_packets(len(link.tx_queue[0]))
                if cost > slots and slots < per_event:
                    break  # the fragments of this write go together in the next event
                data = link.tx_queue.popleft()
                slots -= cost
                self.device.on_air(link, Sender.HOST, len(data))
                self.device.receive_write(data)
            else:
                slots -= 1
            if replies and link.alive:
                replies -= 1
                fragment = link.rx_queue.popleft()
                self.device.on_air(link, Sender.DEVICE, len(fragment))
                link.peer.sim_notification(fragment)
            if not link.alive:  # the firmware reset, or a fault dropped the link
                return
        link.space.set()
        if not link.rx_queue and link.sent_waiters:
            self._wake_sent_waiters(link)
        if (link.tx_queue or link.rx_queue) and link.alive:
            self._schedule_event(link)

"""A simulated SmartBall: firmware model + radio (advertising, one link, NUS) + fault injection.

The device decides what a SmartBall does: its firmware, when it advertises, when it resets,
which faults fire. What carries its one link is a seam, a :class:`LinkLayer`:

* :class:`ModelLinkLayer` (the default): an in-process model of the radio with connection
  events and airtime (``smartball_sim.radio``). The bleak backend in
  ``smartball_sim.bleak_backend`` and the BlueZ emulator talk to it through
  ``connect``/``write``/``disconnect`` and receive notifications and link loss through the
  ``LinkPeer`` callbacks they register.
* the Bumble peripheral (``smartball_sim.bumble``): a real BLE host stack serving the same
  device over HCI, L2CAP and ATT.

The radio side never imports the client.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol, assert_never

from pytest_smartball import protocol as p

from .airlog import Packet, Sender
from .faults import Effect, Fault, FaultPlan, Trigger, TriggerKind
from .firmware import FirmwareEvent, FirmwareEventKind, FlashTimings, SmartBallFirmware, to_us
from .firmware_bugs import FirmwareBug
from .radio import RadioProfile

log = logging.getLogger("sim.device")

DEFAULT_ADDRESS = "C0:FF:EE:00:00:01"
NUS_SERVICE = p.NUS_SERVICE_UUID
NUS_RX = p.NUS_RX_UUID
NUS_TX = p.NUS_TX_UUID


@dataclass(frozen=True, slots=True)
class RadioTimings:
    #: nRF52840 SoftDevice default advertising interval for a connectable device is
    #: 100 ms-ish; the scanner sees one advertisement per interval.
    adv_interval_s: float = 0.1
    #: Time from the host's connect request to an established link with services resolved.
    connect_s: float = 0.3
    #: Reset to advertising again (bootloader + application start).
    boot_s: float = 2.0
    #: The connected link's timing (connection events, PHY, data length, MTU).
    link: RadioProfile = field(default_factory=RadioProfile)


class ConnectRefusal(enum.Enum):
    """Why a connect attempt failed, as data: each front (the in-process bleak backend,
    the BlueZ emulator, Bumble) turns it into its own stack's error."""

    #: The controller gave up before a link existed (BlueZ: ``br-connection-canceled``).
    CANCELED = "canceled"
    #: A link came up and was lost at once: the device had just stopped advertising
    #: (a reset, another host). BlueZ: ``le-connection-abort-by-local``.
    ABORTED_AT_ONCE = "aborted-at-once"


class SimLinkError(Exception):
    """Base of what the simulated radio refuses; the message says what happened."""


class ConnectRefused(SimLinkError):
    def __init__(self, refusal: ConnectRefusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


class LinkClosed(SimLinkError):
    """A write on a link that is gone."""


class WriteTooLong(SimLinkError):
    """A write longer than the link's MTU - 3 (a real controller refuses it)."""


class LinkEnd(enum.IntEnum):
    """How a link ended, as the HCI reason code a host reads in its Disconnection Complete
    event (Core 5.3, Vol 1, Part F, 2)."""

    #: The link died: supervision timeout (a drop, a crash or power glitch, radio loss).
    CONNECTION_TIMEOUT = 0x08
    #: The peer hung up on purpose (LL_TERMINATE_IND): the device before its reset into a
    #: new image, or a host that closes the link.
    REMOTE_USER_TERMINATED = 0x13


class LinkPeer(Protocol):
    """What the host side of a link (the bleak backend) must accept from the device."""

    def sim_notification(self, data: bytes) -> None: ...
    def sim_link_lost(self, reason: str) -> None: ...


class Link(Protocol):
    """One connection, whatever carries it."""

    number: int
    alive: bool
    #: Why this connection's GATT database lacks NUS: None (it has it), "race" or
    #: "stale-cache" (BlueZ only; see SimLink).
    nus_hidden: str | None

    @property
    def mtu(self) -> int: ...
    @property
    def max_write(self) -> int: ...


class LinkLayer(Protocol):
    """What carries a SimDevice's link. The device decides (firmware, faults, advertising,
    resets); a link layer moves the bytes and tells the host side what happened."""

    #: How a host sees a connect-fail on this link (for the fault log).
    connect_fail_detail: str

    def send(self, link: Link, frame: bytes) -> None:
        """Carry one whole device frame to the host, cut at the link's MTU - 3."""

    def when_sent(self, link: Link, callback: Callable[[], None]) -> None:
        """``callback`` once every notification queued so far has gone on air, or the
        link has ended (the firmware waits for this before it resets after DONE)."""

    def discard(self, link: Link) -> None:
        """The link is gone: whatever it still had queued dies with it."""

    def link_ended(self, link: Link, reason: str, end: LinkEnd) -> None:
        """The device's side ended the link (a fault, a reset, a pause): tell the host."""

    def advertising_changed(self) -> None:
        """``SimDevice.advertising`` may have changed (a link, a reset, a pause)."""

    def check_faults(self, plan: FaultPlan) -> None:
        """Raise FaultSpecError for a fault this link layer cannot express."""


@dataclass(eq=False, slots=True)
class SimLink:
    """A link of the model radio (:class:`ModelLinkLayer`)."""

    device: SimDevice
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


@dataclass(frozen=True, slots=True)
class FaultRecord:
    time: float
    fault: str
    trigger: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.time:9.3f}s  {self.fault}  [{self.trigger or 'armed'}]{detail}"


class SimDevice:
    """One simulated SmartBall. Deterministic: no wall clock, randomness only from ``seed``."""

    def __init__(
        self,
        name: str = p.DEFAULT_NAME,
        address: str = DEFAULT_ADDRESS,
        *,
        active_image: bytes | None = None,
        version: tuple[int, int, int] = (1, 0, 0),
        staging_capacity: int | None = None,
        window: int = 16,
        progressive_erase: bool = False,
        progressive_window_bytes: int | None = None,
        mtu: int | None = None,
        flash: FlashTimings | None = None,
        radio: RadioTimings | None = None,
        faults: FaultPlan | str | None = None,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
        firmware_bugs: frozenset[FirmwareBug] = frozenset(),
    ) -> None:
        self.name = name
        self.address = address
        self.radio = radio or RadioTimings()
        self.mtu = mtu or self.radio.link.mtu
        self.rng = random.Random(seed)
        if active_image is None:
            active_image = self.rng.randbytes(64 * 1024)
        kwargs = {"staging_capacity": staging_capacity} if staging_capacity else {}
        self.firmware = SmartBallFirmware(
            active_image=active_image,
            version=version,
            window=window,
            timings=flash,
            progressive_erase=progressive_erase,
            progressive_window_bytes=progressive_window_bytes,
            send=self._notify,
            request_reset=self._reset_into_new_image,
            observe=self._on_firmware_event,
            when_sent=self._when_sent,
            bugs=firmware_bugs,
            **kwargs,
        )
        self.flash_timings = self.firmware.timings  # as configured, before any slow-erase
        self._clock = clock
        #: What carries the link; the model radio unless another one is attached.
        self.link_layer: LinkLayer = ModelLinkLayer(self)
        self.link: Link | None = None
        self.booted = True
        self._adv_paused_until_us = 0
        self._connections = 0
        self.fault_log: list[FaultRecord] = []
        #: Every packet on this device's links, once a list is given (``smartball_sim.airlog``).
        self.air_log: list[Packet] | None = None
        self.injector = FaultInjector(self)
        self.fault_plan = FaultPlan()
        self.set_faults(faults)

    def __repr__(self) -> str:
        return f"SimDevice({self.name!r}, {self.address})"

    # --- time --------------------------------------------------------------------------

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0

    # --- faults ------------------------------------------------------------------------

    def set_faults(self, plan: FaultPlan | str | None) -> None:
        plan = plan if isinstance(plan, FaultPlan) else FaultPlan.parse(plan)
        self.link_layer.check_faults(plan)
        self.fault_plan = plan
        self.injector.load(plan)

    def attach(self, link_layer: LinkLayer) -> None:
        """Carry this device's link over another link layer (before any connection)."""
        if self.link is not None:
            raise RuntimeError(f"{self}: attach a link layer before anything connects")
        link_layer.check_faults(self.fault_plan)
        self.link_layer = link_layer

    # --- advertising -------------------------------------------------------------------

    @property
    def advertising(self) -> bool:
        self.injector.fire_untriggered()
        return self.booted and self.link is None and to_us(self.now()) >= self._adv_paused_until_us

    def advertisement(self) -> dict[str, object]:
        return {
            "local_name": self.name,
            "manufacturer_data": {},
            "service_data": {},
            "service_uuids": [NUS_SERVICE],
            "tx_power": None,
            "rssi": -55 - self.rng.randrange(10),
        }

    @property
    def advertising_paused_until(self) -> float:
        """Device time (``now()``) before which an advertising pause keeps it silent."""
        return self._adv_paused_until_us / 1_000_000

    def pause_advertising(self, seconds: float) -> None:
        until = to_us(self.now() + seconds)
        self._adv_paused_until_us = max(self._adv_paused_until_us, until)
        self.disconnect("advertising paused")
        self.link_layer.advertising_changed()

    # --- link: what every link layer shares ----------------------------------------------

    def link_established(self, link: Link) -> None:
        """A link layer made a connection: it is the device's link from now on."""
        self.link = link
        log.info("%s: connected (link #%d)", self.name, link.number)
        self.injector.on_connected(link)

    def next_connection_number(self) -> int:
        self._connections += 1
        return self._connections

    def on_air(self, link: Link, sender: Sender, size: int) -> None:
        """A link layer carried a packet of ``size`` value bytes (see ``airlog``)."""
        if self.air_log is not None:
            self.air_log.append(Packet(self.now(), link.number, sender, size))

    def receive_write(self, data: bytes) -> None:
        """A host write on NUS RX reached the device (unless a fault loses it)."""
        if not self.injector.drop_write():
            self.firmware.receive(data)

    def disconnect(self, reason: str, end: LinkEnd = LinkEnd.CONNECTION_TIMEOUT) -> None:
        """Drop the current link, if any (device side or radio loss)."""
        link = self.link
        if link is None:
            return
        self._end_link(link)
        log.info("%s: link #%d lost: %s", self.name, link.number, reason)
        self.link_layer.link_ended(link, reason, end)
        self.link_layer.advertising_changed()

    def host_disconnect(self, link: Link) -> None:
        """The host side ended the link (it closed it, or its side saw it die)."""
        if link is self.link:
            self._end_link(link)
            log.info("%s: host closed link #%d", self.name, link.number)
            self.link_layer.advertising_changed()

    def _end_link(self, link: Link) -> None:
        link.alive = False
        self.link = None
        self.link_layer.discard(link)
        self.firmware.link_lost()

    def _notify(self, frame: bytes) -> None:
        link = self.link
        if link is None or not link.alive:
            return
        frame = self.injector.filter_notification(frame)
        if not frame:
            return
        self.link_layer.send(link, frame)

    def _when_sent(self, callback: Callable[[], None]) -> None:
        link = self.link
        if link is None or not link.alive:
            callback()
        else:
            self.link_layer.when_sent(link, callback)

    # --- link: the model radio's entry points (the bleak backend, the BlueZ emulator) ----

    def _model(self) -> ModelLinkLayer:
        if not isinstance(self.link_layer, ModelLinkLayer):
            raise RuntimeError(f"{self} is served by {self.link_layer!r}, not the model radio")
        return self.link_layer

    async def connect(self, peer: LinkPeer) -> SimLink:
        """Establish a link over the model radio (see ModelLinkLayer.connect)."""
        return await self._model().connect(peer)

    async def write(self, link: SimLink, data: bytes) -> None:
        """A write-without-response on NUS RX over the model radio."""
        await self._model().write(link, data)

    # --- power -------------------------------------------------------------------------

    def reboot(self) -> None:
        """Reset the device: the link drops, RAM state is lost, it advertises after boot
        (and after the bootloader has switched to a verified image, if one is pending)."""
        self.disconnect("device reset")
        bootloader_s = self.firmware.power_cycle()
        self.booted = False
        self.link_layer.advertising_changed()
        boot_s = self.radio.boot_s + bootloader_s
        log.info("%s: rebooting (%.1f s)", self.name, boot_s)
        asyncio.get_running_loop().call_later(boot_s, self._booted, self.firmware.boot_count)

    def _reset_into_new_image(self) -> None:
        """The firmware's activation, once MSG_OTA_DONE is on air: end the link (HCI reason
        0x13, remote user terminated; its LL_TERMINATE_IND goes out at the next connection
        event), then reset. Not at all while a ``no-reset`` fault is armed."""
        if self.injector.skip_reset():
            return
        boot = self.firmware.boot_count
        link = self.link
        delay = self.radio.link.connection_interval_s if link is not None else 0.0
        asyncio.get_running_loop().call_later(delay, self._terminate_and_reset, boot)

    def _terminate_and_reset(self, boot: int) -> None:
        if boot != self.firmware.boot_count:
            return  # something else reset the device meanwhile: that reset switched
        self.disconnect(
            "the device ended the link (0x13) to reset into the new image",
            LinkEnd.REMOTE_USER_TERMINATED,
        )
        self.reboot()

    def _booted(self, boot: int) -> None:
        if boot != self.firmware.boot_count:
            return  # a later reset restarted the boot: its own timer says when it is done
        self.booted = True
        log.info("%s: booted, advertising", self.name)
        self.link_layer.advertising_changed()

    def _on_firmware_event(self, event: FirmwareEvent) -> None:
        self.injector.on_firmware_event(event)


class ModelLinkLayer:
    """The in-process radio model: advertising is polled by the scanner, a connect takes
    ``connect_s``, and bytes move only at connection events (``smartball_sim.radio``)."""

    connect_fail_detail = "br-connection-canceled"

    def __init__(self, device: SimDevice) -> None:
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


@dataclass(slots=True)
class _Counters:
    connect_fail: int = 0
    connect_timeout: int = 0
    race: list[float] = field(default_factory=list)
    stale_cache: int = 0
    lose: int = 0
    lose_types: list[int] = field(default_factory=list)
    write_drop: int = 0
    corrupt: int = 0
    race_until_us: int = -1
    flaky_percent: float = 0.0
    no_reset: int = 0


#: Effects that shape a connect attempt: a connect trigger fires them before the attempt.
_CONNECT_SHAPING = frozenset(
    {Effect.CONNECT_FAIL, Effect.CONNECT_TIMEOUT, Effect.RACE, Effect.STALE_CACHE}
)


class FaultInjector:
    """Applies a FaultPlan to one device: watches triggers, fires each fault once, logs it."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.pending: list[Fault] = []
        self.armed = _Counters()
        self._cmd_counts: dict[int, int] = {}
        self._untriggered_due = False
        self._timers: list[asyncio.TimerHandle] = []

    def load(self, plan: FaultPlan) -> None:
        """Replace the plan: what the old one armed or scheduled is undone."""
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        self.device.firmware.timings = self.device.flash_timings
        self.device.firmware.flash.fail_next = 0
        self.pending = list(plan.faults)
        self.armed = _Counters()
        self._cmd_counts = {}
        self._untriggered_due = True
        self.fire_untriggered()

    def fire_untriggered(self) -> None:
        """Fire the faults without a trigger, once an event loop runs (a device may be built
        before its loop, and a reboot or a pause needs the loop's clock)."""
        if not self._untriggered_due:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._untriggered_due = False
        self._fire_matching(lambda t: t.kind is TriggerKind.NOW)

    # --- triggers ----------------------------------------------------------------------

    def on_firmware_event(self, event: FirmwareEvent) -> None:
        if event.kind is FirmwareEventKind.ERASE_PROGRESS:
            # In whole parts per million: no float compared at a threshold
            reached = event.done * 1_000_000 // event.total
            self._fire_matching(
                lambda t: t.kind is TriggerKind.ERASE and reached >= round(t.value * 10_000)
            )
            self._maybe_flaky_drop()
        elif event.kind is FirmwareEventKind.DATA_ACCEPTED:
            self._fire_matching(lambda t: t.kind is TriggerKind.OFFSET and event.offset >= t.value)
            self._maybe_flaky_drop()
        elif event.kind is FirmwareEventKind.COMMAND and event.msg_type is not None:
            n = self._cmd_counts[event.msg_type] = self._cmd_counts.get(event.msg_type, 0) + 1
            self._fire_matching(
                lambda t: (
                    t.kind is TriggerKind.CMD and t.msg_type == event.msg_type and n >= t.value
                )
            )

    def _maybe_flaky_drop(self) -> None:
        rate = self.armed.flaky_percent
        if rate and self.device.link is not None and self.device.rng.random() * 100 < rate:
            self._record("drop", f"flaky:{rate:g}%")
            self.device.disconnect("link dropped (flaky)")

    def on_connected(self, link: Link) -> None:
        # Connect-triggered faults that act on a link (drop, reboot, ...) fire now that
        # there is one; those that shape the connect itself fired in connect_outcome().
        number = self.device._connections
        self._fire_matching(lambda t: t.kind is TriggerKind.CONNECT and number >= t.value)
        loop = asyncio.get_running_loop()
        for fault in [f for f in self.pending if f.trigger.kind is TriggerKind.T]:
            self.pending.remove(fault)
            self._timers.append(
                loop.call_later(fault.trigger.value, self._fire_if_linked, fault, link)
            )

    def _fire_if_linked(self, fault: Fault, link: Link) -> None:
        if link.alive:
            self._fire(fault)
        else:
            self.pending.append(fault)  # its connection ended first: wait for the next one

    def _fire_matching(
        self, matches: Callable[[Trigger], bool], effects: frozenset[Effect] | None = None
    ) -> None:
        """Fire the pending faults whose trigger matches (and, if given, whose effect is
        one of ``effects``)."""
        due = [
            f
            for f in self.pending
            if matches(f.trigger) and (effects is None or f.effect in effects)
        ]
        for fault in due:
            self.pending.remove(fault)
            self._fire(fault)

    # --- effects -----------------------------------------------------------------------

    def _fire(self, fault: Fault) -> None:
        d = self.device
        a = self.armed
        self.device.fault_log.append(
            FaultRecord(d.now(), str(fault).split("@")[0], str(fault.trigger))
        )
        log.info("%s: fault %s", d.name, fault)
        match fault.effect:
            case Effect.DROP:
                d.disconnect("link dropped (fault)")
            case Effect.REBOOT:
                d.reboot()
            case Effect.NO_RESET:
                a.no_reset += 1
            case Effect.ADV_PAUSE:
                d.pause_advertising(fault.seconds)
            case Effect.RACE:
                a.race.append(fault.seconds)
            case Effect.FLAKY:
                a.flaky_percent = fault.percent
            case Effect.STALE_CACHE:
                a.stale_cache += 1
            case Effect.LOSE:
                if fault.msg_type is not None:
                    a.lose_types.append(fault.msg_type)
                else:
                    a.lose += fault.count
            case Effect.WRITE_DROP:
                a.write_drop += fault.count
            case Effect.CONNECT_FAIL:
                a.connect_fail += fault.count
            case Effect.CONNECT_TIMEOUT:
                a.connect_timeout += fault.count
            case Effect.CORRUPT:
                a.corrupt += fault.count
            case Effect.SLOW_ERASE:
                fw = d.firmware
                fw.timings = replace(fw.timings, erase_total_s=fault.seconds)
            case Effect.FLASH_FAIL:
                d.firmware.flash.fail_next += fault.count
            case _:
                assert_never(fault.effect)

    def _record(self, what: str, detail: str = "") -> None:
        self.device.fault_log.append(FaultRecord(self.device.now(), what, "applied", detail))

    def connect_outcome(self) -> str:
        """'ok', 'fail' or 'timeout' for a connect attempt, consuming the armed faults."""
        self.fire_untriggered()
        attempt_for = self.device._connections + 1
        self._fire_matching(
            lambda t: t.kind is TriggerKind.CONNECT and attempt_for >= t.value,
            effects=_CONNECT_SHAPING,
        )
        a = self.armed
        if a.connect_timeout:
            a.connect_timeout -= 1
            self._record("connect-timeout")
            return "timeout"
        if a.connect_fail:
            a.connect_fail -= 1
            self._record("connect-fail", self.device.link_layer.connect_fail_detail)
            return "fail"
        return "ok"

    def nus_hidden_on_connect(self) -> str | None:
        """Why the new connection's GATT database lacks NUS ("race", "stale-cache"), or
        None when discovery finds it."""
        a = self.armed
        now = self.device.now()
        if a.race:
            seconds = a.race.pop(0)
            a.race_until_us = to_us(now + seconds)
            self._record("race", f"services resolved before NUS was exported; for {seconds:g}s")
            return "race"
        if to_us(now) < a.race_until_us:
            self._record("race", "NUS still not exported")
            return "race"
        if a.stale_cache:
            a.stale_cache -= 1
            self._record("stale-cache", "discovery returned a cached database without NUS")
            return "stale-cache"
        return None

    def forget_cache(self) -> None:
        if self.armed.stale_cache:
            self._record("stale-cache", "cleared: the host removed its cached GATT database")
        self.armed.stale_cache = 0

    def skip_reset(self) -> bool:
        """True when an armed ``no-reset`` keeps the device from resetting after DONE."""
        if self.armed.no_reset:
            self.armed.no_reset -= 1
            self._record("no-reset", "DONE sent; the device stays in COMPLETE on its old image")
            return True
        return False

    def drop_write(self) -> bool:
        if self.armed.write_drop:
            self.armed.write_drop -= 1
            self._record("write-drop")
            return True
        return False

    def filter_notification(self, frame: bytes) -> bytes:
        a = self.armed
        msg_type = frame[1] if len(frame) > 1 else None
        if msg_type in a.lose_types:
            a.lose_types.remove(msg_type)
            self._record("lose", p.MsgType(msg_type).name)
            return b""
        if a.lose:
            a.lose -= 1
            self._record("lose", _type_name(msg_type))
            return b""
        if a.corrupt:
            a.corrupt -= 1
            # Past the header, so the damage shows as a CRC failure (a damaged length
            # field would stall the host's decoder until more bytes arrive instead).
            position = self.device.rng.randrange(4, len(frame))
            corrupted = bytearray(frame)
            corrupted[position] ^= 0xFF
            self._record("corrupt", f"{_type_name(msg_type)} byte {position}")
            return bytes(corrupted)
        return frame


def _type_name(msg_type: int | None) -> str:
    try:
        return p.MsgType(msg_type).name if msg_type is not None else "?"
    except ValueError:
        return f"0x{msg_type:02X}"

"""A simulated SmartBall: firmware model + radio (advertising, one link, NUS) + fault injection.

The radio side never imports the client: the bleak backend in ``smartball_sim.bleak_backend`` talks
to a device through ``connect``/``write``/``disconnect`` and receives notifications and
link loss through the ``LinkPeer`` callbacks it registers.
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


class LinkPeer(Protocol):
    """What the host side of a link (the bleak backend) must accept from the device."""

    def sim_notification(self, data: bytes) -> None: ...
    def sim_link_lost(self, reason: str) -> None: ...


@dataclass(eq=False, slots=True)
class SimLink:
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
            send=self._notify,
            request_reset=self._reset_into_new_image,
            observe=self._on_firmware_event,
            when_sent=self._when_sent,
            bugs=firmware_bugs,
            **kwargs,
        )
        self.flash_timings = self.firmware.timings  # as configured, before any slow-erase
        self._clock = clock
        self.link: SimLink | None = None
        self.booted = True
        self._adv_paused_until_us = 0
        self._connections = 0
        self.fault_log: list[FaultRecord] = []
        self.injector = FaultInjector(self)
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
        self.injector.load(plan)

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

    def pause_advertising(self, seconds: float) -> None:
        until = to_us(self.now() + seconds)
        self._adv_paused_until_us = max(self._adv_paused_until_us, until)
        self.disconnect("advertising paused")

    # --- link --------------------------------------------------------------------------

    async def connect(self, peer: LinkPeer) -> SimLink:
        """Establish a link as BlueZ would: wait for an advertisement, then connect.

        Faults may make it fail (:class:`ConnectRefused`, a :class:`ConnectRefusal`) or
        never complete; the caller bounds it with its timeout, exactly as bleak's BlueZ
        backend does.
        """
        outcome = self.injector.connect_outcome()
        if outcome == "timeout":
            await asyncio.Future()  # never completes: the host's connect timeout fires
        while not self.advertising:  # noqa: ASYNC110 - a connect waits for an advertisement
            await asyncio.sleep(self.radio.adv_interval_s)
        await asyncio.sleep(self.radio.connect_s)
        if outcome == "fail":
            raise ConnectRefused(ConnectRefusal.CANCELED)
        if not self.advertising:  # lost the race against a reboot or another host
            raise ConnectRefused(ConnectRefusal.ABORTED_AT_ONCE)
        self._connections += 1
        link = SimLink(self, peer, self.mtu, self._connections)
        link.nus_hidden = self.injector.nus_hidden_on_connect()
        self.link = link
        log.info("%s: connected (link #%d)", self.name, link.number)
        self.injector.on_connected(link)
        return link

    def disconnect(self, reason: str) -> None:
        """Drop the current link, if any (device side or radio loss)."""
        link = self.link
        if link is None:
            return
        self._end_link(link)
        log.info("%s: link #%d lost: %s", self.name, link.number, reason)
        link.peer.sim_link_lost(reason)

    def host_disconnect(self, link: SimLink) -> None:
        if link is self.link:
            self._end_link(link)
            log.info("%s: host closed link #%d", self.name, link.number)

    def _end_link(self, link: SimLink) -> None:
        """Whatever was queued on air dies with the link; blocked writers wake to fail."""
        link.alive = False
        link.tx_queue.clear()
        link.rx_queue.clear()
        link.space.set()
        self.link = None
        self._wake_sent_waiters(link)
        self.firmware.link_lost()

    async def write(self, link: SimLink, data: bytes) -> None:
        """A write-without-response on NUS RX: queued in the host stack, carried to the
        device at a connection event. Waits only while the queue is full."""
        if len(data) > link.max_write:
            raise WriteTooLong(
                f"write of {len(data)} bytes exceeds the link's maximum of {link.max_write}"
            )
        while link.alive and len(link.tx_queue) >= self.radio.link.tx_queue_writes:
            link.space.clear()
            await link.space.wait()
        if not link.alive:
            raise LinkClosed("Not connected")
        link.tx_queue.append(bytes(data))
        self._schedule_event(link)

    def _notify(self, frame: bytes) -> None:
        link = self.link
        if link is None or not link.alive:
            return
        frame = self.injector.filter_notification(frame)
        if not frame:
            return
        step = link.max_write
        link.rx_queue.extend(frame[start : start + step] for start in range(0, len(frame), step))
        self._schedule_event(link)

    def _when_sent(self, callback: Callable[[], None]) -> None:
        """``callback`` once every notification queued so far has gone on air, or with the
        link (the firmware waits for this before it resets after MSG_OTA_DONE)."""
        link = self.link
        if link is None or not link.alive or not link.rx_queue:
            callback()
        else:
            link.sent_waiters.append(callback)

    def _wake_sent_waiters(self, link: SimLink) -> None:
        waiters, link.sent_waiters = link.sent_waiters, []
        for callback in waiters:
            callback()

    def _schedule_event(self, link: SimLink) -> None:
        if not link.event_scheduled:
            link.event_scheduled = True
            asyncio.get_running_loop().call_later(
                self.radio.link.connection_interval_s, self._connection_event, link
            )

    def _connection_event(self, link: SimLink) -> None:
        """One connection event: up to ``exchanges_per_event`` exchanges, each a central
        packet (a host write, or an empty poll) answered by a peripheral packet (a
        notification fragment, or empty). What the device sends in reply to a write goes
        out at a later event, as on a real controller."""
        link.event_scheduled = False
        if not link.alive:
            return
        profile = self.radio.link
        slots = per_event = profile.exchanges_per_event()
        replies = len(link.rx_queue)  # only what was queued before this event
        while slots > 0 and (link.tx_queue or replies):
            if link.tx_queue:
                cost = profile.ll_packets(len(link.tx_queue[0]))
                if cost > slots and slots < per_event:
                    break  # the fragments of this write go together in the next event
                data = link.tx_queue.popleft()
                slots -= cost
                if not self.injector.drop_write():
                    self.firmware.receive(data)
            else:
                slots -= 1
            if replies and link.alive:
                replies -= 1
                link.peer.sim_notification(link.rx_queue.popleft())
            if not link.alive:  # the firmware reset, or a fault dropped the link
                return
        link.space.set()
        if not link.rx_queue and link.sent_waiters:
            self._wake_sent_waiters(link)
        if (link.tx_queue or link.rx_queue) and link.alive:
            self._schedule_event(link)

    # --- power -------------------------------------------------------------------------

    def reboot(self) -> None:
        """Reset the device: the link drops, RAM state is lost, it advertises after boot
        (and after the bootloader has switched to a verified image, if one is pending)."""
        self.disconnect("device reset")
        bootloader_s = self.firmware.power_cycle()
        self.booted = False
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
        self.disconnect("the device ended the link (0x13) to reset into the new image")
        self.reboot()

    def _booted(self, boot: int) -> None:
        if boot != self.firmware.boot_count:
            return  # a later reset restarted the boot: its own timer says when it is done
        self.booted = True
        log.info("%s: booted, advertising", self.name)

    def _on_firmware_event(self, event: FirmwareEvent) -> None:
        self.injector.on_firmware_event(event)


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

    def on_connected(self, link: SimLink) -> None:
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

    def _fire_if_linked(self, fault: Fault, link: SimLink) -> None:
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
            self._record("connect-fail", "br-connection-canceled")
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

"""Fault injection: a FaultPlan applied to one SimDevice (triggers watched, each fault
fired once and logged as a :class:`FaultRecord`).

The injector decides; the device acts. A fired fault either arms the injector (what it
answers the device later: a lost notification, a refused connect) or becomes a
:class:`DeviceEffect`, a small value the device applies (:func:`device_effect`, pure). The
injector sees the device only through :class:`FaultedDevice`, a narrow protocol that never
reaches the firmware: the device module imports this one, never the reverse (no import
circle, type-only imports counted)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, assert_never

from pytest_smartball.contract import codec as p

from .faults import AT_POINTS, Effect, Fault, FaultPlan, Trigger, TriggerKind
from .firmware.types import FirmwareEvent, FirmwareEventKind, to_us
from .radio.seam import Link, LinkLayer

#: The device's logger: a fault is logged as what happened to the device.
log = logging.getLogger("sim.device")


@dataclass(frozen=True, slots=True)
class FaultRecord:
    time: float
    fault: str
    trigger: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.time:9.3f}s  {self.fault}  [{self.trigger or 'armed'}]{detail}"


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
#: The firmware events an ``at:`` trigger fires on, by the point's name.
_AT_EVENTS = {
    FirmwareEventKind.SIGNED_VERIFIED: "verified",
    FirmwareEventKind.CONFIRMED: "confirmed",
}
_CONNECT_SHAPING = frozenset(
    {Effect.CONNECT_FAIL, Effect.CONNECT_TIMEOUT, Effect.RACE, Effect.STALE_CACHE}
)


@dataclass(frozen=True, slots=True)
class DropLink:
    """The device drops its link."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reboot:
    """The device resets."""


@dataclass(frozen=True, slots=True)
class PauseAdvertising:
    """The device drops its link and stays silent this long."""

    seconds: float


@dataclass(frozen=True, slots=True)
class SlowErase:
    """The firmware's whole staging erase takes this long from now on."""

    erase_total_s: float


@dataclass(frozen=True, slots=True)
class FailFlash:
    """The next ``count`` more flash operations fail."""

    count: int


@dataclass(frozen=True, slots=True)
class FlipStaged:
    """A byte of the staged image flips (CRC-32 kept): at once if the transfer is verified
    and pending, else once the transfer is in flash."""

    offset: int


@dataclass(frozen=True, slots=True)
class CutSwap:
    """The bootloader's next swap loses power after this many steps."""

    after_steps: int


#: What a fired fault makes the device do (the device applies it: SimDevice.apply_fault).
DeviceEffect = DropLink | Reboot | PauseAdvertising | SlowErase | FailFlash | FlipStaged | CutSwap


def device_effect(fault: Fault) -> DeviceEffect | None:
    """What ``fault`` makes the device do, or None for a fault that only arms the injector."""
    match fault.effect:
        case Effect.DROP:
            return DropLink("link dropped (fault)")
        case Effect.REBOOT:
            return Reboot()
        case Effect.ADV_PAUSE:
            return PauseAdvertising(fault.seconds)
        case Effect.SLOW_ERASE:
            return SlowErase(fault.seconds)
        case Effect.FLASH_FAIL:
            return FailFlash(fault.count)
        case Effect.FLIP_STAGED:
            return FlipStaged(fault.count)
        case Effect.SWAP_CUT:
            return CutSwap(fault.count)
        case _:
            return None


class FaultedDevice(Protocol):
    """What the injector reads on its device (smartball_sim.device.SimDevice), and the one
    thing it has the device do: apply an effect."""

    name: str
    rng: random.Random
    link: Link | None
    link_layer: LinkLayer
    fault_log: list[FaultRecord]

    @property
    def connections(self) -> int: ...
    def now(self) -> float: ...
    def apply_fault(self, effect: DeviceEffect) -> None: ...


class FaultInjector:
    """Applies a FaultPlan to one device: watches triggers, fires each fault once, logs it."""

    def __init__(self, device: FaultedDevice) -> None:
        self.device = device
        self.pending: list[Fault] = []
        self.armed = _Counters()
        self._cmd_counts: dict[int, int] = {}
        self._msg_counts: dict[int, int] = {}
        self._untriggered_due = False
        self._timers: list[asyncio.TimerHandle] = []

    def load(self, plan: FaultPlan) -> None:
        """Replace the plan: what the old one armed or scheduled here is undone (what it
        did to the firmware, the device undoes before: SimDevice.set_faults)."""
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        self.pending = list(plan.faults)
        self.armed = _Counters()
        self._cmd_counts = {}
        self._msg_counts = {}
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
        elif event.kind in _AT_EVENTS:
            point = AT_POINTS.index(_AT_EVENTS[event.kind])
            self._fire_matching(lambda t: t.kind is TriggerKind.AT and t.value == point)
        elif event.kind is FirmwareEventKind.COMMAND and event.msg_type is not None:
            n = self._cmd_counts[event.msg_type] = self._cmd_counts.get(event.msg_type, 0) + 1
            self._fire_matching(
                lambda t: (
                    t.kind is TriggerKind.CMD and t.msg_type == event.msg_type and n >= t.value
                )
            )

    def on_message_sent(self, msg_type: int, link: Link) -> None:
        """A device message went to the radio on ``link`` (one a fault lost does not count):
        the ``msg:TYPE#N`` faults it reaches fire once it has left the radio for the host
        (or the link ended first), before anything else waiting for that, such as the
        reset after MSG_OTA_DONE."""
        n = self._msg_counts[msg_type] = self._msg_counts.get(msg_type, 0) + 1
        due = [
            f
            for f in self.pending
            if f.trigger.kind is TriggerKind.MSG and f.trigger.msg_type == msg_type
            if n >= f.trigger.value
        ]
        if not due:
            return
        for fault in due:
            self.pending.remove(fault)

        def fire() -> None:
            for fault in due:
                self._fire(fault)

        self.device.link_layer.when_sent(link, fire)

    def _maybe_flaky_drop(self) -> None:
        rate = self.armed.flaky_percent
        if rate and self.device.link is not None and self.device.rng.random() * 100 < rate:
            self._record("drop", f"flaky:{rate:g}%")
            self.device.apply_fault(DropLink("link dropped (flaky)"))

    def on_connected(self, link: Link) -> None:
        # Connect-triggered faults that act on a link (drop, reboot, ...) fire now that
        # there is one; those that shape the connect itself fired in connect_outcome().
        number = self.device.connections
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
        d.fault_log.append(FaultRecord(d.now(), str(fault).split("@")[0], str(fault.trigger)))
        log.info("%s: fault %s", d.name, fault)
        effect = device_effect(fault)
        if effect is not None:
            d.apply_fault(effect)
        else:
            self._arm(fault)

    def _arm(self, fault: Fault) -> None:
        """A fault that changes what the injector answers the device from now on."""
        a = self.armed
        match fault.effect:
            case Effect.NO_RESET:
                a.no_reset += 1
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
            case (
                Effect.DROP
                | Effect.REBOOT
                | Effect.ADV_PAUSE
                | Effect.SLOW_ERASE
                | Effect.FLASH_FAIL
                | Effect.FLIP_STAGED
                | Effect.SWAP_CUT
            ):
                raise AssertionError(f"{fault.effect} acts on the device: device_effect")
            case _:
                assert_never(fault.effect)

    def _record(self, what: str, detail: str = "") -> None:
        self.device.fault_log.append(FaultRecord(self.device.now(), what, "applied", detail))

    def connect_outcome(self) -> str:
        """'ok', 'fail' or 'timeout' for a connect attempt, consuming the armed faults."""
        self.fire_untriggered()
        attempt_for = self.device.connections + 1
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

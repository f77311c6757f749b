"""Which fault plans an update must survive, and how long any plan may take: the fuzz oracle.

Every fault fires once (docs/faults.md), so a plan is a finite list of troubles. What the
OTA engine does with them is bounded by its budgets (:class:`Budgets`, read from its
settings, never copied): attempts in a row without progress, connects per attempt, the
waits that derive from the device's timing obligations. A plan is

* **recoverable** when every fault stays within those budgets and their worst-case sum
  does too. Such an update MUST succeed: the device runs exactly the file.
* **hopeless** when it holds a *wall*: a fault no host can get past (every connect refused,
  every write lost, a device gone for good or that never resets, a flash that always
  fails). Such an update must end, within :func:`time_bound`, in a clean failure, or in the
  unconfirmed outcome where that is the truth, with a sentence that matches what the
  device holds.
* **over budget** otherwise: a fault, or the sum of them, beyond a budget the engine states
  (a race longer than its NUS retries, a pause longer than its scans, more fruitless
  attempts in a row than ``--max-attempts``, two flash failures in a row, which the device
  reports as a refusal). The engine may finish or give up; either way it must be safe,
  honest and within :func:`time_bound`.

The classification is by construction: :func:`classify` reads only the plan, the image
size and the budgets, never a run. docs/faults.md ("Which plans must succeed") states the
same budgets; tests/simulator/test_fault_classes.py keeps the two and the engine's settings in step.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

import bleak_retry_connector
from hypothesis import strategies as st

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.ota import OtaSettings
from smartball_sim.bumble.faults import BLUEZ_ONLY_EFFECTS
from smartball_sim.faults import (
    SIGNED_UPDATE_EFFECTS,
    Effect,
    Fault,
    FaultPlan,
    Trigger,
    TriggerKind,
)
from smartball_sim.firmware.model import PAGE_SIZE
from smartball_sim.fuzz_inputs import faults as any_faults

#: A count no update can use up ("every connect", "every write"): far more than the engine's
#: whole recovery cap could consume, so a fault with it never runs out within the bound.
EVERY = 1_000_000
#: A duration longer than any update (11.6 days): "for good".
FOREVER_S = 1_000_000.0

#: Not the engine's settings but what a host needs on top of them; each is generous, and a
#: run that needs more is reported by the time bound (tests/simulator/test_fuzz_update.py).
#: A reconnect to a device that advertises: a scan that sees it, a connect, NUS found,
#: INFO and STATUS answered, a resume START answered and a window sent again.
RECONNECT_S = 2.0
#: One connect attempt that the device refuses: waiting for its advertisement, the attempt,
#: and bleak-retry-connector's pause before the next (at most its long backoff, 1 s).
REFUSED_CONNECT_S = 1.5
#: Image bytes per DATA chunk at MTU 247 (both simulated links negotiate it).
CHUNK = p.max_data_chunk(247 - 3)


class Link(enum.StrEnum):
    """What carries the simulator's link (``--sim-link``)."""

    MODEL = "model"
    BUMBLE = "bumble"


@dataclass(frozen=True, slots=True)
class Budgets:
    """What the engine survives, in its own settings' terms (:meth:`of`)."""

    #: Recoveries and re-syncs in a row without progress (``--max-attempts``).
    attempts_without_progress: int
    #: Recoveries in one update, whatever the progress.
    max_recoveries: int
    #: Refused connects one connect attempt absorbs before it fails: BlueZ's
    #: ``br-connection-canceled`` is transient to bleak-retry-connector (9 per call), the
    #: Bumble link's HCI 0x3E is a connect error (``LinkSettings.connect_attempts``).
    refusals_per_connect: int
    #: Connects that never complete, per connect attempt (``connect_attempts``).
    timeouts_per_connect: int
    #: bleak-retry-connector's own timeout of one connect.
    connect_timeout_s: float
    #: Connects without NUS per connect attempt (``services_attempts``) and the pauses
    #: between them: a BlueZ race shorter than those pauses is absorbed.
    connects_without_nus: int
    services_retry_span_s: float
    #: The first scan (the device was never seen): not found after it.
    scan_timeout_s: float
    #: A device that vanished (reset, advertising pause) is waited for this long per scan.
    reappear_timeout_s: float
    #: The longest silence while the device erases.
    erase_silence_s: float
    ack_timeout_s: float
    max_ack_timeouts: int
    reply_timeout_s: float
    verify_timeout_s: float
    #: From DONE to the link's end; and how many such waits before "unconfirmed".
    reset_timeout_s: float
    max_reset_waits: int
    backoff_max_s: float
    #: The device's own obligations (contract/timing.json): silent after a reset for at
    #: most these.
    boot_max_s: float
    activation_boot_max_s: float

    @classmethod
    def of(cls, settings: OtaSettings | None = None, link: Link = Link.MODEL) -> Budgets:
        s = settings or OtaSettings()
        limits = s.limits
        ls = s.link
        timing = contract.timing()
        refusals = (
            bleak_retry_connector.MAX_TRANSIENT_ERRORS
            if link is Link.MODEL
            else ls.connect_attempts
        )
        return cls(
            attempts_without_progress=limits.max_attempts_without_progress,
            max_recoveries=limits.max_recoveries,
            refusals_per_connect=refusals,
            timeouts_per_connect=ls.connect_attempts,
            connect_timeout_s=bleak_retry_connector.BLEAK_TIMEOUT,
            connects_without_nus=ls.services_attempts,
            services_retry_span_s=ls.services_retry_backoff_s * sum(range(ls.services_attempts)),
            scan_timeout_s=ls.scan_timeout_s,
            reappear_timeout_s=s.reappear_timeout_s,
            erase_silence_s=s.erase_silence_timeout_s,
            ack_timeout_s=s.ack_timeout_s,
            max_ack_timeouts=limits.max_ack_timeouts,
            reply_timeout_s=s.reply_timeout_s,
            verify_timeout_s=s.verify_timeout_s,
            reset_timeout_s=s.reset_timeout_s,
            max_reset_waits=limits.max_reset_waits,
            backoff_max_s=limits.backoff_max_s,
            boot_max_s=timing.reset_to_advertising_max_s(activation=False),
            activation_boot_max_s=timing.reset_to_advertising_max_s(activation=True),
        )

    @property
    def recovery_s(self) -> float:
        """One recovery from a link failure to the device a host can talk to again."""
        return self.backoff_max_s + RECONNECT_S

    @property
    def longest_silence_s(self) -> float:
        """The longest a link that carries nothing keeps the engine waiting before it counts
        as failed: the ACK waits of a transfer and the STATUS after them, or a verify."""
        transfer = self.max_ack_timeouts * self.ack_timeout_s + self.reply_timeout_s
        return max(transfer, self.erase_silence_s, self.verify_timeout_s, self.reset_timeout_s)


class Kind(enum.Enum):
    RECOVERABLE = "recoverable"
    OVER_BUDGET = "over budget"
    HOPELESS = "hopeless"


class Wall(enum.Enum):
    """A fault no host can get past, and what the device then holds."""

    #: connect-fail:EVERY. Every connect is refused.
    REFUSED = "every connect refused"
    #: connect-timeout:EVERY. No connect ever completes.
    HANGS = "no connect ever completes"
    #: race:FOREVER (BlueZ). No connection ever shows NUS.
    NO_NUS = "no connection ever shows NUS"
    #: adv-pause:FOREVER. The device never advertises again.
    GONE = "the device never advertises again"
    #: write-drop:EVERY. The device hears nothing the host writes.
    DEAF = "every host write is lost"
    #: lose:EVERY or corrupt:EVERY. The host hears nothing the device says.
    MUTE = "every device message is lost"
    #: no-reset before the activation, and nothing else resets the device.
    NO_RESET = "the device never resets into the new image"
    #: flash-fail:EVERY before the last flash operation: the device refuses (FLASH_ERROR).
    FLASH = "every flash operation fails"


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    #: Worst-case recoveries in a row without progress that the plan's faults can cost.
    attempts: int
    #: Over budget: which budget; hopeless: the wall.
    why: str = ""
    wall: Wall | None = None

    def __str__(self) -> str:
        why = f": {self.why}" if self.why else ""
        return f"{self.kind.value} ({self.attempts} attempts at worst){why}"


def pages_of(image_size: int) -> int:
    return max(1, math.ceil(image_size / PAGE_SIZE))


def chunks_of(image_size: int) -> int:
    """DATA chunks of an update at MTU 247 (the simulated links' MTU)."""
    return math.ceil(image_size / CHUNK)


# --- one fault ------------------------------------------------------------------------


def wall_of(fault: Fault) -> Wall | None:
    """The wall this fault is, whatever its trigger (whether it fires in time is
    :func:`sure_to_fire`'s business)."""
    match fault.effect:
        case Effect.CONNECT_FAIL if fault.count >= EVERY:
            return Wall.REFUSED
        case Effect.CONNECT_TIMEOUT if fault.count >= EVERY:
            return Wall.HANGS
        case Effect.RACE if fault.seconds >= FOREVER_S:
            return Wall.NO_NUS
        case Effect.ADV_PAUSE if fault.seconds >= FOREVER_S:
            return Wall.GONE
        case Effect.WRITE_DROP if fault.count >= EVERY:
            return Wall.DEAF
        case Effect.LOSE | Effect.CORRUPT if fault.msg_type is None and fault.count >= EVERY:
            return Wall.MUTE
        case Effect.NO_RESET:
            return Wall.NO_RESET
        case Effect.FLASH_FAIL if fault.count >= EVERY:
            return Wall.FLASH
        case _:
            return None


def sure_to_fire(wall: Wall, trigger: Trigger, image_size: int) -> bool:
    """Whether a wall with this trigger fires, in every run, early enough to be a wall:
    before the confirmation after the reset, and for ``no-reset`` before the activation, for
    ``flash-fail`` before the last flash operation. (An update without the wall reaches the
    end, so it passes every one of these points.)"""
    kind, value = trigger.kind, trigger.value
    if kind is TriggerKind.NOW:
        return True
    if kind is TriggerKind.ERASE:
        return True  # every update erases
    if kind is TriggerKind.OFFSET:
        # The chunk that crosses the offset fires it once accepted, before it is written.
        return value <= image_size
    if kind is TriggerKind.CMD:
        firsts = {p.MsgType.CMD_INFO, p.MsgType.CMD_OTA_START}
        if wall is not Wall.FLASH:  # FINISH fires it before it is handled: before DONE
            firsts.add(p.MsgType.CMD_OTA_FINISH)
        return value == 1 and trigger.msg_type in firsts
    if kind is TriggerKind.CONNECT:
        # Connection 2 is at the latest the one that confirms after the reset; before it
        # the device may have reset (no-reset) or written everything (flash-fail).
        return value == 1 or (value == 2 and wall not in (Wall.NO_RESET, Wall.FLASH))
    return False  # t:D fires only on a link that lasts D


def fault_attempts(fault: Fault, b: Budgets) -> int:
    """The most recoveries in a row without progress this one fault can cost."""
    match fault.effect:
        case Effect.DROP | Effect.REBOOT | Effect.ADV_PAUSE:
            extra = 0
            if fault.effect is Effect.ADV_PAUSE:
                extra = math.ceil(fault.seconds / b.reappear_timeout_s) - 1
            return 1 + max(0, extra)
        case Effect.RACE:
            # Absorbed by one connect's NUS retries when shorter than their pauses; each
            # connect attempt inside the race costs one more.
            per_attempt = b.services_retry_span_s + b.backoff_max_s
            return 1 + math.floor(max(0.0, fault.seconds - b.services_retry_span_s) / per_attempt)
        case Effect.STALE_CACHE:
            return 1
        case Effect.LOSE | Effect.CORRUPT:
            return 1 if fault.msg_type is not None else fault.count
        case Effect.WRITE_DROP:
            return fault.count
        case Effect.CONNECT_FAIL:
            return math.ceil(fault.count / b.refusals_per_connect)
        case Effect.CONNECT_TIMEOUT:
            return math.ceil(fault.count / b.timeouts_per_connect)
        case Effect.SLOW_ERASE | Effect.FLASH_FAIL | Effect.NO_RESET:
            return 0
        case Effect.FLAKY:
            return 1  # each drop comes after progress (see classify)
    raise AssertionError(fault.effect)


def fault_over_budget(fault: Fault, image_size: int, b: Budgets) -> str | None:
    """Why this one fault is beyond what the engine's budgets absorb, or None."""
    match fault.effect:
        case Effect.ADV_PAUSE:
            first_scan = fault.trigger.kind is TriggerKind.NOW
            # Untriggered, the pause meets the first scan; otherwise the rescan after a
            # reset into the new image (its activation) may wait longest.
            limit = (
                b.scan_timeout_s - RECONNECT_S if first_scan else b.reappear_timeout_s - RECONNECT_S
            )
            if fault.seconds > limit:
                scan = "first scan" if first_scan else "rescan"
                return f"a {fault.seconds:g} s advertising pause outlasts the {scan}"
        case Effect.RACE:
            if fault.seconds > b.services_retry_span_s:
                return (
                    f"a {fault.seconds:g} s services race outlasts one connect's NUS retries "
                    f"({b.services_retry_span_s:g} s)"
                )
        case Effect.SLOW_ERASE:
            page_s = fault.seconds / pages_of(image_size)
            if page_s > b.erase_silence_s - RECONNECT_S:
                return (
                    f"a page erase of {page_s:g} s is silent for longer than the engine "
                    f"waits for erase progress ({b.erase_silence_s:g} s)"
                )
        case Effect.FLASH_FAIL:
            if fault.count > 1:
                return "two flash failures in a row: the device refuses (FLASH_ERROR)"
        case Effect.NO_RESET:
            return "a device that does not reset after DONE"
    return None


def fault_seconds(fault: Fault, b: Budgets, fault_free_s: float, slow_erases_s: float) -> float:
    """The most time this one fault can add to an update (walls aside): its own duration and
    the waits and recoveries it can cause. ``fault_free_s``: the same update without faults;
    ``slow_erases_s``: the plan's slow-erase durations (a restart may erase slowly)."""
    recovery = b.recovery_s
    match fault.effect:
        case Effect.DROP:
            return recovery
        case Effect.REBOOT:
            # The session is lost: boot, then the whole update again.
            return recovery + b.activation_boot_max_s + fault_free_s + slow_erases_s
        case Effect.ADV_PAUSE:
            return fault.seconds + fault_attempts(fault, b) * (recovery + b.reappear_timeout_s)
        case Effect.RACE | Effect.STALE_CACHE:
            race = fault.seconds if fault.effect is Effect.RACE else 0.0
            per_attempt = (
                b.connects_without_nus * REFUSED_CONNECT_S + b.services_retry_span_s + recovery
            )
            return race + fault_attempts(fault, b) * per_attempt
        case Effect.LOSE | Effect.CORRUPT | Effect.WRITE_DROP:
            lost = 1 if fault.msg_type is not None else fault.count
            return lost * (b.longest_silence_s + recovery)
        case Effect.CONNECT_FAIL:
            return fault.count * REFUSED_CONNECT_S + fault_attempts(fault, b) * recovery
        case Effect.CONNECT_TIMEOUT:
            per = b.connect_timeout_s + REFUSED_CONNECT_S
            return fault.count * per + fault_attempts(fault, b) * recovery
        case Effect.SLOW_ERASE:
            # The erase itself, and a reconnect per silence it outlasts.
            return fault.seconds + math.ceil(fault.seconds / b.erase_silence_s) * recovery
        case Effect.FLASH_FAIL:
            return 1.0  # a retried page erase or write
        case Effect.FLAKY:
            return 0.0  # per drop, counted from the device's log (see time_bound)
        case Effect.NO_RESET:
            return b.max_reset_waits * (b.reset_timeout_s + recovery)
    raise AssertionError(fault.effect)


def wall_attempt_s(wall: Wall, b: Budgets) -> float:
    """One fruitless attempt against a wall (before its backoff and reconnect)."""
    match wall:
        case Wall.REFUSED:
            return b.refusals_per_connect * REFUSED_CONNECT_S
        case Wall.HANGS:
            return b.timeouts_per_connect * (b.connect_timeout_s + REFUSED_CONNECT_S)
        case Wall.NO_NUS:
            return b.connects_without_nus * REFUSED_CONNECT_S + b.services_retry_span_s
        case Wall.GONE:
            return b.reappear_timeout_s
        case Wall.DEAF | Wall.MUTE:
            return b.longest_silence_s
        case Wall.NO_RESET:
            return b.reset_timeout_s
        case Wall.FLASH:
            return 0.0
    raise AssertionError(wall)


# --- a plan ---------------------------------------------------------------------------


def classify(plan: FaultPlan, image_size: int, budgets: Budgets) -> Classification:
    """Recoverable, hopeless or over budget, from the plan alone (see the module's text)."""
    walls = [
        (wall, f)
        for f in plan.faults
        if (wall := wall_of(f)) is not None and sure_to_fire(wall, f.trigger, image_size)
    ]
    effects = {f.effect for f in plan.faults}
    others = [f for f in plan.faults if all(f is not w for _, w in walls)]
    attempts = sum(fault_attempts(f, budgets) for f in others)
    for wall, fault in walls:
        # A reset from another fault would carry out the switch a no-reset held back.
        if wall is Wall.NO_RESET and Effect.REBOOT in effects:
            continue
        return Classification(Kind.HOPELESS, attempts, f"{fault}: {wall.value}", wall)
    reasons = [why for f in plan.faults if (why := fault_over_budget(f, image_size, budgets))]
    flash_failures = sum(f.count for f in plan.faults if f.effect is Effect.FLASH_FAIL)
    if flash_failures > 1 and not any("flash" in r for r in reasons):
        reasons.append("flash failures that may come two in a row: a refusal (FLASH_ERROR)")
    if Effect.FLAKY in effects:
        if Effect.REBOOT in effects:
            # After a restart nothing below the old offset is progress to the engine, and
            # every flaky drop there costs an attempt.
            reasons.append("flaky drops after a reset (no progress until the old offset)")
        drops = pages_of(image_size) + chunks_of(image_size)
        if drops + attempts > budgets.max_recoveries:
            reasons.append(
                f"a flaky link may drop {drops} times, beyond the cap of "
                f"{budgets.max_recoveries} recoveries"
            )
    if attempts > budgets.attempts_without_progress:
        reasons.append(
            f"up to {attempts} recoveries in a row without progress, beyond "
            f"{budgets.attempts_without_progress} (--max-attempts)"
        )
    if reasons:
        return Classification(Kind.OVER_BUDGET, attempts, "; ".join(reasons))
    return Classification(Kind.RECOVERABLE, attempts)


def time_bound(
    plan: FaultPlan,
    image_size: int,
    budgets: Budgets,
    fault_free_s: float,
    flaky_drops: int = 0,
) -> float:
    """The longest the update may take, in (virtual) seconds: the same update without
    faults, what each fault can add, and for a wall the engine's whole budget of attempts
    against it. ``flaky_drops``: the drops a flaky link made (the device's log)."""
    c = classify(plan, image_size, budgets)
    slow = sum(f.seconds for f in plan.faults if f.effect is Effect.SLOW_ERASE)
    total = fault_free_s + flaky_drops * budgets.recovery_s
    for fault in plan.faults:
        if wall_of(fault) is not None and fault.effect is not Effect.NO_RESET:
            continue
        total += fault_seconds(fault, budgets, fault_free_s, slow)
    if c.wall is not None and c.wall is not Wall.NO_RESET:
        attempts = budgets.attempts_without_progress + 1
        total += attempts * (wall_attempt_s(c.wall, budgets) + budgets.recovery_s)
        total += budgets.scan_timeout_s  # a first scan that a wall may make fail
    return total


# --- plans by construction ------------------------------------------------------------


def _within(fault: Fault, image_size: int, b: Budgets) -> bool:
    return wall_of(fault) is None and fault_over_budget(fault, image_size, b) is None


@st.composite
def recoverable_plans(
    draw: st.DrawFn,
    image_size: int,
    budgets: Budgets,
    *,
    link: Link = Link.MODEL,
    max_faults: int = 4,
    attempts: int | None = None,
) -> FaultPlan:
    """Plans the engine must finish: each fault within its budget, and together at most
    ``attempts`` (the engine's attempts without progress by default) recoveries in a row
    without progress at worst. They shrink towards fewer, simpler faults."""
    allowed = budgets.attempts_without_progress if attempts is None else attempts
    effects = sorted(
        set(Effect)
        - {Effect.NO_RESET}
        - SIGNED_UPDATE_EFFECTS
        - (BLUEZ_ONLY_EFFECTS if link is Link.BUMBLE else set())
    )
    candidates = any_faults(image_size, effects=effects).filter(
        lambda f: _within(f, image_size, budgets)
    )
    chosen: list[Fault] = []
    for _ in range(draw(st.integers(1, max_faults))):
        fault = draw(candidates)
        plan = FaultPlan((*chosen, fault))
        c = classify(plan, image_size, budgets)
        if c.kind is Kind.RECOVERABLE and c.attempts <= allowed:
            chosen.append(fault)
    return FaultPlan(tuple(chosen))


def _wall_fault(wall: Wall, trigger: Trigger) -> Fault:
    match wall:
        case Wall.REFUSED:
            return Fault(Effect.CONNECT_FAIL, trigger, count=EVERY)
        case Wall.HANGS:
            return Fault(Effect.CONNECT_TIMEOUT, trigger, count=EVERY)
        case Wall.NO_NUS:
            return Fault(Effect.RACE, trigger, seconds=FOREVER_S)
        case Wall.GONE:
            return Fault(Effect.ADV_PAUSE, trigger, seconds=FOREVER_S)
        case Wall.DEAF:
            return Fault(Effect.WRITE_DROP, trigger, count=EVERY)
        case Wall.MUTE:
            return Fault(Effect.LOSE, trigger, count=EVERY)
        case Wall.NO_RESET:
            return Fault(Effect.NO_RESET, trigger)
        case Wall.FLASH:
            return Fault(Effect.FLASH_FAIL, trigger, count=EVERY)
    raise AssertionError(wall)


def sure_triggers(wall: Wall, image_size: int) -> st.SearchStrategy[Trigger]:
    """Triggers with which ``wall`` is sure to fire in time (:func:`sure_to_fire`), drawn
    directly rather than filtered out of every trigger."""
    firsts = [p.MsgType.CMD_INFO, p.MsgType.CMD_OTA_START]
    if wall is not Wall.FLASH:
        firsts.append(p.MsgType.CMD_OTA_FINISH)
    connects = [1] if wall in (Wall.NO_RESET, Wall.FLASH) else [1, 2]
    return st.one_of(
        st.just(Trigger()),
        st.builds(lambda v: Trigger(TriggerKind.ERASE, v), st.integers(0, 100)),
        st.builds(lambda v: Trigger(TriggerKind.OFFSET, v), st.integers(0, image_size)),
        st.builds(lambda t: Trigger(TriggerKind.CMD, 1, t), st.sampled_from(firsts)),
        st.builds(lambda v: Trigger(TriggerKind.CONNECT, v), st.sampled_from(connects)),
    )


def walls_for(link: Link) -> list[Wall]:
    return [w for w in Wall if not (link is Link.BUMBLE and w is Wall.NO_NUS)]


@st.composite
def hopeless_plans(
    draw: st.DrawFn,
    image_size: int,
    budgets: Budgets,
    *,
    link: Link = Link.MODEL,
    max_noise: int = 2,
    walls: Iterable[Wall] | None = None,
) -> FaultPlan:
    """A wall with a trigger sure to fire in time, among up to ``max_noise`` recoverable
    faults (none that would reset a device held back by ``no-reset``)."""
    wall = draw(st.sampled_from(list(walls) if walls is not None else walls_for(link)))
    trigger = draw(sure_triggers(wall, image_size))
    if wall is Wall.MUTE and draw(st.booleans()):
        fault = Fault(Effect.CORRUPT, trigger, count=EVERY)
    else:
        fault = _wall_fault(wall, trigger)
    noise = draw(recoverable_plans(image_size, budgets, link=link, max_faults=max_noise))
    kept = tuple(
        f for f in noise.faults if not (wall is Wall.NO_RESET and f.effect is Effect.REBOOT)
    )
    faults = list(kept)
    faults.insert(draw(st.integers(0, len(faults))), fault)
    return FaultPlan(tuple(faults))

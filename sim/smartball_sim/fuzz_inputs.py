"""Hypothesis strategies for fuzzing whole updates against the simulated SmartBall: fault
plans in the simulator's fault language, and the images to flash.

For your own flows::

    from hypothesis import given
    from smartball_sim.fuzz_inputs import fault_plans, image_specs

    @given(plan=fault_plans(), image=image_specs(max_size=64 * 1024))
    def test_my_flow(plan, image): ...

Protocol frames (valid, damaged, garbage) are in ``pytest_smartball.strategies``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from pytest_smartball.contract import codec as p

from .faults import (
    EFFECTS,
    SIGNED_UPDATE_EFFECTS,
    ArgKind,
    Effect,
    Fault,
    FaultPlan,
    Trigger,
    TriggerKind,
)
from .firmware.model import DEFAULT_STAGING_CAPACITY, PAGE_SIZE
from .make_image import make_image

#: Chunk sizes a MTU-247 link and a MTU-23 link give (see docs/protocol.md).
TYPICAL_CHUNKS = (232, 8)
#: Effects no host can finish an update under (a device that never resets after DONE);
#: left out of generated plans until the engine gives up on them (DECISIONS.md, E2).
UNFINISHABLE_EFFECTS = frozenset({Effect.NO_RESET})


_COMMAND_TYPES = [t for t in p.MsgType if t in p.COMMAND_TYPES]
_DEVICE_TYPES = [t for t in p.MsgType if t not in p.COMMAND_TYPES]


def image_sizes(max_size: int = DEFAULT_STAGING_CAPACITY) -> st.SearchStrategy[int]:
    """Sizes from 1 byte to ``max_size``, biased to page and chunk boundaries (±1)."""
    boundaries = {1, 2, max_size - 1, max_size}
    for unit in (PAGE_SIZE, *TYPICAL_CHUNKS, TYPICAL_CHUNKS[0] * 8):
        for k in (1, 2, 3, 7):
            boundaries.update({unit * k - 1, unit * k, unit * k + 1})
    edges = sorted(b for b in boundaries if 1 <= b <= max_size)
    # hypothesis favours small integers; the third branch keeps large images common too.
    return st.one_of(
        st.sampled_from(edges), st.integers(1, max_size), st.integers(max_size // 2, max_size)
    )


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """An image to flash, as the size and seed it is made from: large images stay cheap to
    generate and shrink (hypothesis shrinks the size and the seed, not megabytes), and a
    failing example replays from the shell with ``python -m smartball_sim.make_image OUT
    SIZE --seed SEED`` (the same bytes)."""

    size: int
    seed: int

    @property
    def data(self) -> bytes:
        return make_image(self.size, self.seed)

    @property
    def name(self) -> str:
        return f"fuzz-{self.size}-{self.seed}.bin"


def image_specs(max_size: int = DEFAULT_STAGING_CAPACITY) -> st.SearchStrategy[ImageSpec]:
    return st.builds(ImageSpec, image_sizes(max_size), st.integers(0, 2**16))


def triggers(
    image_size: int = DEFAULT_STAGING_CAPACITY,
    *,
    timed: bool = True,
    commands: Sequence[int] = _COMMAND_TYPES,
) -> st.SearchStrategy[Trigger]:
    """``timed=False`` leaves out ``t:`` triggers; ``commands`` limits ``cmd:`` triggers."""
    kinds = [
        st.just(Trigger()),
        st.builds(lambda v: Trigger(TriggerKind.ERASE, v), st.integers(0, 100)),
        st.builds(lambda v: Trigger(TriggerKind.OFFSET, v), st.integers(0, max(0, image_size))),
    ]
    if commands:
        kinds.append(
            st.builds(
                lambda t, n: Trigger(TriggerKind.CMD, n, t),
                st.sampled_from(commands),
                st.integers(1, 20),
            )
        )
    if timed:
        seconds = st.sampled_from([0.5, 1, 2, 5, 10, 30])
        kinds.append(st.builds(lambda v: Trigger(TriggerKind.T, v), seconds))
    kinds.append(st.builds(lambda v: Trigger(TriggerKind.CONNECT, v), st.integers(1, 4)))
    return st.one_of(kinds)


def faults(
    image_size: int = DEFAULT_STAGING_CAPACITY,
    *,
    effects: Iterable[Effect] | None = None,
    trigger_strategy: st.SearchStrategy[Trigger] | None = None,
) -> st.SearchStrategy[Fault]:
    """Faults of the given ``effects`` (every finishable one by default) with triggers from
    ``trigger_strategy`` (``triggers(image_size)`` by default)."""

    def build(
        effect: Effect,
        trigger: Trigger,
        seconds: float,
        count: int,
        msg_type: int | None,
    ) -> Fault:
        kind = EFFECTS[effect][0]
        if kind is ArgKind.SECONDS:
            return Fault(effect, trigger, seconds=seconds)
        if kind is ArgKind.PERCENT:
            return Fault(effect, trigger, percent=float(count))
        if kind is ArgKind.COUNT_OR_TYPE and msg_type is not None:
            return Fault(effect, trigger, msg_type=msg_type)
        if kind is None:
            return Fault(effect, trigger)
        return Fault(effect, trigger, count=count)

    return st.builds(
        build,
        st.sampled_from(
            sorted(
                set(EFFECTS) - UNFINISHABLE_EFFECTS - SIGNED_UPDATE_EFFECTS
                if effects is None
                else effects
            )
        ),
        triggers(image_size) if trigger_strategy is None else trigger_strategy,
        st.sampled_from([0.5, 1.5, 5, 20, 40]),
        st.integers(1, 4),
        st.one_of(st.none(), st.sampled_from(_DEVICE_TYPES)),
    )


def fault_plans(
    max_faults: int = 4,
    image_size: int = DEFAULT_STAGING_CAPACITY,
) -> st.SearchStrategy[FaultPlan]:
    """Plans of up to ``max_faults`` faults; they shrink towards fewer, simpler faults."""
    return st.lists(faults(image_size), max_size=max_faults).map(lambda fs: FaultPlan(tuple(fs)))

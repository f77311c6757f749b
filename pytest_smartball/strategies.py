"""Hypothesis strategies for fuzzing SmartBall updates: fault plans, images, protocol frames.

Shipped with the package so users can fuzz their own flows::

    from hypothesis import given
    from pytest_smartball.strategies import fault_plans, images

    @given(plan=fault_plans(), image=images(max_size=64 * 1024))
    def test_my_flow(plan, image): ...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hypothesis import strategies as st
from smartball_sim.faults import EFFECTS, Fault, FaultPlan, Trigger
from smartball_sim.firmware import DEFAULT_STAGING_CAPACITY, PAGE_SIZE
from smartball_sim.make_image import make_image

from . import protocol as p
from .image import FirmwareImage

#: Chunk sizes a MTU-247 link and a MTU-23 link give (see docs/protocol.md).
TYPICAL_CHUNKS = (234, 10)

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


def images(max_size: int = DEFAULT_STAGING_CAPACITY) -> st.SearchStrategy[FirmwareImage]:
    """Firmware images; the bytes come from a drawn seed, so large images stay cheap to
    generate and shrink (hypothesis shrinks the size and the seed, not megabytes)."""

    def build(size: int, seed: int) -> FirmwareImage:
        # The same bytes as `python -m smartball_sim.make_image OUT SIZE --seed SEED`, so a failing
        # example can be replayed from the shell.
        return FirmwareImage(make_image(size, seed), f"fuzz-{size}-{seed}.bin")

    return st.builds(build, image_sizes(max_size), st.integers(0, 2**16))


def triggers(
    image_size: int = DEFAULT_STAGING_CAPACITY,
    *,
    timed: bool = True,
    commands: Sequence[int] = _COMMAND_TYPES,
) -> st.SearchStrategy[Trigger]:
    """``timed=False`` leaves out ``t:`` triggers; ``commands`` limits ``cmd:`` triggers."""
    kinds = [
        st.just(Trigger()),
        st.builds(lambda v: Trigger("erase", v), st.integers(0, 100)),
        st.builds(lambda v: Trigger("offset", v), st.integers(0, max(0, image_size))),
        st.builds(lambda v: Trigger("connect", v), st.integers(1, 4)),
    ]
    if commands:
        kinds.insert(
            3,
            st.builds(
                lambda t, n: Trigger("cmd", n, t), st.sampled_from(commands), st.integers(1, 20)
            ),
        )
    if timed:
        seconds = st.sampled_from([0.5, 1, 2, 5, 10, 30])
        kinds.insert(-1, st.builds(lambda v: Trigger("t", v), seconds))
    return st.one_of(kinds)


def faults(
    image_size: int = DEFAULT_STAGING_CAPACITY,
    *,
    effects: Iterable[str] = EFFECTS,
    trigger_strategy: st.SearchStrategy[Trigger] | None = None,
) -> st.SearchStrategy[Fault]:
    """Faults of the given ``effects`` (all by default) with triggers from
    ``trigger_strategy`` (``triggers(image_size)`` by default)."""

    def build(
        effect: str,
        trigger: Trigger,
        seconds: float,
        count: int,
        msg_type: int | None,
    ) -> Fault:
        kind = EFFECTS[effect][0]
        if kind == "seconds":
            return Fault(effect, trigger, seconds=seconds)
        if kind == "percent":
            return Fault(effect, trigger, percent=float(count))
        if kind == "count_or_type" and msg_type is not None:
            return Fault(effect, trigger, msg_type=msg_type)
        if kind is None:
            return Fault(effect, trigger)
        return Fault(effect, trigger, count=count)

    return st.builds(
        build,
        st.sampled_from(sorted(effects)),
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


def messages() -> st.SearchStrategy[p.Message]:
    u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
    return st.one_of(
        st.just(p.CmdInfo()),
        st.just(p.CmdOtaStatus()),
        st.just(p.CmdOtaAbort()),
        st.just(p.CmdOtaFinish()),
        st.builds(p.CmdOtaStart, u32, u32, u16, u32),
        st.builds(p.CmdOtaData, u32, st.binary(max_size=p.MAX_DATA_CHUNK)),
        st.builds(p.MsgInfo, u8, u8, u8, u8, u32, u32, u32, u32),
        st.builds(p.MsgOtaReady, u16, u16),
        st.builds(p.MsgOtaProgress, u8, u32, u32),
        st.builds(p.MsgOtaStatus, u8, u32, u32, u32),
        st.builds(p.MsgOtaAck, u32),
        st.builds(p.MsgOtaDone, u32),
        st.builds(p.MsgError, u8, u8, st.text(max_size=40)),
    )


def valid_frames() -> st.SearchStrategy[bytes]:
    return messages().map(p.encode)


def mutated_frames() -> st.SearchStrategy[bytes]:
    """A valid frame with one to three bytes changed."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        frame = bytearray(draw(valid_frames()))
        for _ in range(draw(st.integers(1, 3))):
            frame[draw(st.integers(0, len(frame) - 1))] ^= draw(st.integers(1, 0xFF))
        return bytes(frame)

    return mutate()


def truncated_frames() -> st.SearchStrategy[bytes]:
    return valid_frames().flatmap(lambda f: st.integers(0, len(f) - 1).map(lambda n: f[:n]))


def frames() -> st.SearchStrategy[bytes]:
    """Protocol input of every kind: valid, mutated, truncated frames and garbage."""
    return st.one_of(valid_frames(), mutated_frames(), truncated_frames(), st.binary(max_size=64))


def command_frames() -> st.SearchStrategy[bytes]:
    """What a host might write: valid commands (mostly) and damaged ones."""
    commands = messages().filter(lambda m: m.TYPE in p.COMMAND_TYPES).map(p.encode)
    return st.one_of(commands, mutated_frames(), truncated_frames(), st.binary(max_size=32))

"""Hypothesis strategies for protocol input: messages, valid frames, damaged frames and
garbage, for fuzzing a decoder or a device (simulated or real) with what a host might write.

Fault plans and images for fuzzing whole updates against the simulator are in
``smartball_sim.fuzz_inputs``.
"""

from __future__ import annotations

from hypothesis import strategies as st

from .contract import codec as p


def messages() -> st.SearchStrategy[p.Message]:
    u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
    return st.one_of(
        st.just(p.CmdInfo()),
        st.just(p.CmdOtaStatus()),
        st.just(p.CmdOtaAbort()),
        st.just(p.CmdOtaFinish()),
        st.builds(p.CmdOtaStart, u32, u32, u16, u32),
        st.builds(p.CmdOtaData, u32, st.binary(max_size=p.MAX_DATA_CHUNK)),
        st.builds(
            p.CmdOtaManifest,
            st.binary(min_size=56, max_size=56),
            st.binary(min_size=64, max_size=64),
        ),
        st.just(p.CmdOtaConfirm()),
        st.builds(p.MsgInfo, u8, u8, u8, u8, u32, u32, u32, u32, u32, u8, u32),
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

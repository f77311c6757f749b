"""The input the contract allows a host to send, driven on purpose (issue 20), on the
simulator and on hardware: frames split into pieces of any size with gaps below the idle
limit, several frames in one write, frames longer than one write, the contract's decoder
vectors replayed over NUS, every chunk size up to the largest READY grants (words, and the
image's odd last chunk), windows with a hole, the ACK interval itself, and the next session
after a refusal without a reset. Every reply is compared with what docs/protocol.md says,
field by field (a MSG_ERROR by code and command).

The random images here are never activated: their sessions end in an ABORT or a CRC
mismatch (a wrong CRC announced on purpose), so a real board keeps its firmware.

The properties run as hypothesis tests on a link of their own (hypothesis drives examples
synchronously), their example counts scaled from ``--fuzz-examples`` like the other fuzz
properties; their explicit examples are the cases a firmware most often gets wrong.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.link import LinkSettings, NusLink, find_device
from pytest_smartball.loops import virtual_event_loop
from pytest_smartball.options import SmartBallOptions
from pytest_smartball.plugin.fixtures import skip_a_raw_link_under_a_global_plan
from pytest_smartball.targets import Target

from . import helpers as h
from .helpers import RADIO_MARGIN_S

TIMING = contract.timing()
IDLE_STATUS = p.MsgOtaStatus(p.OtaState.IDLE, 0, 0, 0)
ERROR_STATUS = p.MsgOtaStatus(p.OtaState.ERROR, 0, 0, 0)
#: Each reply within the device's obligation plus the radio's delivery.
REPLY_S = TIMING.reply_max_s + RADIO_MARGIN_S
#: The longest gap between two pieces of a frame: below the idle limit with its 5 % margin.
GAPS = (0.0, 0.0, 0.0, 0.001, 0.05, 0.3, 0.6, 0.9)
#: At most this much waiting in one example (emulated BlueZ and hardware run in real time).
MAX_GAPS_S = 2.5

T = TypeVar("T")


def examples(target: Target) -> int:
    """Examples per property: a tenth of the profile's on virtual time (10 in CI), fewer
    in real time; the explicit examples come on top."""
    count = settings().max_examples
    return max(2, count // 10) if target.is_sim else max(2, count // 50)


class RawHost:
    """A NUS link to the device under test on a loop of its own (virtual time on the
    simulator), for the hypothesis properties."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.runner = asyncio.Runner(loop_factory=virtual_event_loop if target.is_sim else None)
        self.nus: NusLink = self.runner.run(self._open())
        #: False while an example is under way: a failed one leaves the device anywhere.
        self.clean = False

    async def _open(self) -> NusLink:
        t = self.target
        sighting = await find_device(t.backend, name=t.name, address=t.address, timeout=10.0)
        return await NusLink.open(sighting.ble_device, t.backend, LinkSettings())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def close(self) -> None:
        try:
            self.run(self.nus.close())
        finally:
            self.runner.close()


# --- frames in any pieces, several in one write ------------------------------------------------


def idle_commands(info: p.MsgInfo) -> dict[str, tuple[bytes, p.DeviceMessage]]:
    """Frames a device in IDLE answers without changing state, and the answers."""
    err = p.ErrorCode
    return {
        "info": (p.encode(p.CmdInfo()), info),
        "status": (p.encode(p.CmdOtaStatus()), IDLE_STATUS),
        "abort": (p.encode(p.CmdOtaAbort()), IDLE_STATUS),
        "finish": (p.encode(p.CmdOtaFinish()), p.MsgError(err.BAD_STATE, 0x14)),
        "data": (p.encode(p.CmdOtaData(0, bytes(8))), p.MsgError(err.BAD_STATE, 0x11)),
        "unknown": (p.encode_frame(0x7F, b""), p.MsgError(err.UNKNOWN_COMMAND, 0x7F)),
        "device-type": (p.encode_frame(0x93, bytes(4)), p.MsgError(err.UNKNOWN_COMMAND, 0x93)),
        "short-start": (p.encode_frame(0x10, b"\x01\x00\x00"), p.MsgError(err.BAD_FRAME, 0x10)),
        "start-size-0": (p.encode(p.CmdOtaStart(0, 0, 232)), p.MsgError(err.BAD_PARAM, 0x10)),
        "start-too-large": (
            p.encode(p.CmdOtaStart(info.staging_capacity + 1, 0, 232)),
            p.MsgError(err.TOO_LARGE, 0x10),
        ),
        # Extra payload is ignored (section 5); 306 bytes: longer than one write at MTU 247.
        "long-info": (p.encode_frame(p.MsgType.CMD_INFO, bytes(300)), info),
    }


COMMAND_NAMES = sorted(idle_commands(p.MsgInfo(1, 0, 0, 0, 0, 0, 0)))


@dataclass(frozen=True)
class Stream:
    """Commands, garbage (never an SOF) in front of each, where the bytes are cut into
    writes and the gap before each write."""

    names: tuple[str, ...]
    garbage: tuple[bytes, ...] = ()
    cuts: tuple[int, ...] = ()
    gaps: tuple[float, ...] = ()


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    names = draw(st.lists(st.sampled_from(COMMAND_NAMES), min_size=1, max_size=6))
    no_sof = st.binary(max_size=3).map(lambda b: b.replace(b"\xa5", b"\x5a"))
    garbage = draw(st.lists(no_sof, min_size=len(names), max_size=len(names)))
    cuts = draw(st.lists(st.integers(1, 400), max_size=10))
    gaps = draw(st.lists(st.sampled_from(GAPS), max_size=12))
    while sum(gaps) > MAX_GAPS_S:
        gaps.remove(max(gaps))
    return Stream(tuple(names), tuple(garbage), tuple(cuts), tuple(gaps))


async def check_stream(nus: NusLink, info: p.MsgInfo, stream: Stream) -> None:
    commands = idle_commands(info)
    garbage = stream.garbage or (b"",) * len(stream.names)
    data = b"".join(g + commands[n][0] for g, n in zip(garbage, stream.names, strict=True))
    writes = h.frames_to_writes(data, [c % len(data) for c in stream.cuts], nus.max_write)
    nus.drain()
    await h.write_pieces(nus, writes, list(stream.gaps))
    wanted = [commands[n][1] for n in stream.names]
    what = (
        f"{list(stream.names)} in {len(writes)} writes of {[len(w) for w in writes]} bytes, "
        f"gaps {list(stream.gaps)} s"
    )
    await h.expect_replies(nus, wanted, REPLY_S, what)


#: A command in three pieces 0.6 s apart: within the idle time between bytes, 1.2 s from
#: the frame's first byte to its last.
SLOW_PIECES = Stream(("info",), cuts=(2, 4), gaps=(0.0, 0.6, 0.6))
#: Four commands in one write.
MERGED = Stream(("status", "info", "finish", "unknown"))
#: A frame longer than one write, then one split in the middle of its header.
SPLIT = Stream(("long-info", "status"), cuts=(308,))


def test_frames_in_any_pieces_and_merged_are_each_answered(
    smartball: Target, smartball_options: SmartBallOptions
) -> None:
    """Commands a device in IDLE answers without a state change, written as one byte
    stream cut anywhere (several frames in one write, one frame over several, garbage
    between frames, gaps below the idle limit): the replies are exactly those of the
    commands, in order, and nothing else (docs/protocol.md 1, 4)."""
    skip_a_raw_link_under_a_global_plan(smartball_options)
    host = RawHost(smartball)
    try:
        host.run(host.nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,)))
        info = host.run(host.nus.request(p.CmdInfo(), (p.MsgInfo,)))
        assert isinstance(info, p.MsgInfo)

        @settings(max_examples=examples(smartball), deadline=None)
        @given(stream=streams())
        @example(stream=SLOW_PIECES)
        @example(stream=MERGED)
        @example(stream=SPLIT)
        def check(stream: Stream) -> None:
            host.run(check_stream(host.nus, info, stream))

        check()
    finally:
        host.close()


# --- the contract's decoder vectors, replayed to the device -------------------------------------

DECODER_VECTORS: list[dict[str, Any]] = contract.vectors("decoder.json")["vectors"]


def reply_in_idle(frame: p.Frame, info: p.MsgInfo) -> p.DeviceMessage | None:
    """What a device in IDLE answers to a decoded frame; None for a START that opens a
    session (its erase's messages follow)."""
    err = p.ErrorCode
    signed_commands = (p.MsgType.CMD_OTA_MANIFEST, p.MsgType.CMD_OTA_CONFIRM)
    if frame.type not in p.COMMAND_TYPES or (
        frame.type in signed_commands and not info.signed_only
    ):
        return p.MsgError(err.UNKNOWN_COMMAND, frame.type)
    try:
        msg = p.parse_message(frame)
    except p.ProtocolError:
        return p.MsgError(err.BAD_FRAME, frame.type)
    match msg:
        case p.CmdInfo():
            return info
        case p.CmdOtaStatus() | p.CmdOtaAbort():
            return IDLE_STATUS
        case p.CmdOtaStart() if msg.image_size == 0 or msg.chunk_size < p.MIN_CHUNK_SIZE:
            return p.MsgError(err.BAD_PARAM, frame.type)
        case p.CmdOtaStart() if msg.image_size > info.staging_capacity:
            return p.MsgError(err.TOO_LARGE, frame.type)
        case p.CmdOtaStart() if info.signed_only:  # no manifest was accepted
            return p.MsgError(err.UNSIGNED, frame.type)
        case p.CmdOtaStart():
            return None
        case p.CmdOtaConfirm():
            return info
    return p.MsgError(err.BAD_STATE, frame.type)


@pytest.mark.asyncio
@pytest.mark.parametrize("vector", DECODER_VECTORS, ids=[v["name"] for v in DECODER_VECTORS])
async def test_the_decoder_vectors_replayed_to_the_device(
    nus: NusLink, smartball: Target, vector: dict[str, Any]
) -> None:
    """vectors/decoder.json's byte streams, written to NUS RX in their pieces and at their
    times (a link drop where the vector has one): the device answers exactly the frames the
    vector says a decoder yields, in order (resync after a bad CRC or a bad length, garbage,
    the idle discard, a 512-byte payload, one byte per write)."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo)
    frames = [p.Frame(p.MsgType[f["type"]], bytes.fromhex(f["payload"])) for f in vector["frames"]]
    replies = [reply_in_idle(f, info) for f in frames]
    link = nus
    loop = asyncio.get_running_loop()
    began = loop.time()
    events: list[tuple[float, bytes | None]] = [
        (piece["at_s"], bytes.fromhex(piece["hex"])) for piece in vector["input"]
    ]
    if "link_drop_at_s" in vector:
        events.append((vector["link_drop_at_s"], None))
    for at_s, data in sorted(events, key=lambda e: e[0]):
        await asyncio.sleep(max(0.0, began + at_s - loop.time()))
        if data is None:  # the link drops: the host ends it and connects again
            await link.close()
            link, _ = await h.back_after_reset(smartball, TIMING.reset_to_advertising_max_s(False))
        else:
            await h.write_pieces(link, h.frames_to_writes(data, [], link.max_write))
    try:
        if None in replies:  # a START opened a session: its erase speaks too
            got = await collect_skipping_the_erase(link, len(replies) - 1)
            wanted = [r for r in replies if r is not None]
            assert len(got) == len(wanted) and all(map(h.same_reply, got, wanted)), (
                f"{vector['name']}: expected {wanted} besides the erase's messages, got {got}"
            )
        else:
            await h.expect_replies(link, replies, REPLY_S, vector["name"])  # type: ignore[arg-type]
    finally:
        await link.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
        if link is not nus:
            await link.close()


async def collect_skipping_the_erase(nus: NusLink, count: int) -> list[p.DeviceMessage]:
    """``count`` replies, the erase's PROGRESS and READY left out; at least one PROGRESS
    must have come (the START opened a session)."""
    got: list[p.DeviceMessage] = []
    progress = 0
    while len(got) < count or not progress:
        msg = await nus.receive(TIMING.progress_gap_max_s + RADIO_MARGIN_S)
        if isinstance(msg, p.MsgOtaProgress):
            progress += 1
        elif not isinstance(msg, p.MsgOtaReady):
            got.append(msg)
    return got


# --- every chunk size, frames packed or cut into writes, windows with a hole --------------------


@dataclass(frozen=True)
class Transfer:
    """One session: its image, the START's chunk_size, the chunk sizes the host cycles
    through (words of max_chunk's), how it cuts frames into writes, a hole in the first
    ACK interval, and how it ends."""

    size: int
    chunk_size: int
    words: tuple[int, ...]
    packing: str = "frame-per-write"
    cuts: tuple[int, ...] = ()
    hole: int | None = None
    finish: bool = True
    seed: int = 0


#: Most chunks a generated session sends (each costs a frame; the erase is per page).
MAX_CHUNKS = 48


@st.composite
def transfers(draw: st.DrawFn) -> Transfer:
    chunk_size = draw(st.integers(p.MIN_CHUNK_SIZE, 600))
    max_words = p.granted_max_chunk(chunk_size) // p.WORD_SIZE
    words = draw(st.lists(st.integers(1, max_words), min_size=1, max_size=4))
    size = draw(st.integers(1, min(3 * h.PAGE_SIZE, MAX_CHUNKS * min(words) * p.WORD_SIZE)))
    return Transfer(
        size=size,
        chunk_size=chunk_size,
        words=tuple(words),
        packing=draw(st.sampled_from(["frame-per-write", "packed", "cut"])),
        cuts=tuple(draw(st.lists(st.integers(1, 8_000), max_size=8))),
        hole=draw(st.none() | st.integers(1, 7)),
        finish=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def writes_for(t: Transfer, max_write: int) -> Any:
    def to_writes(frames: list[bytes]) -> list[bytes]:
        data = b"".join(frames)
        if t.packing == "packed":
            cuts: list[int] = []
        elif t.packing == "cut":
            cuts = [c % len(data) for c in t.cuts]
        else:
            cuts = [sum(len(f) for f in frames[:k]) for k in range(1, len(frames))]
        return h.frames_to_writes(data, cuts, max_write)

    return to_writes


async def check_transfer(host: RawHost, info: p.MsgInfo, t: Transfer) -> None:
    """A session from IDLE or ERROR (the previous example's end: no reset, no ABORT), its
    chunks ACKed interval by interval, then FINISH with a wrong CRC (CRC_MISMATCH, state
    ERROR) or ABORT (IDLE); the device keeps running the image it ran."""
    nus = host.nus
    if not host.clean:
        await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    host.clean = False
    nus.drain()
    image = random.Random(t.seed).randbytes(t.size)
    crc = p.crc32(image) ^ (0x5A5A if t.finish else 0)  # a wrong CRC: never activated
    ready = await h.open_session(nus, image, crc, t.chunk_size, TIMING)
    sizes = [w * p.WORD_SIZE for w in t.words]
    await h.send_in_ack_intervals(
        nus, image, crc, ready, sizes, writes_for(t, nus.max_write), hole=t.hole
    )
    if t.finish:
        await nus.send(p.CmdOtaFinish())
        verdict = await nus.receive(TIMING.verify_max_s(t.size) + RADIO_MARGIN_S)
        assert h.same_reply(verdict, p.MsgError(p.ErrorCode.CRC_MISMATCH, 0x14)), verdict
        after = ERROR_STATUS
    else:
        assert await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,)) == IDLE_STATUS
        after = IDLE_STATUS
    assert await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,)) == after
    assert await nus.request(p.CmdInfo(), (p.MsgInfo,)) == info
    host.clean = True


#: The largest frames READY grants (510 bytes: longer than one write at MTU 247), the odd
#: last chunk, a hole, packed writes; then the next session straight from ERROR.
LARGEST = Transfer(size=9_001, chunk_size=500, words=(125,), packing="packed", hole=3)
SMALLEST = Transfer(size=203, chunk_size=4, words=(1,), packing="cut", cuts=(7, 500, 1001))
MIXED = Transfer(size=5_002, chunk_size=333, words=(83, 1, 40), packing="cut", cuts=(2, 77))


def test_every_chunk_size_and_packing_with_holes(
    smartball: Target, smartball_options: SmartBallOptions
) -> None:
    """Sessions with chunk sizes from one word to the 500 bytes READY grants (the image's
    last chunk not whole words), their frames one per write, packed into full writes or cut
    anywhere, a hole in the first window; each ACK interval ends in exactly its ACK, the
    hole in exactly one STATUS at the hole (7.4), the erase's PROGRESS count whole pages
    (7.3), FINISH with a wrong CRC is refused and the next START, without a reset or an
    ABORT, opens a new session (7.2: START in ERROR)."""
    skip_a_raw_link_under_a_global_plan(smartball_options)
    host = RawHost(smartball)
    try:
        host.run(host.nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,)))
        info = host.run(host.nus.request(p.CmdInfo(), (p.MsgInfo,)))
        assert isinstance(info, p.MsgInfo)
        host.clean = True

        @settings(max_examples=examples(smartball), deadline=None)
        @given(t=transfers())
        @example(t=LARGEST)
        @example(t=SMALLEST)
        @example(t=MIXED)
        def check(t: Transfer) -> None:
            host.run(check_transfer(host, info, t))

        check()
        host.run(host.nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,)))
    finally:
        host.close()


# --- the ACK interval --------------------------------------------------------------------------

#: Six pages: room for two ACK intervals of a window up to 48 chunks of 232 bytes.
ACK_IMAGE = random.Random(20).randbytes(6 * h.PAGE_SIZE - 3)


@pytest.mark.asyncio
async def test_an_ack_comes_after_exactly_half_a_window(nus: NusLink) -> None:
    """Exactly ``max(1, window // 2)`` chunks, one frame per write: MSG_OTA_ACK of their end
    within the ACK latency (7.4, ack_latency_max_s); one chunk short of the next interval
    brings no ACK, the chunk that completes it does. A device that ACKs every ``window``
    chunks makes a host within its credit wait for each ACK, stop-and-wait."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    crc = p.crc32(ACK_IMAGE) ^ 1  # never activated
    ready = await h.open_session(nus, ACK_IMAGE, crc, nus.max_data_chunk, TIMING)
    chunk, interval = ready.max_chunk, h.ack_interval(ready.window)
    limit = TIMING.ack_latency_max_s + RADIO_MARGIN_S
    loop = asyncio.get_running_loop()
    offset = 0
    for _ in range(interval):
        await nus.send(p.CmdOtaData(offset, ACK_IMAGE[offset : offset + chunk]))
        offset += chunk
    sent = loop.time()
    ack = await nus.receive(limit)
    assert ack == p.MsgOtaAck(offset), (
        f"{interval} chunks (window {ready.window}): expected MSG_OTA_ACK({offset}), got {ack}"
    )
    assert loop.time() - sent <= limit, f"the ACK came {loop.time() - sent:.3f} s late"
    if 2 * interval * chunk < len(ACK_IMAGE):
        for _ in range(interval - 1):
            await nus.send(p.CmdOtaData(offset, ACK_IMAGE[offset : offset + chunk]))
            offset += chunk
        await asyncio.sleep(limit)
        early = nus.drain()
        assert early == [], f"{interval - 1} chunks of an interval of {interval}: {early}"
        await nus.send(p.CmdOtaData(offset, ACK_IMAGE[offset : offset + chunk]))
        offset += chunk
        assert await nus.receive(limit) == p.MsgOtaAck(offset)
    assert await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,)) == IDLE_STATUS

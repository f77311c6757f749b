"""Tests of the pure protocol codec's FrameDecoder on a byte stream: frames split anyhow,
resynchronisation after garbage and damage (with docs/protocol.md's examples), the idle
rule for a partial frame, and hypothesis over streams of messages and garbage.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball.contract import codec as protocol
from pytest_smartball.contract.codec import (
    MAX_DATA_CHUNK,
    MAX_PAYLOAD,
    SOF,
    CmdInfo,
    CmdOtaAbort,
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaStart,
    CmdOtaStatus,
    Frame,
    FrameDecoder,
    MsgError,
    MsgInfo,
    MsgOtaAck,
    MsgOtaDone,
    MsgOtaProgress,
    MsgOtaReady,
    MsgOtaStatus,
    MsgType,
    ProtocolError,
    encode,
    parse_message,
)

from .protocol_samples import SAMPLES, U8, U16, U32

# --- streaming -------------------------------------------------------------------------


def stream_of_many_frames() -> tuple[bytes, list[protocol.Message]]:
    rng = random.Random(1)
    msgs: list[protocol.Message] = list(SAMPLES)
    for i in range(60):
        chunk = rng.randbytes(rng.randint(1, MAX_DATA_CHUNK))
        msgs.append(CmdOtaData(offset=i * 1000, data=chunk))
        msgs.append(MsgOtaAck(next_expected_offset=rng.getrandbits(32)))
    return b"".join(encode(m) for m in msgs), msgs


def feed_in_pieces(data: bytes, sizes: list[int]) -> tuple[list[Frame], FrameDecoder]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    pos = 0
    for size in sizes:
        frames += decoder.feed(data[pos : pos + size])
        pos += size
    frames += decoder.feed(data[pos:])
    return frames, decoder


def random_sizes(rng: random.Random, total: int, max_piece: int) -> list[int]:
    sizes = []
    while total > 0:
        size = min(total, rng.randint(0, max_piece))
        sizes.append(size)
        total -= size
    return sizes


def test_stream_every_split_gives_the_same_frames() -> None:
    data, msgs = stream_of_many_frames()
    rng = random.Random(20240601)
    splits = {
        "all at once": [len(data)],
        "one byte at a time": [1] * len(data),
        "empty feeds in between": [0, 1, 0, 0, 2, 0] * 10,
        **{f"random {n}": random_sizes(rng, len(data), n) for n in (3, 20, 244, 1100)},
    }
    for name, sizes in splits.items():
        frames, decoder = feed_in_pieces(data, sizes)
        assert [parse_message(f) for f in frames] == msgs, name
        assert decoder.buffered == 0, name
        assert decoder.stats == protocol.DecoderStats(frames=len(msgs)), name


def test_every_two_piece_split_of_a_frame_pair() -> None:
    data = encode(CmdOtaStart(10, 0x8EC580C0, 4)) + encode(MsgOtaAck(8))
    for cut in range(len(data) + 1):
        frames, decoder = feed_in_pieces(data, [cut])
        assert [parse_message(f) for f in frames] == [CmdOtaStart(10, 0x8EC580C0, 4), MsgOtaAck(8)]
        assert decoder.stats.dropped_bytes == 0


def test_partial_frame_waits_in_the_buffer() -> None:
    frame = encode(MsgOtaDone(crc32=1))
    decoder = FrameDecoder()
    for i, byte in enumerate(frame[:-1], start=1):
        assert decoder.feed(bytes([byte])) == []
        assert decoder.buffered == i
    assert decoder.feed(frame[-1:]) == [Frame(MsgType.MSG_OTA_DONE, (1).to_bytes(4, "little"))]
    assert decoder.buffered == 0


# --- resynchronisation -----------------------------------------------------------------


def test_garbage_before_sof_is_dropped() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(b"\x00\xff\x13garbage" + encode(CmdInfo()) + b"\x01\x02")
    assert frames == [Frame(MsgType.CMD_INFO, b"")]
    assert decoder.stats.dropped_bytes == 10 + 2
    assert decoder.stats.bad_crc == decoder.stats.bad_length == 0
    assert decoder.buffered == 0


def test_doc_resync_example() -> None:
    garbage, corrupted, good = "00 ff 13", "a5 12 00 00 9f e0", "a5 01 00 00 ac fb"
    stream = bytes.fromhex(" ".join((garbage, corrupted, good)))
    for sizes in ([len(stream)], [1] * len(stream), [4, 5, 6]):
        frames, decoder = feed_in_pieces(stream, sizes)
        assert frames == [Frame(MsgType.CMD_INFO, b"")]
        assert decoder.stats == protocol.DecoderStats(
            frames=1, dropped_bytes=9, bad_crc=1, bad_length=0
        )
        assert decoder.buffered == 0


def test_doc_bad_length_example() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(bytes.fromhex("a5 93 ff 7f a5 93 04 00 08 00 00 00 ac 36"))
    assert [parse_message(f) for f in frames] == [MsgOtaAck(next_expected_offset=8)]
    assert decoder.stats == protocol.DecoderStats(
        frames=1, dropped_bytes=4, bad_crc=0, bad_length=1
    )


@pytest.mark.parametrize("position", ["crc_low", "crc_high", "payload", "type", "length"])
def test_flipped_byte_costs_one_frame(position: str) -> None:
    first, victim, last = MsgOtaAck(1), MsgOtaStatus(2, 3, 4, 5), MsgOtaDone(6)
    bad = bytearray(encode(victim))
    index = {"crc_low": -2, "crc_high": -1, "payload": 6, "type": 1, "length": 2}[position]
    bad[index] ^= 0x01
    decoder = FrameDecoder()
    frames = decoder.feed(encode(first) + bytes(bad) + encode(last))
    if position == "length":
        # The length now reads 12, so the decoder checks the last payload byte and the first
        # CRC byte as the CRC; that fails, and the rescan finds the next frame.
        assert bad[2] == 12
    assert [parse_message(f) for f in frames] == [first, last]
    assert decoder.stats.bad_crc == 1
    assert decoder.stats.bad_length == 0
    assert decoder.stats.dropped_bytes == len(bad)
    assert decoder.stats.frames == 2
    assert decoder.buffered == 0


def test_length_over_512_drops_only_the_sof() -> None:
    decoder = FrameDecoder()
    bad = bytes([SOF, MsgType.CMD_OTA_DATA]) + (MAX_PAYLOAD + 1).to_bytes(2, "little")
    frames = decoder.feed(bad + encode(CmdOtaFinish()))
    assert frames == [Frame(MsgType.CMD_OTA_FINISH, b"")]
    assert decoder.stats.bad_length == 1
    assert decoder.stats.bad_crc == 0
    assert decoder.stats.dropped_bytes == 4  # the SOF, then the three header bytes as garbage


def test_length_over_512_hiding_a_frame_in_its_header() -> None:
    # "a5 | a5 93 04 00 ...": the stray SOF reads type 0xA5 and length 0x0493 (1171). Only
    # that one byte is dropped, so the real frame starting at the next byte is found.
    inner = encode(MsgOtaAck(next_expected_offset=8))
    decoder = FrameDecoder()
    frames = decoder.feed(bytes([SOF]) + inner)
    assert [parse_message(f) for f in frames] == [MsgOtaAck(next_expected_offset=8)]
    assert decoder.stats == protocol.DecoderStats(frames=1, dropped_bytes=1, bad_length=1)


def test_stray_sof_in_garbage() -> None:
    # A stray 0xA5 whose "length" is 0 consumes two bytes of the next frame as its CRC,
    # fails the check, and the real frame is found on the rescan.
    good = encode(MsgOtaReady(max_chunk=234, window=16))
    decoder = FrameDecoder()
    frames = decoder.feed(b"\x42\xa5\x01\x00\x00" + good)
    assert [parse_message(f) for f in frames] == [MsgOtaReady(max_chunk=234, window=16)]
    assert decoder.stats.bad_crc == 1
    assert decoder.stats.dropped_bytes == 5
    assert decoder.buffered == 0


def test_stray_sof_with_plausible_length_holds_frames_back() -> None:
    # Documented limitation: "a5 00 a5 01" reads as a 421-byte frame; the frames behind it
    # come out once enough bytes have arrived for the CRC check to fail.
    decoder = FrameDecoder()
    info = encode(CmdInfo())
    assert decoder.feed(b"\x42\xa5\x00" + info) == []
    assert decoder.buffered == 2 + len(info)
    filler = [CmdOtaStatus()] * 80  # 480 bytes
    frames = decoder.feed(b"".join(encode(m) for m in filler))
    assert [parse_message(f) for f in frames] == [CmdInfo(), *filler]
    assert decoder.stats.bad_crc == 1
    assert decoder.stats.dropped_bytes == 3
    assert decoder.buffered == 0


def test_truncated_frame_followed_by_good_frames() -> None:
    truncated = encode(CmdOtaStart(323194, 0xDEADBEEF, 234))[:7]  # header says 10 more bytes
    good: list[protocol.Message] = [CmdOtaStatus(), CmdInfo(), CmdOtaFinish()]
    decoder = FrameDecoder()
    # Not yet decidable: 7 + 6 bytes < the 16 the truncated header announces.
    assert decoder.feed(truncated + encode(good[0])) == []
    frames = decoder.feed(b"".join(encode(m) for m in good[1:]))
    assert [parse_message(f) for f in frames] == good
    assert decoder.stats.bad_crc == 1
    assert decoder.stats.dropped_bytes == len(truncated)
    assert decoder.buffered == 0


def test_reset_drops_and_counts_a_partial_frame() -> None:
    decoder = FrameDecoder()
    frame = encode(MsgOtaStatus(2, 46800, 323194, 0xDEADBEEF))
    assert decoder.feed(frame[:9]) == []
    assert decoder.buffered == 9
    decoder.reset()
    assert decoder.buffered == 0
    assert decoder.stats.dropped_bytes == 9
    # The tail that arrives on the new connection is garbage; the next frame is good.
    assert decoder.feed(frame[9:] + frame) == [Frame(frame[1], frame[4:-2])]
    assert decoder.stats.frames == 1
    assert decoder.buffered == 0


# --- the idle rule: a partial frame is discarded after 1.0 s without a byte -------------------


def test_a_partial_frame_idle_for_a_second_is_discarded() -> None:
    decoder = FrameDecoder()
    partial = bytes.fromhex("a5 11 08 00 00")  # a DATA header announcing 8 bytes
    assert decoder.feed(partial, now=10.0) == []
    # kept, it would swallow the INFO (14 bytes needed, 11 there): nothing comes out
    frames = decoder.feed(encode(CmdInfo()), now=11.0)
    assert frames == [Frame(MsgType.CMD_INFO, b"")]
    assert decoder.stats.dropped_bytes == len(partial)
    assert decoder.buffered == 0


@pytest.mark.parametrize("gap", [0.5, 0.999999])
def test_a_partial_frame_younger_than_a_second_is_kept(gap: float) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(bytes.fromhex("a5 11 08 00 00"), now=10.0) == []
    assert decoder.feed(encode(CmdInfo()), now=10.0 + gap) == []
    assert decoder.buffered == 11 and decoder.stats.dropped_bytes == 0


def test_the_idle_rule_measures_the_gap_since_the_last_byte() -> None:
    decoder = FrameDecoder()
    frame = encode(MsgOtaStatus(2, 46800, 323194, 0xDEADBEEF))
    # a frame trickling in over 3 s, never a second without a byte, is kept whole
    for i, byte in enumerate(frame[:-1]):
        assert decoder.feed(bytes([byte]), now=0.15 * i) == []
    assert decoder.feed(frame[-1:], now=0.15 * len(frame)) == [Frame(frame[1], frame[4:-2])]
    assert decoder.stats.dropped_bytes == 0


def test_without_times_the_decoder_keeps_a_partial_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(bytes.fromhex("a5 11 08 00 00"))
    assert decoder.feed(encode(CmdInfo())) == []
    assert decoder.buffered == 11


def test_reset_of_an_empty_decoder_counts_nothing() -> None:
    decoder = FrameDecoder()
    decoder.reset()
    assert decoder.stats == protocol.DecoderStats()


# --- properties ------------------------------------------------------------------------

u8 = st.integers(0, U8)
u16 = st.integers(0, U16)
u32 = st.integers(0, U32)
messages = st.one_of(
    st.just(CmdInfo()),
    st.builds(CmdOtaStart, u32, u32, u16),
    st.builds(CmdOtaData, u32, st.binary(max_size=MAX_DATA_CHUNK)),
    st.just(CmdOtaStatus()),
    st.just(CmdOtaAbort()),
    st.just(CmdOtaFinish()),
    st.builds(MsgInfo, u8, u8, u8, u8, u32, u32, u32),
    st.builds(MsgOtaReady, u16, u16),
    st.builds(MsgOtaProgress, u8, u32, u32),
    st.builds(MsgOtaStatus, u8, u32, u32, u32),
    st.builds(MsgOtaAck, u32),
    st.builds(MsgOtaDone, u32),
    st.builds(MsgError, u8, u8, st.text(max_size=120)),
)
garbage = st.binary(max_size=40).map(lambda b: b.replace(bytes([SOF]), b""))


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(garbage, messages), max_size=12),
    tail=garbage,
    seed=st.integers(0, 2**32 - 1),
)
def test_messages_survive_garbage_without_sof(
    items: list[tuple[bytes, protocol.Message]], tail: bytes, seed: int
) -> None:
    stream = b"".join(junk + encode(msg) for junk, msg in items) + tail
    sizes = random_sizes(random.Random(seed), len(stream), 64)
    frames, decoder = feed_in_pieces(stream, sizes)
    assert [parse_message(f) for f in frames] == [msg for _, msg in items]
    assert decoder.stats.dropped_bytes == sum(len(junk) for junk, _ in items) + len(tail)
    assert decoder.stats.bad_crc == decoder.stats.bad_length == 0
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.binary(max_size=600), max_size=8))
def test_arbitrary_bytes_never_raise(pieces: list[bytes]) -> None:
    decoder = FrameDecoder()
    total = sum(len(p) for p in pieces)
    frames: list[Frame] = []
    for piece in pieces:
        frames += decoder.feed(piece)
        assert decoder.buffered <= MAX_PAYLOAD + protocol.FRAME_OVERHEAD - 1
    for frame in frames:
        assert len(frame.payload) <= MAX_PAYLOAD
        with contextlib.suppress(ProtocolError):
            parse_message(frame)
    consumed = sum(len(f.payload) + protocol.FRAME_OVERHEAD for f in frames)
    assert consumed + decoder.stats.dropped_bytes + decoder.buffered == total
    decoder.reset()
    assert consumed + decoder.stats.dropped_bytes == total

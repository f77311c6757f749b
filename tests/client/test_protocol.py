"""Tests of the pure protocol codec, and of the worked examples in docs/protocol.md."""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable
from pathlib import Path

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
    CmdOtaConfirm,
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaManifest,
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
    crc16_ccitt_false,
    crc32,
    decode,
    encode,
    encode_data_frame,
    encode_frame,
    parse_message,
)

DOC = Path(__file__).parents[2] / "docs/protocol.md"
FRAME_BLOCK = re.compile(r"^[ \t]*```frame[ \t]*\n(.*?)\n[ \t]*```[ \t]*$", re.M | re.S)

U8, U16, U32 = 0xFF, 0xFFFF, 0xFFFF_FFFF

#: One or more instances of every message type, with boundary values.
SAMPLES: list[protocol.Message] = [
    CmdInfo(),
    CmdOtaStart(image_size=323194, image_crc32=0xDEADBEEF, chunk_size=234),
    CmdOtaStart(image_size=U32, image_crc32=U32, chunk_size=U16),
    CmdOtaStart(image_size=0, image_crc32=0, chunk_size=0),
    CmdOtaData(offset=0, data=b"\x00"),
    CmdOtaData(offset=U32, data=bytes(i & 0xFF for i in range(MAX_PAYLOAD - 4))),
    CmdOtaData(offset=1234, data=b""),
    CmdOtaData(offset=7, data=bytes([SOF]) * 20),
    CmdOtaStatus(),
    CmdOtaAbort(),
    CmdOtaFinish(),
    CmdOtaManifest(manifest=bytes(range(56)), signature=bytes(range(64, 128))),
    CmdOtaManifest(manifest=bytes([SOF]) * 56, signature=b"\xff" * 64),
    CmdOtaConfirm(),
    MsgInfo(1, 1, 4, 2, 301568, 0x1C291CA3, 491520),
    MsgInfo(U8, U8, U8, U8, U32, U32, U32),
    MsgInfo(1, 2, 0, 1, 10000, 0x1C291CA3, 491520, 2, 5, 1, 0xA1B2C3D4),
    MsgInfo(U8, U8, U8, U8, U32, U32, U32, U32, U32, U8, U32),
    MsgOtaReady(max_chunk=234, window=16),
    MsgOtaReady(max_chunk=U16, window=U16),
    MsgOtaProgress(phase=1, done=4096, total=323584),
    MsgOtaProgress(phase=2, done=U32, total=U32),
    MsgOtaStatus(state=0, next_expected_offset=0, image_size=0, image_crc32=0),
    MsgOtaStatus(state=5, next_expected_offset=U32, image_size=U32, image_crc32=U32),
    MsgOtaAck(next_expected_offset=U32),
    MsgOtaDone(crc32=0xCBF43926),
    MsgError(code=2, text="bad state"),
    MsgError(code=U8, text=""),
    MsgError(code=8, text="Größe ≠ 0 — 🏐"),
    MsgError(code=1, command=0x11, text="x" * (MAX_PAYLOAD - 2)),
]


def frame_blocks() -> list[tuple[str, str]]:
    blocks = []
    for body in FRAME_BLOCK.findall(DOC.read_text(encoding="utf-8")):
        lines = [line.strip() for line in body.strip().splitlines()]
        assert len(lines) == 1, f"a frame block must hold one line: {body!r}"
        left, sep, right = lines[0].rpartition(" = ")
        assert sep, f"no ' = ' in frame block: {lines[0]!r}"
        blocks.append((left, right))
    return blocks


# --- the document's worked examples ----------------------------------------------------


def test_doc_frame_examples_match_the_codec() -> None:
    blocks = frame_blocks()
    assert len(blocks) >= 13
    namespace: dict[str, object] = {}
    exec("from pytest_smartball.contract.codec import *", namespace)
    seen = set()
    for left, right in blocks:
        msg = eval(left, namespace)  # the document is part of this repository
        assert encode(msg).hex(" ") == right, left
        assert decode(bytes.fromhex(right)) == msg, left
        seen.add(msg.TYPE)
    assert seen == set(MsgType), f"no example for {set(MsgType) - seen}"


# --- checksums -------------------------------------------------------------------------


def test_crc_check_values() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc32(b"123456789") == 0xCBF43926
    assert crc16_ccitt_false(b"") == 0xFFFF
    assert crc32(b"") == 0


def test_frame_layout() -> None:
    frame = encode(CmdOtaStart(image_size=0x04030201, image_crc32=0x08070605, chunk_size=0x0A09))
    assert frame[0] == SOF
    assert frame[1] == MsgType.CMD_OTA_START
    assert frame[2:4] == (10).to_bytes(2, "little")
    assert frame[4:14] == bytes(range(1, 11))
    assert frame[14:] == crc16_ccitt_false(frame[1:14]).to_bytes(2, "little")


# --- encoding and decoding single messages ---------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: protocol.Message) -> None:
    frame = encode(msg)
    assert decode(frame) == msg
    assert parse_message(Frame(frame[1], frame[4:-2])) == msg
    assert len(frame) == len(protocol.encode_payload(msg)) + protocol.FRAME_OVERHEAD


def test_every_message_type_is_sampled() -> None:
    assert {m.TYPE for m in SAMPLES} == set(MsgType)


def test_largest_data_frame() -> None:
    # The largest chunk a device grants: a whole DATA frame then fits one ATT write, whose
    # value is at most 512 bytes (4 + 500 + 6 = 510).
    msg = CmdOtaData(offset=U32, data=bytes(MAX_DATA_CHUNK))
    frame = encode(msg)
    assert MAX_DATA_CHUNK == 500
    assert len(frame) == 510 <= 512
    assert frame == encode_data_frame(U32, bytes(MAX_DATA_CHUNK))
    assert decode(frame) == msg
    # The codec still frames any payload up to 512 bytes (a device refuses such a chunk).
    biggest = encode(CmdOtaData(offset=U32, data=bytes(MAX_PAYLOAD - 4)))
    assert len(biggest) == MAX_PAYLOAD + protocol.FRAME_OVERHEAD == protocol.MAX_FRAME == 518


@pytest.mark.parametrize(
    ("write_size", "chunk"),
    [(20, 8), (23, 12), (244, 232), (245, 232), (248, 236), (510, 500), (512, 500), (1000, 500)],
)
def test_the_hosts_chunk_fills_one_write_in_whole_words(write_size: int, chunk: int) -> None:
    assert protocol.max_data_chunk(write_size) == chunk
    assert chunk % 4 == 0 and chunk + 10 <= write_size


@pytest.mark.parametrize(
    ("asked", "granted"), [(4, 4), (5, 4), (7, 4), (232, 232), (234, 232), (500, 500), (508, 500)]
)
def test_the_devices_max_chunk_is_whole_words_up_to_500(asked: int, granted: int) -> None:
    assert protocol.granted_max_chunk(asked) == granted


def test_data_fast_path_matches_encode() -> None:
    for offset, data in [(0, b"\x01"), (46800, b"\xde\xad\xbe\xef\x00\xff"), (U32, b"")]:
        assert encode_data_frame(offset, data) == encode(CmdOtaData(offset, data))


def test_error_text_is_utf8() -> None:
    frame = encode(MsgError(code=5, command=0x14, text="é"))
    assert frame[4:-2] == b"\x05\x14\xc3\xa9"


def test_invalid_utf8_error_text_decodes_leniently() -> None:
    msg = decode(encode_frame(MsgType.MSG_ERROR, b"\x06\x11bad \xff flash"))
    assert msg == MsgError(code=6, command=0x11, text="bad \ufffd flash")


def test_payload_over_512_bytes_is_refused() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(MsgType.CMD_OTA_DATA, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError):
        encode(CmdOtaData(offset=0, data=bytes(MAX_PAYLOAD - 3)))
    with pytest.raises(ProtocolError):
        encode(MsgError(code=1, text="x" * MAX_PAYLOAD))
    with pytest.raises(ProtocolError):
        encode_data_frame(0, bytes(MAX_PAYLOAD - 3))
    assert len(encode_frame(MsgType.CMD_OTA_DATA, bytes(MAX_PAYLOAD))) == 518


def test_out_of_range_field_is_refused() -> None:
    with pytest.raises(ProtocolError):
        encode(CmdOtaStart(image_size=U32 + 1, image_crc32=0, chunk_size=1))
    with pytest.raises(ProtocolError):
        encode(MsgOtaReady(max_chunk=U16 + 1, window=1))
    with pytest.raises(ProtocolError):
        encode(MsgOtaStatus(state=-1, next_expected_offset=0, image_size=0, image_crc32=0))


@pytest.mark.parametrize(
    "build",
    [
        lambda: encode(CmdOtaData(offset=U32 + 1, data=b"x")),
        lambda: encode(CmdOtaData(offset=-1, data=b"x")),
        lambda: encode(MsgError(code=U8 + 1, text="")),
        lambda: encode_data_frame(U32 + 1, b"x"),
    ],
    ids=["data-offset-too-big", "data-offset-negative", "error-code-too-big", "fast-path"],
)
def test_out_of_range_variable_message_head_is_refused(build: Callable[[], bytes]) -> None:
    with pytest.raises(ProtocolError):
        build()


def test_decode_wants_exactly_one_frame() -> None:
    good = encode(CmdInfo())
    for bad in [b"", good[:-1], good + good, b"\x00" + good, good + b"\x00", good + b"\xa5"]:
        with pytest.raises(ProtocolError):
            decode(bad)
    corrupted = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(ProtocolError):
        decode(corrupted)


# --- parse_message errors --------------------------------------------------------------


@pytest.mark.parametrize("msg_type", [0x00, 0x02, 0x17, 0x80, 0x95, 0xFF])
def test_parse_unknown_type(msg_type: int) -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        parse_message(Frame(msg_type, b""))


@pytest.mark.parametrize(
    ("msg_type", "size"),
    [
        (MsgType.CMD_OTA_START, 9),
        (MsgType.MSG_INFO, 15),
        (MsgType.MSG_OTA_READY, 3),
        (MsgType.MSG_OTA_PROGRESS, 8),
        (MsgType.MSG_OTA_STATUS, 12),
        (MsgType.MSG_OTA_ACK, 0),
        (MsgType.MSG_OTA_DONE, 3),
    ],
)
def test_parse_too_short_fixed_message(msg_type: MsgType, size: int) -> None:
    with pytest.raises(ProtocolError, match="needs at least"):
        parse_message(Frame(msg_type, bytes(size)))
    # The same mistake arriving as a well-formed frame decodes as a frame but not a message.
    with pytest.raises(ProtocolError):
        decode(encode_frame(msg_type, bytes(size)))


@pytest.mark.parametrize(
    ("msg", "extra"),
    [
        (CmdInfo(), 1),
        (CmdOtaStatus(), 4),
        (CmdOtaStart(10, 0x8EC580C0, 4, flags=1), 3),
        (MsgInfo(1, 1, 4, 2, 301568, 0x1C291CA3, 491520, capabilities=1), 1),
        (MsgInfo(1, 1, 4, 2, 301568, 0x1C291CA3, 491520, 3, 7, 1, 0xA1B2C3D4), 8),
        (CmdOtaManifest(bytes(range(56)), bytes(range(64))), 4),
        (CmdOtaConfirm(), 2),
        (MsgOtaStatus(2, 46800, 323194, 0xDEADBEEF), 2),
        (MsgOtaDone(0xDEADBEEF), 1),
    ],
)
def test_a_newer_peers_trailing_bytes_are_ignored(msg: protocol.Message, extra: int) -> None:
    payload = protocol.encode_payload(msg) + bytes(range(1, extra + 1))
    assert parse_message(Frame(msg.TYPE, payload)) == msg


def test_optional_fields_are_sent_only_when_set_and_default_when_absent() -> None:
    older_info = MsgInfo(1, 1, 4, 2, 301568, 0x1C291CA3, 491520)
    assert len(protocol.encode_payload(older_info)) == 16  # a device without capabilities
    with_caps = MsgInfo(1, 1, 4, 2, 301568, 0x1C291CA3, 491520, capabilities=1)
    assert len(protocol.encode_payload(with_caps)) == 20
    assert len(protocol.encode_payload(CmdOtaStart(10, 1, 4))) == 10
    assert len(protocol.encode_payload(CmdOtaStart(10, 1, 4, flags=1))) == 14
    assert parse_message(Frame(MsgType.MSG_INFO, protocol.encode_payload(older_info))) == older_info


@pytest.mark.parametrize(
    ("msg_type", "size"),
    [(MsgType.CMD_OTA_DATA, 0), (MsgType.CMD_OTA_DATA, 3), (MsgType.MSG_ERROR, 1)],
)
def test_parse_too_short_variable_message(msg_type: MsgType, size: int) -> None:
    with pytest.raises(ProtocolError, match="needs at least"):
        parse_message(Frame(msg_type, bytes(size)))


def test_parse_shortest_variable_messages() -> None:
    assert parse_message(Frame(MsgType.CMD_OTA_DATA, bytes(4))) == CmdOtaData(0, b"")
    assert parse_message(Frame(MsgType.MSG_ERROR, b"\x07\x10")) == MsgError(7, 0x10, "")


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

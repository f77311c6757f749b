"""Tests of the pure protocol codec on single frames and messages: the worked examples in
docs/protocol.md, the checksums, encoding and decoding, and what parse_message refuses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_smartball.contract import codec as protocol
from pytest_smartball.contract.codec import (
    MAX_DATA_CHUNK,
    MAX_PAYLOAD,
    SOF,
    CmdInfo,
    CmdOtaConfirm,
    CmdOtaData,
    CmdOtaManifest,
    CmdOtaStart,
    CmdOtaStatus,
    Frame,
    MsgError,
    MsgInfo,
    MsgOtaDone,
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

from .protocol_samples import SAMPLES, U8, U16, U32

DOC = Path(__file__).parents[2] / "docs/protocol.md"
FRAME_BLOCK = re.compile(r"^[ \t]*```frame[ \t]*\n(.*?)\n[ \t]*```[ \t]*$", re.M | re.S)


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

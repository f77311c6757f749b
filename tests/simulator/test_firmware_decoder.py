"""SmartBallFirmware, driven directly: the device's frame decoder (unknown commands, short
or damaged frames, trailing bytes from a newer host, frames split across receives, partial
frames at silence and at a lost link). Driven through tests/firmware_harness.py on
looptime's virtual clock.
"""

from __future__ import annotations

import asyncio

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import (
    CmdInfo,
    CmdOtaAbort,
    CmdOtaData,
    CmdOtaStatus,
    ErrorCode,
    MsgError,
    MsgInfo,
    MsgOtaAck,
    MsgOtaProgress,
    MsgOtaReady,
    MsgOtaStatus,
    OtaState,
)
from smartball_sim.firmware.model import (
    PAGE_SIZE,
)

from ..firmware_harness import (
    CHUNK,
    NEW_IMAGE,
    NEW_PAGES,
    PAGE_S,
    Harness,
    start_for,
)

# Virtual time: a 40 s erase costs milliseconds, and timings are exact.
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


# --- the device's decoder ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg_type", [0x00, 0x02, 0x0F, 0x15, 0x7F, 0x80, 0x81, 0x90, 0x92, 0xEE, 0xFF]
)
async def test_unknown_command(msg_type: int) -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.fw.receive(p.encode_frame(msg_type, b"\x00" * 4))
    (msg,) = h.take()
    assert isinstance(msg, MsgError)
    assert (msg.code, msg.command) == (ErrorCode.UNKNOWN_COMMAND, msg_type)
    assert h.fw.state == OtaState.RECEIVING


@pytest.mark.parametrize(
    ("msg_type", "payload"),
    [
        (p.MsgType.CMD_OTA_START, bytes(9)),
        (p.MsgType.CMD_OTA_START, bytes(1)),
        (p.MsgType.CMD_OTA_DATA, b""),
        (p.MsgType.CMD_OTA_DATA, b"\x00\x00\x00"),
    ],
    ids=lambda v: v.name if isinstance(v, p.MsgType) else f"{len(v)}B",
)
async def test_good_crc_too_short_is_bad_frame(msg_type: int, payload: bytes) -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.send_image(NEW_IMAGE[:300])
    h.take()
    h.fw.receive(p.encode_frame(msg_type, payload))
    (msg,) = h.take()
    assert isinstance(msg, MsgError) and (msg.code, msg.command) == (ErrorCode.BAD_FRAME, msg_type)
    assert h.status() == MsgOtaStatus(OtaState.RECEIVING, 300, len(NEW_IMAGE), p.crc32(NEW_IMAGE))


async def test_commands_with_trailing_bytes_from_a_newer_host_are_understood() -> None:
    h = Harness()
    h.fw.receive(p.encode_frame(p.MsgType.CMD_INFO, b"\x01\x02"))
    assert isinstance(h.take()[0], MsgInfo)
    start = p.encode_payload(start_for(NEW_IMAGE, flags=0x80000001)) + b"\x09" * 5
    h.fw.receive(p.encode_frame(p.MsgType.CMD_OTA_START, start))  # unknown flag bits too
    await asyncio.sleep(1)
    assert isinstance(h.take()[-1], MsgOtaReady)


async def test_bad_crc_frame_is_dropped_silently_and_counted() -> None:
    h = Harness()
    frame = bytearray(p.encode(CmdOtaAbort()))
    frame[-1] ^= 0x01
    h.fw.receive(bytes(frame))
    assert h.take() == []
    assert h.fw.decoder_stats.bad_crc == 1
    assert h.info().protocol_version == 1


async def test_a_partial_frame_is_discarded_after_a_second_of_silence() -> None:
    h = Harness()
    h.fw.receive(bytes.fromhex("a5 11 08 00 00"))  # a DATA header announcing 8 bytes
    await asyncio.sleep(0.5)
    h.fw.receive(p.encode(CmdInfo())[:3])
    assert h.take() == []  # within the second: still part of the partial frame
    await asyncio.sleep(1.5)
    h.fw.receive(p.encode(CmdInfo()))
    assert [type(m) for m in h.take()] == [MsgInfo]
    assert h.fw.decoder_stats.dropped_bytes == 8


async def test_frame_split_across_many_receive_calls() -> None:
    h = Harness()
    stream = p.encode(start_for(NEW_IMAGE)) + p.encode(CmdOtaStatus())
    for byte in stream:
        h.fw.receive(bytes([byte]))
    assert h.take() == []  # the STATUS waits for the first page's erase
    await asyncio.sleep(PAGE_S)
    assert h.take() == [
        MsgOtaProgress(1, PAGE_SIZE, NEW_PAGES * PAGE_SIZE),
        MsgOtaStatus(OtaState.ERASING, 0, len(NEW_IMAGE), p.crc32(NEW_IMAGE)),
    ]
    await asyncio.sleep(1)
    assert isinstance(h.take()[-1], MsgOtaReady)
    data = p.encode(CmdOtaData(0, NEW_IMAGE[:CHUNK]))
    for i in range(0, len(data), 3):
        h.fw.receive(data[i : i + 3])
    assert h.status().next_expected_offset == CHUNK
    h.take()
    h.fw.receive(p.encode(CmdInfo()) + p.encode(CmdOtaStatus()) + p.encode(CmdInfo()))
    assert [type(m) for m in h.take()] == [MsgInfo, MsgOtaStatus, MsgOtaAck, MsgInfo]


async def test_link_lost_discards_a_partial_frame_and_keeps_the_session() -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.send_image(NEW_IMAGE[:200])
    h.take()
    frame = p.encode(CmdOtaData(200, NEW_IMAGE[200:300]))
    h.fw.receive(frame[:50])
    h.fw.link_lost()
    assert h.fw.decoder_stats.dropped_bytes == 50
    h.fw.receive(frame[50:])  # the tail alone is garbage now
    assert h.take() == []
    assert h.status() == MsgOtaStatus(OtaState.RECEIVING, 200, len(NEW_IMAGE), p.crc32(NEW_IMAGE))


async def test_link_lost_during_erase_does_not_stop_it() -> None:
    h = Harness()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(PAGE_S * 1.5)
    h.fw.link_lost()
    await asyncio.sleep(PAGE_S * NEW_PAGES)
    assert h.fw.state == OtaState.RECEIVING
    assert isinstance(h.take()[-1], MsgOtaReady)

"""Protocol behaviour every SmartBall must show, simulated or real."""

from __future__ import annotations

import random

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink

from .helpers import send_chunks, start_session

pytestmark = pytest.mark.asyncio

SMALL_IMAGE = random.Random(7).randbytes(9_000)  # three pages, several chunks


async def test_info_answers(nus: NusLink) -> None:
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo)
    assert info.protocol_version == p.PROTOCOL_VERSION
    assert 0 < info.active_image_size <= 1024 * 1024
    assert info.staging_capacity >= 64 * 1024


async def test_status_when_idle(nus: NusLink) -> None:
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
    assert status == p.MsgOtaStatus(p.OtaState.IDLE, 0, 0, 0)


async def test_abort_mid_transfer_keeps_old_image(nus: NusLink) -> None:
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    ready = await start_session(nus, SMALL_IMAGE)
    offset = await send_chunks(nus, SMALL_IMAGE, ready, end=4_000)
    assert 0 < offset < len(SMALL_IMAGE)
    reply = await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    assert isinstance(reply, p.MsgOtaStatus) and reply.state == p.OtaState.IDLE, reply
    assert await nus.request(p.CmdInfo(), (p.MsgInfo,)) == before


async def test_wrong_crc_is_refused_at_finish(nus: NusLink) -> None:
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    wrong_crc = p.crc32(SMALL_IMAGE) ^ 0x1
    ready = await start_session(nus, SMALL_IMAGE, crc32=wrong_crc)
    assert await send_chunks(nus, SMALL_IMAGE, ready) == len(SMALL_IMAGE)
    reply = await nus.request(p.CmdOtaFinish(), (p.MsgOtaDone,), timeout=15)
    assert isinstance(reply, p.MsgError) and reply.code == p.ErrorCode.CRC_MISMATCH, reply
    assert nus.is_connected, "a refused image must not reset the device"
    assert await nus.request(p.CmdInfo(), (p.MsgInfo,)) == before


async def test_data_at_wrong_offset_is_refused_without_corruption(
    nus: NusLink, firmware_image: FirmwareImage
) -> None:
    # This test completes an update, so it sends the release image (--firmware), never
    # random bytes: a real board would boot what it verified. The plugin restores the
    # baseline afterwards on hardware.
    image = firmware_image.data
    ready = await start_session(nus, image)
    chunk = min(ready.max_chunk, 100)
    await nus.send(p.CmdOtaData(0, image[:chunk]))
    # A chunk from further on, as after a lost write: dropped, answered with STATUS.
    await nus.send(p.CmdOtaData(3 * chunk, image[3 * chunk : 4 * chunk]))
    status = await nus.wait_for((p.MsgOtaStatus, p.MsgError), 5.0, "MsgOtaStatus")
    assert isinstance(status, p.MsgOtaStatus), status
    assert status.state == p.OtaState.RECEIVING
    assert status.next_expected_offset == chunk
    # Resuming from the device's offset gives an image that verifies.
    assert await send_chunks(nus, image, ready, start=chunk) == len(image)
    await nus.send(p.CmdOtaFinish())
    done = await nus.wait_for((p.MsgOtaDone, p.MsgError), 15, "MsgOtaDone")
    assert done == p.MsgOtaDone(firmware_image.crc32)


async def test_an_error_for_an_earlier_command_is_not_taken_as_a_reply(nus: NusLink) -> None:
    """Found by the stateful fuzzer: a refused FINISH's MSG_ERROR was returned as the
    reply to the STATUS request that followed it."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    await nus.send(p.CmdOtaFinish())  # refused: no session
    status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
    assert status == p.MsgOtaStatus(p.OtaState.IDLE, 0, 0, 0)

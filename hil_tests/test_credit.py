"""Credit, ACK and STATUS while receiving (docs/protocol.md 7.4): a host that keeps to its
credit is never refused, STATUS says exactly what the device then accepts, the last
chunk's ACK always comes before the answer to FINISH, and an ACK promises bytes that are in
flash."""

from __future__ import annotations

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.link import NusLink

from . import conformance as c
from .conformance import CHUNK, NEAR_END, SMALL, TIMING

pytestmark = pytest.mark.asyncio

#: How long a burst of writes may take to be delivered, written and acknowledged.
BURST_S = 2.0


async def test_a_host_within_its_credit_is_never_refused(nus: NusLink) -> None:
    """A whole window of chunks written back to back, as fast as the link takes them:
    the device's receive buffer must hold them (it granted the window), so every one is
    acknowledged and none is refused with MSG_OTA_STATUS."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    ready = await c.start(nus, SMALL)
    burst = min(ready.window, len(SMALL) // CHUNK)
    for k in range(burst):
        await nus.send(p.CmdOtaData(k * CHUNK, SMALL[k * CHUNK : (k + 1) * CHUNK]))
    got = await c.collect(nus, ("MSG_OTA_ACK+",), BURST_S)
    refused = [m for m in got if not isinstance(m, p.MsgOtaAck)]
    assert refused == [], f"a burst of {burst} chunks within a window of {ready.window}: {got}"
    status = await c.ask_status(nus)
    assert status.next_expected_offset == burst * CHUNK, status
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))


async def test_status_says_what_the_device_then_accepts(nus: NusLink) -> None:
    """A STATUS right behind a burst of chunks reports every chunk the device accepted
    (written or still in its buffer); the next chunk, sent where it said, is accepted."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    ready = await c.start(nus, SMALL)
    burst = min(ready.window // 2 - 1, 6)
    for k in range(burst):
        await nus.send(p.CmdOtaData(k * CHUNK, SMALL[k * CHUNK : (k + 1) * CHUNK]))
    await nus.send(p.CmdOtaStatus())
    status = await nus.wait_for((p.MsgOtaStatus,), BURST_S, "MSG_OTA_STATUS")
    assert isinstance(status, p.MsgOtaStatus)
    assert status.next_expected_offset == burst * CHUNK, (
        f"{burst} chunks within the credit, then STATUS: it says {status} (7.1: "
        "next_expected_offset counts the bytes accepted, written or in the receive buffer)"
    )
    offset = status.next_expected_offset
    await nus.send(p.CmdOtaData(offset, SMALL[offset : offset + CHUNK]))
    got = await c.collect(nus, ("MSG_OTA_ACK?",), BURST_S)
    assert not any(isinstance(m, p.MsgOtaStatus | p.MsgError) for m in got), (
        f"the chunk at {offset}, where STATUS said, was refused: {got}"
    )
    assert (await c.ask_status(nus)).next_expected_offset == offset + CHUNK
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))


async def test_the_last_chunks_ack_comes_before_the_answer_to_finish(nus: NusLink) -> None:
    """The image's last chunk and FINISH written back to back: MSG_OTA_ACK(image_size)
    first, then the verify's answer (a wrong CRC here, so nothing is activated)."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    ready = await c.start(nus, SMALL, p.crc32(SMALL) ^ 1)
    await c.stream(nus, SMALL, ready, NEAR_END)
    await c.settle(nus)
    await nus.send(p.CmdOtaData(NEAR_END, SMALL[NEAR_END:]))
    await nus.send(p.CmdOtaFinish())
    got = await c.collect(
        nus,
        ("MSG_OTA_ACK", "MSG_ERROR:CRC_MISMATCH"),
        TIMING.ack_latency_max_s + TIMING.verify_max_s(len(SMALL)) + c.RADIO_MARGIN_S,
    )
    assert c.tokens(got) == ["MSG_OTA_ACK", "MSG_ERROR:CRC_MISMATCH"], (
        f"last chunk + FINISH: expected the ACK of the image's last byte, then the verify's "
        f"answer (7.4), got {got}"
    )
    assert got[0] == p.MsgOtaAck(len(SMALL)), got[0]


#: An ACK interval's end (16 // 2 chunks): the DATA that completes it makes flash fail.
ACK_POINT = 8 * CHUNK


@pytest.mark.faults(f"flash-fail:2@offset:{ACK_POINT}")
async def test_no_ack_promises_bytes_the_flash_lost(nus: NusLink) -> None:
    """The write of a chunk up to ACK_POINT fails twice (simulated worn flash): the device
    ends the session with FLASH_ERROR and never acknowledged bytes it could not write (an
    ACK means in flash, 7.4). Needs fault injection: simulator only."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    ready = await c.start(nus, SMALL)
    assert ready.window == 16, "the fault is placed at the end of the first ACK interval"
    for k in range(ACK_POINT // CHUNK):
        await nus.send(p.CmdOtaData(k * CHUNK, SMALL[k * CHUNK : (k + 1) * CHUNK]))
    got = await c.collect(nus, ("MSG_ERROR:FLASH_ERROR",), BURST_S)
    assert c.tokens(got)[-1:] == ["MSG_ERROR:FLASH_ERROR"], got
    acked = [m.next_expected_offset for m in got if isinstance(m, p.MsgOtaAck)]
    assert all(offset < ACK_POINT for offset in acked), (
        f"the device acknowledged {max(acked)} bytes, then its flash failed below "
        f"{ACK_POINT}: an ACK must mean the bytes are in flash"
    )

"""SmartBallFirmware, driven directly: DATA (state, length, words, offsets, the ACK interval)
and the credit that only ACKs grant (issue 17), down to a zero-latency host at full credit
(issue 10). Driven through tests/firmware_harness.py on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import (
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaStatus,
    ErrorCode,
    MsgError,
    MsgOtaAck,
    MsgOtaDone,
    MsgOtaProgress,
    MsgOtaReady,
    MsgOtaStatus,
    OtaState,
)
from smartball_sim.firmware.model import (
    FlashTimings,
    SmartBallFirmware,
)
from smartball_sim.make_image import make_image

from ..firmware_harness import (
    CHUNK,
    NEW_IMAGE,
    OLD_IMAGE,
    SLOW_FLASH,
    TIMINGS,
    Harness,
    error_code,
    start_for,
)

# Virtual time: a 40 s erase costs milliseconds, and timings are exact.
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


# --- DATA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [OtaState.IDLE, OtaState.VERIFYING, OtaState.COMPLETE, OtaState.ERROR],
    ids=lambda s: s.name,
)
async def test_data_outside_receiving_is_bad_state(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    for _ in range(3):  # every one: only ERASING is rate-limited
        assert error_code(h.ask(CmdOtaData(0, b"1234"))) == ErrorCode.BAD_STATE
    assert h.fw.state == state


@pytest.mark.parametrize("window", [1, 2, 4])
async def test_data_while_erasing_gets_rate_limited_bad_state(window: int) -> None:
    h = Harness(window=window, timings=replace(TIMINGS, erase_total_s=30.0))
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(1)  # between two pages: the CPU is free
    answered = []
    for i in range(1, 3 * window + 2):
        h.send(CmdOtaData(0, NEW_IMAGE[:CHUNK]))
        replies = [m for m in h.take() if not isinstance(m, MsgOtaProgress)]
        if replies:
            assert [error_code(m) for m in replies] == [ErrorCode.BAD_STATE]
            answered.append(i)
    assert answered == [k for k in range(1, 3 * window + 2) if (k - 1) % window == 0]


@pytest.mark.parametrize(("size", "offset"), [(0, 0), (CHUNK + 4, 0), (0, 76), (CHUNK + 4, 76)])
async def test_data_bad_length_is_bad_param(size: int, offset: int) -> None:
    h = Harness()
    await h.start_and_wait_ready()
    # checked before the offset: also at a wrong offset the answer is BAD_PARAM, not STATUS
    assert error_code(h.ask(CmdOtaData(offset, bytes(size)))) == ErrorCode.BAD_PARAM
    assert h.status().next_expected_offset == 0


@pytest.mark.parametrize("size", [1, 2, 3, 5, 99])
async def test_a_chunk_that_is_not_whole_words_is_bad_param_unless_it_ends_the_image(
    size: int,
) -> None:
    h = Harness()
    await h.start_and_wait_ready()
    assert error_code(h.ask(CmdOtaData(0, NEW_IMAGE[:size]))) == ErrorCode.BAD_PARAM
    assert h.status().next_expected_offset == 0
    # the image's last chunk may end mid-word
    image = NEW_IMAGE[: 96 + size]
    h2 = Harness()
    await h2.start_and_wait_ready(image)
    h2.send(CmdOtaData(0, image[:96]))
    assert h2.ask(CmdOtaData(96, image[96:])) == MsgOtaAck(len(image))


async def test_data_of_exactly_max_chunk_is_accepted() -> None:
    h = Harness(window=1)
    await h.start_and_wait_ready()
    assert h.ask(CmdOtaData(0, NEW_IMAGE[:CHUNK])) == MsgOtaAck(CHUNK)


@pytest.mark.parametrize("window", [1, 2, 4, 16])
async def test_wrong_offset_gets_rate_limited_status(window: int) -> None:
    h = Harness(window=window)
    await h.start_and_wait_ready()
    h.send_image(NEW_IMAGE[: 2 * CHUNK])
    h.take()
    n = 3 * window + 2
    got_status = []
    for i in range(1, n + 1):
        h.send(CmdOtaData(5 * CHUNK + i * CHUNK, NEW_IMAGE[:CHUNK]))  # always past a "lost" gap
        replies = h.take()
        if replies:
            assert replies == [
                MsgOtaStatus(OtaState.RECEIVING, 2 * CHUNK, len(NEW_IMAGE), p.crc32(NEW_IMAGE))
            ]
            got_status.append(i)
    assert got_status == [k for k in range(1, n + 1) if (k - 1) % window == 0]
    assert h.fw.staged_bytes()[2 * CHUNK :] == b"\xff" * (len(NEW_IMAGE) - 2 * CHUNK)
    # an accepted chunk restarts the count: the next reject gets a STATUS at once
    h.send(CmdOtaData(2 * CHUNK, NEW_IMAGE[2 * CHUNK : 3 * CHUNK]))
    h.take()
    h.send(CmdOtaData(9 * CHUNK, NEW_IMAGE[:CHUNK]))
    assert [type(m) for m in h.take()] == [MsgOtaStatus]


async def test_data_past_the_image_end_is_bad_offset() -> None:
    h = Harness()
    image = NEW_IMAGE[:250]
    await h.start_and_wait_ready(image)
    h.send_image(image[:200])
    h.take()
    assert error_code(h.ask(CmdOtaData(200, bytes(52)))) == ErrorCode.BAD_OFFSET
    assert h.status().next_expected_offset == 200
    # a wrong offset past the end is a wrong offset (rule 3 before rule 4): STATUS
    reply = h.ask(CmdOtaData(300, bytes(12)))
    assert isinstance(reply, MsgOtaStatus)
    assert h.ask(CmdOtaData(200, image[200:])) == MsgOtaAck(250)


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 16])
@pytest.mark.parametrize("chunks", [1, 7, 8, 17])
async def test_ack_every_half_window_and_at_the_end(window: int, chunks: int) -> None:
    chunk = 12
    image = NEW_IMAGE[: chunks * chunk - 3]  # the last chunk is short
    h = Harness(window=window)
    await h.start_and_wait_ready(image, chunk=chunk)
    interval = max(1, window // 2)
    acks = []
    for i, offset in enumerate(range(0, len(image), chunk), start=1):
        h.send(CmdOtaData(offset, image[offset : offset + chunk]))
        for m in h.take():
            assert isinstance(m, MsgOtaAck)
            acks.append((i, m.next_expected_offset))
    expected = [(i, min(i * chunk, len(image))) for i in range(1, chunks + 1) if i % interval == 0]
    if not expected or expected[-1][0] != chunks:
        expected.append((chunks, len(image)))
    assert acks == expected
    assert h.fw.staged_bytes() == image


async def test_ack_count_ignores_rejected_chunks() -> None:
    h = Harness(window=4)  # ack_interval 2
    await h.start_and_wait_ready()
    h.send(CmdOtaData(0, NEW_IMAGE[:CHUNK]))
    h.send(CmdOtaData(5 * CHUNK, NEW_IMAGE[:CHUNK]))  # rejected: STATUS
    h.send(CmdOtaData(6 * CHUNK, NEW_IMAGE[:CHUNK]))  # rejected: silent
    assert [type(m) for m in h.take()] == [MsgOtaStatus]
    h.send(CmdOtaData(CHUNK, NEW_IMAGE[CHUNK : 2 * CHUNK]))
    assert h.take() == [MsgOtaAck(2 * CHUNK)]


# --- credit: only ACKs grant it (regression, issue 17) ---------------------------------------


async def test_a_status_in_receiving_brings_an_ack_once_written() -> None:
    """Regression (issue 17): with credit granted by ACKs only, a lost ACK left a host
    without credit for good; the model answered STATUS and nothing else. Now the STATUS
    is followed by an ACK of everything accepted, once it is written."""
    h = Harness(window=4, timings=SLOW_FLASH)
    await h.start_and_wait_ready()
    h.send(CmdOtaData(0, NEW_IMAGE[:CHUNK]))  # half an interval: no ACK of its own
    t0 = h.now()
    h.send(CmdOtaStatus())
    assert h.take() == [MsgOtaStatus(OtaState.RECEIVING, CHUNK, len(NEW_IMAGE), p.crc32(NEW_IMAGE))]
    await asyncio.sleep(0.01)
    ((t_ack, ack),) = [(t, m) for t, m in h.log if isinstance(m, MsgOtaAck)]
    assert ack == MsgOtaAck(CHUNK)
    assert t_ack - t0 == pytest.approx(25 * 41e-6, abs=1e-6)  # when the chunk was written


async def test_a_resume_ready_waits_for_the_buffer_so_credit_never_doubles() -> None:
    """Regression (issue 17): a host that counted credit from a resume READY could hold
    two windows in the device (the buffered chunks and a new window). The resume READY now
    leaves once the buffer is written, so a window from it always fits."""
    h = Harness(window=4, timings=SLOW_FLASH)
    await h.start_and_wait_ready()
    for k in range(4):  # a full window, all buffered
        h.send(CmdOtaData(k * CHUNK, NEW_IMAGE[k * CHUNK : (k + 1) * CHUNK]))
    t0 = h.now()
    h.send(start_for(NEW_IMAGE))  # the host came back and resumes at once
    assert [m for m in h.take() if isinstance(m, MsgOtaReady)] == []
    await asyncio.sleep(0.05)
    (t_ready,) = [t for t, m in h.log if isinstance(m, MsgOtaReady) and t >= t0]
    assert t_ready - t0 == pytest.approx(4 * 25 * 41e-6, abs=1e-6)
    for k in range(4, 8):  # a window from READY's offset: nothing dropped
        h.send(CmdOtaData(k * CHUNK, NEW_IMAGE[k * CHUNK : (k + 1) * CHUNK]))
    assert h.fw.data.dropped_full == 0
    assert h.status().next_expected_offset == 8 * CHUNK


async def test_ack_reports_what_the_flash_has_written_when_it_has() -> None:
    h = Harness(window=4, timings=SLOW_FLASH)
    await h.start_and_wait_ready()
    t0 = h.now()
    h.send(CmdOtaData(0, NEW_IMAGE[:CHUNK]))
    h.send(CmdOtaData(CHUNK, NEW_IMAGE[CHUNK : 2 * CHUNK]))
    assert h.take() == []  # both in the buffer, nothing written yet: no ACK
    await asyncio.sleep(0.01)
    (ack,) = [(t, m) for t, m in h.log if isinstance(m, MsgOtaAck)]
    assert ack[1] == MsgOtaAck(2 * CHUNK)
    assert ack[0] - t0 == pytest.approx(2 * 25 * 41e-6, abs=1e-6)


async def test_a_full_receive_buffer_drops_data_and_the_status_rewinds_the_host() -> None:
    h = Harness(window=4, timings=replace(SLOW_FLASH, rx_buffer_chunks=2))
    await h.start_and_wait_ready()
    for k in range(3):  # faster than the flash: the third finds the 2-chunk buffer full
        h.send(CmdOtaData(k * CHUNK, NEW_IMAGE[k * CHUNK : (k + 1) * CHUNK]))
    assert h.fw.data.dropped_full == 1
    (status,) = h.take()
    assert isinstance(status, MsgOtaStatus) and status.next_expected_offset == 2 * CHUNK
    await asyncio.sleep(0.01)  # the flash catches up; the chunk is accepted on resend
    h.send(CmdOtaData(2 * CHUNK, NEW_IMAGE[2 * CHUNK : 3 * CHUNK]))
    assert h.status().next_expected_offset == 3 * CHUNK
    assert h.fw.data.dropped_full == 1


# --- a zero-latency host: no float compared against the clock (regression, issue 10) ----------


async def test_a_zero_latency_host_at_full_credit_never_finds_the_buffer_full() -> None:
    """Regression (issue 10): the model compared ``written_at <= now`` in floating point;
    looptime rounds its clock to microseconds, so a step scheduled for ``written_at`` could
    run a hair before it, find the buffer full and refuse the chunk. On a zero-latency
    link the host rewound and re-sent at that same frozen instant, thousands of times.
    Here a host that keeps exactly to its credit and on a STATUS rewinds and takes it as
    credit (as today's engine does; the model must work for any host) must never be
    refused, and must finish."""
    loop = asyncio.get_running_loop()
    image = make_image(323_194, 3)
    decoder = p.FrameDecoder()
    done = asyncio.Event()
    state = {"next": 0, "acked": 0, "rewinds": 0, "same_instant": 0}
    frozen_at = [-1.0]

    def on_frame(frame: bytes) -> None:
        for f in decoder.feed(frame):
            loop.call_soon(react, p.parse_message(f))

    fw = SmartBallFirmware(active_image=OLD_IMAGE, window=16, timings=FlashTimings(), send=on_frame)

    def stream() -> None:
        while state["next"] < len(image) and state["next"] < state["acked"] + 16 * 232:
            offset = state["next"]
            fw.receive(p.encode(CmdOtaData(offset, image[offset : offset + 232])))
            state["next"] = min(offset + 232, len(image))
        if state["acked"] == len(image) and not done.is_set():
            fw.receive(p.encode(CmdOtaFinish()))

    def react(msg: p.Message) -> None:
        if isinstance(msg, MsgOtaReady):
            stream()
        elif isinstance(msg, MsgOtaAck):
            state["acked"] = max(state["acked"], msg.next_expected_offset)
            stream()
        elif isinstance(msg, MsgOtaStatus) and msg.state == OtaState.RECEIVING:
            state["rewinds"] += 1
            now = loop.time()
            state["same_instant"] = state["same_instant"] + 1 if now == frozen_at[0] else 0
            frozen_at[0] = now
            if state["same_instant"] > 50:  # the livelock: give up instead of spinning
                done.set()
                return
            state["acked"] = state["next"] = msg.next_expected_offset
            stream()
        elif isinstance(msg, MsgOtaDone | MsgError):
            done.set()

    fw.receive(p.encode(start_for(image, chunk=232)))
    async with asyncio.timeout(120):
        await done.wait()
    assert state["rewinds"] == 0 and fw.data.dropped_full == 0, state
    assert fw.state == OtaState.COMPLETE

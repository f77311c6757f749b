"""SmartBallFirmware, driven directly: docs/protocol.md's device rules one by one, the flash
as the hardware has it, resets that leave nothing behind, and the regressions of the five
places where the model and the document used to disagree (issue 17).

No radio and no bleak: the firmware's ``send`` goes into a host-side FrameDecoder, and each
decoded message is stamped with the loop's (virtual, looptime) time, so erase and flash
timings are checked exactly without real waiting. Every cell of the command x state table
is checked in tests/client/test_contract_table.py; the tests here go deeper where a cell cannot.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import (
    CmdInfo,
    CmdOtaAbort,
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaStart,
    CmdOtaStatus,
    ErrorCode,
    MsgError,
    MsgInfo,
    MsgOtaAck,
    MsgOtaDone,
    MsgOtaProgress,
    MsgOtaReady,
    MsgOtaStatus,
    OtaState,
)
from smartball_sim.firmware.model import (
    PAGE_SIZE,
    FirmwareEvent,
    FirmwareEventKind,
    FlashTimings,
    SmartBallFirmware,
)
from smartball_sim.make_image import make_image

from ..firmware_harness import (
    CAPACITY,
    CHUNK,
    NEW_IMAGE,
    NEW_PAGES,
    OLD_IMAGE,
    PAGE_S,
    SLOW_FLASH,
    TIMINGS,
    VERIFY_S_PER_BYTE,
    VERSION,
    Harness,
    error_code,
    start_for,
)

# Virtual time: a 40 s erase costs milliseconds, and timings are exact.
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

# --- START ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk", "code"),
    [
        (0, 100, ErrorCode.BAD_PARAM),
        (100, 0, ErrorCode.BAD_PARAM),
        (100, 3, ErrorCode.BAD_PARAM),  # less than a word
        (0, 0, ErrorCode.BAD_PARAM),
        (CAPACITY + 1, 0, ErrorCode.BAD_PARAM),  # rule 1 is checked before rule 2
        (CAPACITY + 1, 100, ErrorCode.TOO_LARGE),
        (0xFFFF_FFFF, 500, ErrorCode.TOO_LARGE),
    ],
)
async def test_start_rejected(size: int, chunk: int, code: ErrorCode) -> None:
    h = Harness()
    assert error_code(h.ask(CmdOtaStart(size, 0x1234, chunk))) == code
    assert h.fw.state == OtaState.IDLE
    assert h.fw.session is None
    await asyncio.sleep(10)
    assert h.take() == []  # no erase was started


async def test_start_error_while_receiving_keeps_the_session() -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.send_image(NEW_IMAGE[:300])
    assert error_code(h.ask(CmdOtaStart(0, 1, 4))) == ErrorCode.BAD_PARAM
    assert error_code(h.ask(CmdOtaStart(CAPACITY + 1, 1, 4))) == ErrorCode.TOO_LARGE
    assert h.status() == MsgOtaStatus(OtaState.RECEIVING, 300, len(NEW_IMAGE), p.crc32(NEW_IMAGE))


async def test_start_of_exactly_staging_capacity_is_accepted() -> None:
    h = Harness()
    await h.start_and_wait_ready(bytes(CAPACITY))


async def test_erase_reports_progress_page_by_page_then_ready() -> None:
    h = Harness(window=16)
    t0 = h.now()
    h.send(start_for(NEW_IMAGE, chunk=232))
    assert h.take() == []  # nothing at once: the first page takes t_ERASEPAGE
    assert h.fw.state == OtaState.ERASING
    await asyncio.sleep(PAGE_S * NEW_PAGES + 1)
    total = NEW_PAGES * PAGE_SIZE
    expected: list[p.Message] = [
        MsgOtaProgress(1, PAGE_SIZE * (i + 1), total) for i in range(NEW_PAGES)
    ]
    expected.append(MsgOtaReady(max_chunk=232, window=16))
    assert [m for _, m in h.log] == expected
    times = [t - t0 for t, _ in h.log]
    page_times = [PAGE_S * (i + 1) for i in range(NEW_PAGES)]
    assert times == pytest.approx([*page_times, page_times[-1]], abs=1e-6)
    assert h.fw.state == OtaState.RECEIVING
    kinds = [e.kind for e in h.events]
    assert kinds == ["command", "handled", *["erase_progress"] * NEW_PAGES, "ready"]
    assert h.status().next_expected_offset == 0


async def test_erase_wipes_what_an_earlier_session_staged() -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.send_image()
    assert h.fw.staged_bytes() == NEW_IMAGE
    h.send(CmdOtaAbort())
    other = bytes(len(NEW_IMAGE))  # same size, other CRC
    await h.start_and_wait_ready(other)
    assert h.fw.staged_bytes() == b"\xff" * len(other)


@pytest.mark.parametrize(
    ("asked", "granted"),
    [(4, 4), (7, 4), (232, 232), (234, 232), (500, 500), (508, 500), (0xFFFF, 500)],
)
async def test_max_chunk_is_whole_words_and_at_most_500(asked: int, granted: int) -> None:
    h = Harness(window=7)
    assert await h.start_and_wait_ready(chunk=asked) == MsgOtaReady(granted, 7)


async def test_start_same_image_while_erasing_does_not_restart_and_takes_the_new_chunk() -> None:
    h = Harness()
    t0 = h.now()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(PAGE_S * 1.5)
    h.send(start_for(NEW_IMAGE, chunk=48))  # a reconnect with a smaller MTU
    assert h.fw.state == OtaState.ERASING
    await asyncio.sleep(PAGE_S * NEW_PAGES * 3)
    total = NEW_PAGES * PAGE_SIZE
    assert [m for _, m in h.log] == [
        *(MsgOtaProgress(1, PAGE_SIZE * (i + 1), total) for i in range(NEW_PAGES)),
        MsgOtaReady(48, 4),  # the READY describes the link the host is on now
    ]
    assert h.log[-1][0] - t0 == pytest.approx(PAGE_S * NEW_PAGES, abs=1e-6)


async def test_resume_start_takes_the_new_chunk_size_and_keeps_the_offset() -> None:
    """Regression (issue 17): a resume START with another chunk_size was ignored, so a
    host back on a link with a smaller MTU was granted chunks it cannot write."""
    h = Harness()
    await h.start_and_wait_ready(chunk=100)
    h.send_image(NEW_IMAGE[:500])
    h.take()
    assert h.ask(start_for(NEW_IMAGE, chunk=8)) == MsgOtaReady(8, 4)
    assert error_code(h.ask(CmdOtaData(500, NEW_IMAGE[500:600]))) == ErrorCode.BAD_PARAM
    await asyncio.sleep(PAGE_S * NEW_PAGES * 2)
    assert h.take() == []  # no erase
    assert h.status().next_expected_offset == 500
    h.send_image(chunk=8, start=500)
    h.take()
    h.send(CmdOtaFinish())
    await asyncio.sleep(2)
    assert h.take() == [MsgOtaDone(p.crc32(NEW_IMAGE))]
    assert h.fw.staged_bytes() == NEW_IMAGE


async def test_start_same_image_while_verifying_sends_nothing_then_done() -> None:
    h = Harness()
    await h.goto(OtaState.VERIFYING)
    h.send(start_for(NEW_IMAGE))
    assert h.take() == []
    assert h.fw.state == OtaState.VERIFYING
    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE))
    assert h.take() == [MsgOtaDone(p.crc32(NEW_IMAGE))]


@pytest.mark.parametrize("state", [OtaState.IDLE, OtaState.ERROR], ids=lambda s: s.name)
async def test_start_from_idle_or_error_begins_a_new_session(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    other = bytes(5000)
    h.send(start_for(other, chunk=40))
    assert h.fw.state == OtaState.ERASING
    await asyncio.sleep(10)
    assert h.take() == [
        MsgOtaProgress(1, 4096, 8192),
        MsgOtaProgress(1, 8192, 8192),
        MsgOtaReady(40, 4),
    ]
    assert h.fw.state == OtaState.RECEIVING


# --- COMPLETE: the switch is committed (regression, issue 17) ---------------------------------


async def test_start_and_abort_in_complete_cannot_cancel_the_switch() -> None:
    """Regression (issue 17): the model let START or ABORT in COMPLETE cancel the reset and
    stay on the old image, while the document said COMPLETE -> reboot. START is refused,
    ABORT answers COMPLETE, the reset still comes and the new image runs."""
    h = Harness()
    await h.goto(OtaState.COMPLETE)
    assert h.fw.pending_image is not None
    assert error_code(h.ask(start_for(bytes(5000)))) == ErrorCode.BAD_STATE
    assert h.ask(CmdOtaAbort()) == MsgOtaStatus(
        OtaState.COMPLETE, len(NEW_IMAGE), len(NEW_IMAGE), p.crc32(NEW_IMAGE)
    )
    await asyncio.sleep(10)
    assert h.fw.state == OtaState.COMPLETE
    assert h.fw.staged_bytes() == NEW_IMAGE  # nothing erased the staging bank
    assert len(h.resets) == 1  # asked for once, right after DONE
    h.fw.power_cycle()  # what the device does on that request
    assert h.info().active_image_crc32 == p.crc32(NEW_IMAGE)


async def test_info_reports_the_version_of_the_image_that_runs() -> None:
    """Regression (issue 17): after the switch the model kept the old version with the
    new size and CRC. The version comes from the image (its descriptor)."""
    h = Harness()
    await h.goto(OtaState.COMPLETE)
    assert h.info() == MsgInfo(1, *VERSION, len(OLD_IMAGE), p.crc32(OLD_IMAGE), CAPACITY)
    h.fw.power_cycle()
    assert h.info() == MsgInfo(1, 2, 0, 1, len(NEW_IMAGE), p.crc32(NEW_IMAGE), CAPACITY)


async def test_an_image_without_a_descriptor_runs_as_version_0_0_0() -> None:
    h = Harness()
    image = bytes(range(200))
    await h.start_and_wait_ready(image)
    h.send_image(image)
    h.send(CmdOtaFinish())
    await asyncio.sleep(1)
    h.fw.power_cycle()
    assert h.info().firmware_version == "0.0.0"


async def test_the_bootloader_checks_the_staged_crc_again() -> None:
    """A staged image damaged after DONE (a power loss mid-write of something else, a worn
    page) is not switched to: the old image boots."""
    h = Harness()
    await h.goto(OtaState.COMPLETE)
    h.fw.flash.erase_page(1)
    h.fw.power_cycle()
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)
    assert h.fw.pending_image is None


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
    assert h.fw.data_dropped_full == 0
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
    assert h.fw.data_dropped_full == 1
    (status,) = h.take()
    assert isinstance(status, MsgOtaStatus) and status.next_expected_offset == 2 * CHUNK
    await asyncio.sleep(0.01)  # the flash catches up; the chunk is accepted on resend
    h.send(CmdOtaData(2 * CHUNK, NEW_IMAGE[2 * CHUNK : 3 * CHUNK]))
    assert h.status().next_expected_offset == 3 * CHUNK
    assert h.fw.data_dropped_full == 1


# --- FINISH ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(OtaState), ids=lambda s: s.name)
async def test_finish_before_everything_arrived_is_bad_state(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    if state == OtaState.RECEIVING:
        h.send_image(NEW_IMAGE[:-16])
        h.take()
    h.send(CmdOtaFinish())
    await asyncio.sleep(PAGE_S if state == OtaState.ERASING else 0)  # (a page erase stalls)
    (reply,) = [m for m in h.take() if not isinstance(m, MsgOtaProgress)]
    assert error_code(reply) == ErrorCode.BAD_STATE
    assert h.fw.state == state


async def test_finish_with_matching_crc_done_then_the_reset_request() -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.send_image()
    h.take()
    h.send(CmdOtaFinish())
    assert h.fw.state == OtaState.VERIFYING
    t_finish = h.now()
    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE) + 0.001)
    assert h.take() == [MsgOtaDone(p.crc32(NEW_IMAGE))]
    assert h.fw.state == OtaState.COMPLETE
    t_done = h.log[-1][0]
    assert t_done - t_finish == pytest.approx(VERIFY_S_PER_BYTE * len(NEW_IMAGE), abs=1e-6)
    # no radio here: DONE has "left" at once, so the reset is asked for at once
    assert h.resets == [t_done]
    await asyncio.sleep(10)
    assert len(h.resets) == 1  # the 1 s fallback does not ask again
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)  # until the reset
    assert [e.kind for e in h.events if e.kind in ("verified", "verify_failed")] == ["verified"]


async def test_the_reset_waits_for_done_to_leave_the_radio_at_most_a_second() -> None:
    loop = asyncio.get_running_loop()
    sent_callbacks: list[Any] = []
    h = Harness(when_sent=sent_callbacks.append)  # a radio that never says "sent"
    await h.goto(OtaState.COMPLETE)
    (t_done,) = [t for t, m in h.log if isinstance(m, MsgOtaDone)]
    assert h.resets == [] and len(sent_callbacks) == 1
    await asyncio.sleep(1.5)
    assert h.resets == [pytest.approx(t_done + 1.0, abs=1e-6)]
    sent_callbacks[0]()  # "sent" after all: no second reset request
    assert len(h.resets) == 1
    # and with a radio that reports TX complete 30 ms after DONE
    h2 = Harness(when_sent=lambda cb: loop.call_later(0.03, cb))
    await h2.goto(OtaState.COMPLETE)
    (t_done,) = [t for t, m in h2.log if isinstance(m, MsgOtaDone)]
    await asyncio.sleep(2)
    assert h2.resets == [pytest.approx(t_done + 0.03, abs=1e-6)]


async def test_the_last_bytes_ack_is_sent_even_when_finish_comes_before_they_are_written() -> None:
    """Regression (issue 17): the model lost the ACK of the image's last byte when FINISH
    arrived before that chunk was written (the ACK timer saw VERIFYING and stayed quiet)."""
    h = Harness(window=16, timings=replace(SLOW_FLASH, verify_s_per_byte=1e-7))
    image = NEW_IMAGE[:1000]
    await h.start_and_wait_ready(image)
    h.send_image(image)  # 10 chunks: no interval ACK (8), the last byte's ACK pending
    h.send(CmdOtaFinish())  # at once, before the flash has written anything
    assert h.take() == []
    await asyncio.sleep(0.1)
    msgs = h.take()
    assert msgs == [MsgOtaAck(8 * CHUNK), MsgOtaAck(1000), MsgOtaDone(p.crc32(image))]


async def test_the_verify_reads_the_flash_back() -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.send_image()
    h.fw.flash.erase_page(2)  # the staged bytes are gone, whatever arrived
    h.send(CmdOtaFinish())
    await asyncio.sleep(2)
    assert error_code(h.take()[-1]) == ErrorCode.CRC_MISMATCH
    assert h.fw.state == OtaState.ERROR


async def test_wrong_crc_is_crc_mismatch_error_state_old_image_kept() -> None:
    h = Harness()
    await h.start_and_wait_ready(crc=0xDEADBEEF)
    h.send_image()
    h.take()
    h.send(CmdOtaFinish())
    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE) + 1)
    (msg,) = h.take()
    assert error_code(msg) == ErrorCode.CRC_MISMATCH
    assert isinstance(msg, MsgError) and msg.command == p.MsgType.CMD_OTA_FINISH
    assert h.fw.state == OtaState.ERROR
    assert h.fw.session is None
    assert h.status() == MsgOtaStatus(OtaState.ERROR, 0, 0, 0)
    await asyncio.sleep(10)
    assert h.resets == []
    h.fw.power_cycle()
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)


# --- ABORT ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [s for s in OtaState if s != OtaState.COMPLETE], ids=lambda s: s.name
)
async def test_abort_ends_the_session(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    h.send(CmdOtaAbort())
    await asyncio.sleep(PAGE_S)  # (in ERASING the page under way finishes first)
    assert [m for m in h.take() if not isinstance(m, MsgOtaProgress)] == [MsgOtaStatus(0, 0, 0, 0)]
    assert h.fw.state == OtaState.IDLE and h.fw.session is None
    await asyncio.sleep(60)
    assert h.take() == []  # no PROGRESS / READY / DONE after an abort
    assert h.resets == []


async def test_abort_cannot_stop_a_page_erase_halfway() -> None:
    h = Harness()
    t0 = h.now()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(0.01)
    h.send(CmdOtaAbort())  # 10 ms into the first page: the CPU is stalled by it
    assert h.take() == []
    await asyncio.sleep(1)
    assert [(round(t - t0, 6), m) for t, m in h.log] == [
        (PAGE_S, MsgOtaProgress(1, PAGE_SIZE, NEW_PAGES * PAGE_SIZE)),  # the page completes
        (PAGE_S, MsgOtaStatus(0, 0, 0, 0)),  # then the ABORT is handled
    ]
    assert h.fw.flash.erases == 1  # and no further page is erased


async def test_abort_between_pages_of_a_yielding_erase() -> None:
    h = Harness(timings=FlashTimings(erase_total_s=30))
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(15)
    assert len(h.take()) == 1  # page 1 of 3 after 10 s
    assert h.ask(CmdOtaAbort()) == MsgOtaStatus(0, 0, 0, 0)  # the CPU is free: at once
    await asyncio.sleep(60)
    assert h.take() == []
    assert not [e for e in h.events if e.kind == "ready"]


# --- the flash --------------------------------------------------------------------------------


async def test_every_word_is_written_once_and_the_last_is_padded() -> None:
    image = NEW_IMAGE[:1001]  # ends one byte into a word
    h = Harness(window=16, timings=SLOW_FLASH)
    await h.start_and_wait_ready(image, chunk=232)
    h.send_image(image, chunk=232)
    await asyncio.sleep(0.1)
    flash = h.fw.flash
    assert [flash.writes_of_word(o) for o in range(0, 1004, 4)] == [1] * 251
    assert flash.writes_of_word(1004) == 0
    assert flash.read(0, 1004) == image + b"\xff\xff\xff"


async def test_a_page_erase_stalls_the_replies() -> None:
    h = Harness()
    t0 = h.now()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(0.03)
    h.send(CmdInfo())
    assert h.take() == []  # the CPU is stalled by the first page's erase
    await asyncio.sleep(0.1)
    assert [(round(t - t0, 6), type(m)) for t, m in h.log[:2]] == [
        (PAGE_S, MsgOtaProgress),
        (PAGE_S, MsgInfo),
    ]


@pytest.mark.parametrize("failures", [1, 2])
async def test_a_failed_erase_is_retried_once_then_flash_error(failures: int) -> None:
    h = Harness()
    h.fw.flash.fail_next = failures
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(2)
    msgs = h.take()
    if failures == 1:  # the retry worked: one page took two erases' time
        assert isinstance(msgs[-1], MsgOtaReady)
        assert h.log[-1][0] == pytest.approx((NEW_PAGES + 1) * PAGE_S, abs=1e-6)
        return
    (error,) = msgs
    assert isinstance(error, MsgError)
    assert (error.code, error.command) == (ErrorCode.FLASH_ERROR, p.MsgType.CMD_OTA_START)
    assert h.fw.state == OtaState.ERROR and h.fw.session is None
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)


async def test_a_write_that_fails_twice_is_flash_error_naming_data() -> None:
    h = Harness(timings=SLOW_FLASH)
    await h.start_and_wait_ready()
    h.send(CmdOtaData(0, NEW_IMAGE[:CHUNK]))
    h.fw.flash.fail_next = 2
    h.send(CmdOtaData(CHUNK, NEW_IMAGE[CHUNK : 2 * CHUNK]))
    await asyncio.sleep(0.1)
    error = h.take()[-1]
    assert isinstance(error, MsgError)
    assert (error.code, error.command) == (ErrorCode.FLASH_ERROR, p.MsgType.CMD_OTA_DATA)
    assert h.status() == MsgOtaStatus(OtaState.ERROR, 0, 0, 0)
    # a new session starts from scratch
    await h.start_and_wait_ready()


# --- resets: nothing from before a reset acts (issue 10) ----------------------------------------


class ResettingHarness(Harness):
    """A harness whose observer resets the device on one event, as a fault trigger does."""

    def __init__(self, reset_on: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reset_on = reset_on
        self.fw._observe = self._observe_and_maybe_reset

    def _observe_and_maybe_reset(self, event: FirmwareEvent) -> None:
        self.events.append(event)
        if self.reset_on is not None and self.reset_on(event):
            self.reset_on = None
            self.fw.power_cycle()


async def test_a_reset_from_inside_the_erase_stops_that_erase() -> None:
    """Regression (issue 10): a reset fired from the erase's own step let that erase go
    on, set RECEIVING and send READY into the next session."""
    h = ResettingHarness(lambda e: e.kind is FirmwareEventKind.ERASE_PROGRESS)
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(0.2)
    assert h.fw.state == OtaState.IDLE
    # a new session right after: its erase must not be mixed with the old one
    t0 = h.now()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(1)
    msgs = [(round(t - t0, 6), m) for t, m in h.log if t >= t0]
    assert [m for _, m in msgs] == [
        *(MsgOtaProgress(1, PAGE_SIZE * (i + 1), NEW_PAGES * PAGE_SIZE) for i in range(NEW_PAGES)),
        MsgOtaReady(CHUNK, 4),
    ]
    assert [t for t, _ in msgs][-1] == pytest.approx(NEW_PAGES * PAGE_S, abs=1e-6)


async def test_a_command_that_resets_the_device_is_never_handled() -> None:
    """Regression (issue 10): the START whose arrival fired a reset was handled by the
    freshly reset device, which opened a session and erased."""
    h = ResettingHarness(
        lambda e: e.kind is FirmwareEventKind.COMMAND and e.msg_type == p.MsgType.CMD_OTA_START
    )
    h.fw.receive(p.encode(start_for(NEW_IMAGE)) + p.encode(CmdInfo()))  # one write, two frames
    await asyncio.sleep(1)
    assert h.fw.state == OtaState.IDLE and h.fw.session is None
    assert h.take() == []  # neither the START nor the INFO behind it in the same write
    assert h.fw.commands_seen == {}
    assert h.fw.flash.erases == 0


async def test_a_reset_mid_page_erase_leaves_no_step_behind() -> None:
    """A reset 40 ms into a page erase: that erase's end (its step is still scheduled) must
    not act in the next life: no flash operation after the reset, no job bookkeeping mixed
    into the next session, whose erase runs on its own clock."""
    h = Harness()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(0.04)
    h.fw.power_cycle()
    await asyncio.sleep(0.01)
    erases_before = h.fw.flash.erases
    t0 = h.now()
    h.send(start_for(bytes(9000)))
    await asyncio.sleep(1)
    assert erases_before == 0
    assert h.fw.flash.erases == 3  # the new session's pages, and nothing of the old erase
    progress = [round(t - t0, 6) for t, m in h.log if isinstance(m, MsgOtaProgress)]
    assert progress == [round(PAGE_S * k, 6) for k in (1, 2, 3)]


async def test_nothing_scheduled_before_a_reset_acts_after_it() -> None:
    """Timers of every kind: pending writes and their ACKs, the verify, the 1 s activation
    fallback."""
    h = Harness(window=16, timings=SLOW_FLASH, when_sent=lambda cb: None)
    await h.start_and_wait_ready()
    h.send_image(NEW_IMAGE[:1600])  # 16 chunks buffered, ACKs pending
    h.fw.power_cycle()
    await asyncio.sleep(1)
    assert h.take() == []
    await h.start_and_wait_ready()
    h.send_image()
    h.send(CmdOtaFinish())
    await asyncio.sleep(0.5)
    h.take()
    h.fw.power_cycle()  # with the verify and the activation's fallback pending, or not
    await asyncio.sleep(5)
    assert h.take() == [] and h.resets == []


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


# --- erase timing ------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [1, 10_000, CAPACITY])
async def test_erase_total_s_stretches_the_erase(image_size: int) -> None:
    h = Harness(timings=FlashTimings(erase_total_s=30.0))
    image = NEW_IMAGE[:image_size] if image_size <= len(NEW_IMAGE) else bytes(image_size)
    pages = math.ceil(image_size / PAGE_SIZE)
    t0 = h.now()
    h.send(start_for(image))
    await asyncio.sleep(29.9)
    assert h.fw.state == OtaState.ERASING
    assert len(h.take()) == pages - 1  # the last page is still being erased
    await asyncio.sleep(0.2)
    assert h.fw.state == OtaState.RECEIVING
    t_ready = h.log[-1][0]
    assert isinstance(h.log[-1][1], MsgOtaReady)
    assert t_ready - t0 == pytest.approx(30.0, abs=1e-6)
    progress_times = [t - t0 for t, m in h.log if isinstance(m, MsgOtaProgress)]
    assert progress_times == pytest.approx([30.0 * (i + 1) / pages for i in range(pages)], abs=1e-6)


async def test_default_timings_erase_a_page_in_85_ms() -> None:
    h = Harness(timings=FlashTimings())
    t0 = h.now()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(1)
    assert isinstance(h.log[-1][1], MsgOtaReady)
    assert h.log[-1][0] - t0 == pytest.approx(0.085 * NEW_PAGES, abs=1e-6)


async def test_observer_sees_commands_and_data() -> None:
    h = Harness(window=4)
    await h.start_and_wait_ready(NEW_IMAGE[:250])
    h.send_image(NEW_IMAGE[:250])
    commands = [e.msg_type for e in h.events if e.kind == "command"]
    assert commands == [p.MsgType.CMD_OTA_START] + [p.MsgType.CMD_OTA_DATA] * 3
    accepted = [e.offset for e in h.events if e.kind == "data_accepted"]
    assert accepted == [100, 200, 250]
    assert h.fw.commands_seen == {p.MsgType.CMD_OTA_START: 1, p.MsgType.CMD_OTA_DATA: 3}


async def test_finish_waits_for_the_flash_before_verifying() -> None:
    h = Harness(window=4, timings=replace(SLOW_FLASH, rx_buffer_chunks=200))
    await h.start_and_wait_ready()
    h.send_image()
    h.take()
    t0 = h.now()
    h.send(CmdOtaFinish())
    await asyncio.sleep(2)
    (done,) = [(t, m) for t, m in h.log if isinstance(m, MsgOtaDone)]
    words = sum(
        math.ceil(min(CHUNK, len(NEW_IMAGE) - o) / 4) for o in range(0, len(NEW_IMAGE), CHUNK)
    )
    expected = words * 41e-6 + len(NEW_IMAGE) * SLOW_FLASH.verify_s_per_byte
    assert done[0] - t0 == pytest.approx(expected, abs=1e-5)


# --- progressive erase (P18) ------------------------------------------------------------------


async def test_progressive_erase_is_advertised_only_when_configured() -> None:
    assert Harness().info().capabilities == 0
    assert Harness(progressive_erase=True).info().capabilities == p.Capability.PROGRESSIVE_ERASE


async def test_a_device_without_the_capability_ignores_the_flag() -> None:
    h = Harness()
    h.send(start_for(NEW_IMAGE, flags=p.StartFlag.PROGRESSIVE_ERASE))
    assert h.fw.state == OtaState.ERASING
    await asyncio.sleep(1)
    assert sum(isinstance(m, MsgOtaProgress) for m in h.take()) == NEW_PAGES


async def test_progressive_erase_ready_at_once_and_each_page_erased_before_its_first_write() -> (
    None
):
    h = Harness(window=16, timings=SLOW_FLASH, progressive_erase=True)
    t0 = h.now()
    assert h.ask(start_for(NEW_IMAGE, chunk=232, flags=1)) == MsgOtaReady(232, 16)
    assert h.fw.state == OtaState.RECEIVING
    assert h.status() == MsgOtaStatus(OtaState.RECEIVING, 0, len(NEW_IMAGE), p.crc32(NEW_IMAGE))
    assert h.fw.flash.erases == 0
    h.send(CmdOtaData(0, NEW_IMAGE[:232]))  # the first chunk: page 0 is erased first
    h.send(CmdInfo())
    assert h.take() == []  # the erase stalls the CPU
    await asyncio.sleep(0.2)
    (t_info,) = [t for t, m in h.log if isinstance(m, MsgInfo)]
    assert t_info - t0 == pytest.approx(PAGE_S, abs=1e-6)
    assert h.fw.flash.erases == 1
    assert not any(isinstance(m, MsgOtaProgress) for _, m in h.log)
    erase_events = [e for e in h.events if e.kind == "erase_progress"]
    assert [(e.done, e.total) for e in erase_events] == [(PAGE_SIZE, NEW_PAGES * PAGE_SIZE)]


async def test_progressive_update_end_to_end_resume_and_restart() -> None:
    h = Harness(window=16, timings=SLOW_FLASH, progressive_erase=True)
    h.send(start_for(NEW_IMAGE, chunk=232, flags=1))
    half = 4640  # 20 chunks: into page 1
    for offset in range(0, half, 232):
        h.send(CmdOtaData(offset, NEW_IMAGE[offset : offset + 232]))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert h.fw.flash.erases == 2
    # a resume keeps the mode and the erased pages; flags are ignored on a resume
    h.take()
    h.send(start_for(NEW_IMAGE, chunk=232))
    assert h.take() == [MsgOtaReady(232, 16)]
    assert h.fw.session is not None and h.fw.session.progressive
    for offset in range(half, len(NEW_IMAGE), 232):
        h.send(CmdOtaData(offset, NEW_IMAGE[offset : offset + 232]))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert h.fw.flash.erases == NEW_PAGES
    h.send(CmdOtaFinish())
    await asyncio.sleep(0.1)
    assert isinstance(h.take()[-1], MsgOtaDone)
    # a restart (ABORT, START) erases every page again before writing it
    h2 = Harness(window=16, timings=SLOW_FLASH, progressive_erase=True)
    h2.send(start_for(NEW_IMAGE, chunk=232, flags=1))
    h2.send(CmdOtaData(0, NEW_IMAGE[:232]))
    await asyncio.sleep(0.2)
    h2.send(CmdOtaAbort())
    h2.send(start_for(NEW_IMAGE, chunk=232, flags=1))
    h2.send(CmdOtaData(0, NEW_IMAGE[:232]))
    await asyncio.sleep(0.2)
    assert h2.fw.flash.erases == 2
    assert h2.fw.flash.writes_of_word(0) == 1


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
    assert state["rewinds"] == 0 and fw.data_dropped_full == 0, state
    assert fw.state == OtaState.COMPLETE

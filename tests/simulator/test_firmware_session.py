"""SmartBallFirmware, driven directly: a session's commands as docs/protocol.md has them,
START (erase, chunk size, resume), COMPLETE (the switch is committed, issue 17), FINISH (the
verify, the reset request) and ABORT.

No radio and no bleak: the firmware's ``send`` goes into a host-side FrameDecoder, and each
decoded message is stamped with the loop's (virtual, looptime) time, so erase and flash
timings are checked exactly without real waiting (tests/firmware_harness.py). Every cell of
the command x state table is checked in tests/client/test_contract_table.py; the tests here go
deeper where a cell cannot.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import (
    CmdOtaAbort,
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaStart,
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
    FlashTimings,
)

from ..firmware_harness import (
    CAPACITY,
    CHUNK,
    NEW_IMAGE,
    NEW_PAGES,
    OLD_IMAGE,
    PAGE_S,
    SLOW_FLASH,
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
    assert h.fw.bootloader.pending_image is not None
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
    assert h.fw.bootloader.pending_image is None


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

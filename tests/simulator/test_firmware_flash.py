"""SmartBallFirmware, driven directly: the flash as the hardware has it (words written once,
erases that stall, failures retried), resets that leave nothing behind (issue 10), the erase
timing and the progressive erase (P18). Driven through tests/firmware_harness.py on
looptime's virtual clock, so a 40 s erase costs milliseconds and timings are exact.
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
    ErrorCode,
    MsgError,
    MsgInfo,
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
)

from ..firmware_harness import (
    CAPACITY,
    CHUNK,
    NEW_IMAGE,
    NEW_PAGES,
    OLD_IMAGE,
    PAGE_S,
    SLOW_FLASH,
    Harness,
    start_for,
)

# Virtual time: a 40 s erase costs milliseconds, and timings are exact.
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


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

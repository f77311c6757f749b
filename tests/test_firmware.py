"""SmartBallFirmware against docs/protocol.md section 6 (device behaviour), driven directly.

No radio and no bleak: the firmware's ``send`` goes into a host-side FrameDecoder, and each
decoded message is stamped with the loop's (virtual, looptime) time, so erase and reset
timings are checked exactly without real waiting.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest

from pytest_smartball import protocol as p
from pytest_smartball.protocol import (
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
from smartball_sim.firmware import PAGE_SIZE, FirmwareEvent, FlashTimings, SmartBallFirmware

# Virtual time: a 40 s erase costs milliseconds, and timings are exact.
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

OLD_IMAGE = bytes(range(256)) * 12  # 3072 bytes, the image the device runs
VERSION = (1, 4, 2)
CAPACITY = 5 * PAGE_SIZE
PAGE_S = 0.085
VERIFY_S_PER_BYTE = 1e-4  # 10 000 bytes verify in 1 s: long enough to observe VERIFYING
RESET_DELAY_S = 0.1
# An instant flash write: these tests feed chunks faster than any radio could; the flash
# write time and the receive buffer have tests of their own at the end.
TIMINGS = FlashTimings(
    erase_page_s=PAGE_S,
    verify_s_per_byte=VERIFY_S_PER_BYTE,
    reset_delay_s=RESET_DELAY_S,
    write_word_s=0.0,
)
NEW_IMAGE = bytes((i * 7 + 3) & 0xFF for i in range(10_000))  # 3 pages
NEW_PAGES = math.ceil(len(NEW_IMAGE) / PAGE_SIZE)
CHUNK = 100


def start_for(image: bytes, chunk: int = CHUNK, crc: int | None = None) -> CmdOtaStart:
    return CmdOtaStart(len(image), p.crc32(image) if crc is None else crc, chunk)


def error_code(msg: object) -> int:
    assert isinstance(msg, MsgError), msg
    return msg.code


class Harness:
    """The firmware plus a host: decodes what the firmware sends, with loop timestamps."""

    def __init__(self, *, window: int = 4, timings: FlashTimings = TIMINGS, **kwargs) -> None:
        self.decoder = p.FrameDecoder()
        self.log: list[tuple[float, p.Message]] = []
        self.resets: list[float] = []
        self.events: list[FirmwareEvent] = []
        self.loop = asyncio.get_running_loop()
        kwargs.setdefault("staging_capacity", CAPACITY)
        self.fw = SmartBallFirmware(
            active_image=OLD_IMAGE,
            version=VERSION,
            window=window,
            timings=timings,
            send=self._on_send,
            request_reset=lambda: self.resets.append(self.loop.time()),
            observe=self.events.append,
            **kwargs,
        )
        self._taken = 0

    def _on_send(self, frame: bytes) -> None:
        for f in self.decoder.feed(frame):
            self.log.append((self.loop.time(), p.parse_message(f)))

    def now(self) -> float:
        return self.loop.time()

    def send(self, msg: p.Message) -> None:
        self.fw.receive(p.encode(msg))

    def take(self) -> list[p.Message]:
        """Messages sent since the last take()."""
        new = [m for _, m in self.log[self._taken :]]
        self._taken = len(self.log)
        return new

    def ask(self, msg: p.Message) -> p.Message:
        """Send a command that gets exactly one immediate reply; return that reply."""
        self.take()
        self.send(msg)
        replies = self.take()
        assert len(replies) == 1, replies
        return replies[0]

    def status(self) -> MsgOtaStatus:
        reply = self.ask(CmdOtaStatus())
        assert isinstance(reply, MsgOtaStatus)
        return reply

    def info(self) -> MsgInfo:
        reply = self.ask(CmdInfo())
        assert isinstance(reply, MsgInfo)
        return reply

    # --- getting to a state ----------------------------------------------------------

    async def start_and_wait_ready(self, image: bytes = NEW_IMAGE, **kwargs) -> MsgOtaReady:
        self.send(start_for(image, **kwargs))
        pages = math.ceil(len(image) / PAGE_SIZE)
        await asyncio.sleep(self.fw.timings.page_erase_time(pages) * pages + 0.001)
        msgs = self.take()
        assert isinstance(msgs[-1], MsgOtaReady), msgs
        assert self.fw.state == OtaState.RECEIVING
        return msgs[-1]

    def send_image(self, image: bytes = NEW_IMAGE, chunk: int = CHUNK, start: int = 0) -> None:
        for offset in range(start, len(image), chunk):
            self.send(CmdOtaData(offset, image[offset : offset + chunk]))

    async def goto(self, state: OtaState) -> None:
        """Bring the firmware into ``state`` with a NEW_IMAGE session where one applies."""
        if state == OtaState.IDLE:
            return
        if state == OtaState.ERASING:
            self.send(start_for(NEW_IMAGE))
            await asyncio.sleep(PAGE_S * 1.5)  # one page erased, the second under way
        else:
            crc = p.crc32(NEW_IMAGE) if state != OtaState.ERROR else 0xDEADBEEF
            await self.start_and_wait_ready(NEW_IMAGE, crc=crc)
            if state != OtaState.RECEIVING:
                self.send_image()
                self.send(CmdOtaFinish())
                if state == OtaState.VERIFYING:
                    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE) / 2)
                else:
                    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE) + 0.001)
        self.take()
        assert self.fw.state == state


ALL_STATES = list(OtaState)


# --- any state ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: s.name)
async def test_info_in_any_state(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    assert h.info() == MsgInfo(1, *VERSION, len(OLD_IMAGE), p.crc32(OLD_IMAGE), CAPACITY)
    assert h.fw.state == state


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: s.name)
async def test_status_in_any_state(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    status = h.status()
    assert status.state == state
    if state in (OtaState.IDLE, OtaState.ERROR):
        assert (status.next_expected_offset, status.image_size, status.image_crc32) == (0, 0, 0)
    else:
        assert status.image_size == len(NEW_IMAGE)
        assert status.image_crc32 == p.crc32(NEW_IMAGE)
        expected_offset = 0 if state in (OtaState.ERASING, OtaState.RECEIVING) else len(NEW_IMAGE)
        assert status.next_expected_offset == expected_offset
    assert h.fw.state == state


async def test_status_reports_receiving_progress() -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.send_image(NEW_IMAGE[:450])
    assert h.status() == MsgOtaStatus(OtaState.RECEIVING, 450, len(NEW_IMAGE), p.crc32(NEW_IMAGE))


# --- START ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk", "code"),
    [
        (0, 100, ErrorCode.BAD_PARAM),
        (100, 0, ErrorCode.BAD_PARAM),
        (0, 0, ErrorCode.BAD_PARAM),
        (CAPACITY + 1, 0, ErrorCode.BAD_PARAM),  # rule 1 is checked before rule 2
        (CAPACITY + 1, 100, ErrorCode.TOO_LARGE),
        (0xFFFF_FFFF, 508, ErrorCode.TOO_LARGE),
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
    assert error_code(h.ask(CmdOtaStart(0, 1, 1))) == ErrorCode.BAD_PARAM
    assert error_code(h.ask(CmdOtaStart(CAPACITY + 1, 1, 1))) == ErrorCode.TOO_LARGE
    assert h.status() == MsgOtaStatus(OtaState.RECEIVING, 300, len(NEW_IMAGE), p.crc32(NEW_IMAGE))


async def test_start_of_exactly_staging_capacity_is_accepted() -> None:
    h = Harness()
    image = bytes(CAPACITY)
    await h.start_and_wait_ready(image)


async def test_erase_reports_progress_page_by_page_then_ready() -> None:
    h = Harness(window=16)
    t0 = h.now()
    h.send(start_for(NEW_IMAGE, chunk=234))
    assert h.take() == []  # nothing at once: the first page takes t_ERASEPAGE
    assert h.fw.state == OtaState.ERASING
    await asyncio.sleep(PAGE_S * NEW_PAGES + 1)
    total = NEW_PAGES * PAGE_SIZE
    expected = [MsgOtaProgress(1, PAGE_SIZE * (i + 1), total) for i in range(NEW_PAGES)]
    expected.append(MsgOtaReady(max_chunk=234, window=16))
    assert [m for _, m in h.log] == expected
    times = [t - t0 for t, _ in h.log]
    page_times = [PAGE_S * (i + 1) for i in range(NEW_PAGES)]
    assert times == pytest.approx([*page_times, page_times[-1]], abs=1e-4)
    assert h.fw.state == OtaState.RECEIVING
    kinds = [e.kind for e in h.events]
    assert kinds == ["command", *["erase_progress"] * NEW_PAGES, "ready"]
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
    ("asked", "granted"), [(1, 1), (234, 234), (508, 508), (509, 508), (0xFFFF, 508)]
)
async def test_max_chunk_is_min_of_request_and_508(asked: int, granted: int) -> None:
    h = Harness(window=7)
    assert await h.start_and_wait_ready(chunk=asked) == MsgOtaReady(granted, 7)
    assert h.fw.session is not None and h.fw.session.max_chunk == granted


async def test_start_same_image_while_erasing_does_not_restart() -> None:
    h = Harness()
    t0 = h.now()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(PAGE_S * 1.5)
    h.send(start_for(NEW_IMAGE, chunk=50))  # same size and CRC; chunk size is not compared
    assert h.fw.state == OtaState.ERASING
    await asyncio.sleep(PAGE_S * NEW_PAGES * 3)
    msgs = [m for _, m in h.log]
    total = NEW_PAGES * PAGE_SIZE
    assert msgs == [
        *(MsgOtaProgress(1, PAGE_SIZE * (i + 1), total) for i in range(NEW_PAGES)),
        MsgOtaReady(CHUNK, 4),  # the session's original max_chunk
    ]
    assert h.log[-1][0] - t0 == pytest.approx(PAGE_S * NEW_PAGES, abs=1e-4)


async def test_start_same_image_while_receiving_resends_ready_and_keeps_offset() -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.send_image(NEW_IMAGE[:500])
    h.take()
    assert h.ask(start_for(NEW_IMAGE)) == MsgOtaReady(CHUNK, 4)
    await asyncio.sleep(PAGE_S * NEW_PAGES * 2)
    assert h.take() == []  # no erase
    assert h.status().next_expected_offset == 500
    assert h.fw.staged_bytes()[:500] == NEW_IMAGE[:500]
    # and the transfer resumes where it was
    h.send_image(start=500)
    h.take()
    h.send(CmdOtaFinish())
    await asyncio.sleep(2)
    assert h.take() == [MsgOtaDone(p.crc32(NEW_IMAGE))]


async def test_start_same_image_while_verifying_sends_nothing_then_done() -> None:
    h = Harness()
    await h.goto(OtaState.VERIFYING)
    h.send(start_for(NEW_IMAGE))
    assert h.take() == []
    assert h.fw.state == OtaState.VERIFYING
    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE))
    assert h.take() == [MsgOtaDone(p.crc32(NEW_IMAGE))]


@pytest.mark.parametrize(
    "state", [OtaState.ERASING, OtaState.RECEIVING, OtaState.VERIFYING], ids=lambda s: s.name
)
@pytest.mark.parametrize("differs", ["size", "crc"])
async def test_start_other_image_while_busy_is_bad_state(state: OtaState, differs: str) -> None:
    h = Harness()
    await h.goto(state)
    before = h.status()
    other = (
        CmdOtaStart(len(NEW_IMAGE) + 1, p.crc32(NEW_IMAGE), CHUNK)
        if differs == "size"
        else CmdOtaStart(len(NEW_IMAGE), p.crc32(NEW_IMAGE) ^ 1, CHUNK)
    )
    assert error_code(h.ask(other)) == ErrorCode.BAD_STATE
    assert h.status() == before


@pytest.mark.parametrize(
    "state", [OtaState.IDLE, OtaState.ERROR, OtaState.COMPLETE], ids=lambda s: s.name
)
async def test_start_from_idle_error_complete_begins_a_new_session(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    other = bytes(5000)
    h.send(start_for(other, chunk=40))
    assert h.fw.state == OtaState.ERASING
    assert h.status() == MsgOtaStatus(OtaState.ERASING, 0, 5000, p.crc32(other))
    await asyncio.sleep(10)
    msgs = h.take()
    assert msgs == [
        MsgOtaProgress(1, 4096, 8192),
        MsgOtaProgress(1, 8192, 8192),
        MsgOtaReady(40, 4),
    ]
    assert h.fw.state == OtaState.RECEIVING
    # In COMPLETE a reset was pending: a new session must not be cut short by it.
    assert h.resets == []


# --- DATA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [OtaState.IDLE, OtaState.ERASING, OtaState.VERIFYING, OtaState.COMPLETE, OtaState.ERROR],
    ids=lambda s: s.name,
)
async def test_data_outside_receiving_is_bad_state(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    offset = h.status().next_expected_offset
    assert error_code(h.ask(CmdOtaData(offset, b"x"))) == ErrorCode.BAD_STATE
    assert h.fw.state == state


@pytest.mark.parametrize(("size", "offset"), [(0, 0), (CHUNK + 1, 0), (0, 77), (CHUNK + 1, 77)])
async def test_data_bad_length_is_bad_param(size: int, offset: int) -> None:
    h = Harness()
    await h.start_and_wait_ready()
    # checked before the offset: also at a wrong offset the answer is BAD_PARAM, not STATUS
    assert error_code(h.ask(CmdOtaData(offset, bytes(size)))) == ErrorCode.BAD_PARAM
    assert h.status().next_expected_offset == 0


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
    # the chunks were dropped
    assert h.fw.staged_bytes()[2 * CHUNK :] == b"\xff" * (len(NEW_IMAGE) - 2 * CHUNK)
    # an accepted chunk restarts the count: the next reject gets a STATUS at once
    h.send(CmdOtaData(2 * CHUNK, NEW_IMAGE[2 * CHUNK : 3 * CHUNK]))
    h.take()
    h.send(CmdOtaData(0, NEW_IMAGE[:CHUNK]))  # a duplicate is a wrong offset too
    assert h.take() == [
        MsgOtaStatus(OtaState.RECEIVING, 3 * CHUNK, len(NEW_IMAGE), p.crc32(NEW_IMAGE))
    ]


async def test_first_reject_of_a_session_gets_status() -> None:
    h = Harness(window=16)
    await h.start_and_wait_ready()
    reply = h.ask(CmdOtaData(CHUNK, NEW_IMAGE[CHUNK : 2 * CHUNK]))
    assert isinstance(reply, MsgOtaStatus) and reply.next_expected_offset == 0


async def test_data_running_past_the_end_is_bad_offset() -> None:
    h = Harness()
    image = NEW_IMAGE[:250]
    await h.start_and_wait_ready(image)
    h.send_image(image[:200])
    h.take()
    assert error_code(h.ask(CmdOtaData(200, bytes(51)))) == ErrorCode.BAD_OFFSET
    assert h.status().next_expected_offset == 200  # state and session as they were
    assert h.fw.state == OtaState.RECEIVING
    # a wrong offset past the end is a wrong offset (rule 3 before rule 4): STATUS
    reply = h.ask(CmdOtaData(300, bytes(10)))
    assert isinstance(reply, MsgOtaStatus)
    assert h.ask(CmdOtaData(200, image[200:])) == MsgOtaAck(250)


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 16])
@pytest.mark.parametrize("chunks", [1, 7, 8, 17])
async def test_ack_every_half_window_and_at_the_end(window: int, chunks: int) -> None:
    chunk = 10
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


# --- FINISH --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        OtaState.IDLE,
        OtaState.ERASING,
        OtaState.RECEIVING,
        OtaState.VERIFYING,
        OtaState.COMPLETE,
        OtaState.ERROR,
    ],
    ids=lambda s: s.name,
)
async def test_finish_before_complete_is_bad_state(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    if state == OtaState.RECEIVING:
        h.send_image(NEW_IMAGE[:-1])
        h.take()
    assert error_code(h.ask(CmdOtaFinish())) == ErrorCode.BAD_STATE
    assert h.fw.state == state


async def test_finish_with_matching_crc_done_then_reset() -> None:
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
    assert t_done - t_finish == pytest.approx(VERIFY_S_PER_BYTE * len(NEW_IMAGE), abs=1e-4)
    assert h.resets == []  # not yet: the DONE notification must leave the radio first
    await asyncio.sleep(RESET_DELAY_S)
    assert len(h.resets) == 1
    assert h.resets[0] - t_done == pytest.approx(RESET_DELAY_S, abs=1e-4)
    await asyncio.sleep(10)
    assert len(h.resets) == 1
    # until the reset the old image runs
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)
    assert [e.kind for e in h.events if e.kind in ("verified", "verify_failed")] == ["verified"]


async def test_power_cycle_switches_to_the_verified_image() -> None:
    h = Harness()
    await h.goto(OtaState.COMPLETE)
    boots = h.fw.boot_count
    h.fw.power_cycle()  # what the device does on request_reset
    assert h.fw.boot_count == boots + 1
    assert h.fw.state == OtaState.IDLE
    assert h.status() == MsgOtaStatus(0, 0, 0, 0)
    assert h.info() == MsgInfo(1, *VERSION, len(NEW_IMAGE), p.crc32(NEW_IMAGE), CAPACITY)
    # a second reset keeps it
    h.fw.power_cycle()
    assert h.info().active_image_crc32 == p.crc32(NEW_IMAGE)


@pytest.mark.parametrize(
    "state", [OtaState.ERASING, OtaState.RECEIVING, OtaState.VERIFYING], ids=lambda s: s.name
)
async def test_power_cycle_mid_session_loses_it_and_keeps_old_image(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    h.fw.power_cycle()
    assert h.status() == MsgOtaStatus(0, 0, 0, 0)
    await asyncio.sleep(30)
    assert h.take() == []  # no PROGRESS, READY or DONE from the lost session
    assert h.resets == []
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)


async def test_wrong_crc_is_crc_mismatch_error_state_old_image_kept() -> None:
    h = Harness()
    await h.start_and_wait_ready(crc=0xDEADBEEF)
    h.send_image()
    h.take()
    h.send(CmdOtaFinish())
    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE) + 1)
    msgs = h.take()
    assert len(msgs) == 1
    assert error_code(msgs[0]) == ErrorCode.CRC_MISMATCH
    assert h.fw.state == OtaState.ERROR
    assert h.fw.session is None
    assert h.status() == MsgOtaStatus(OtaState.ERROR, 0, 0, 0)
    await asyncio.sleep(10)
    assert h.resets == []
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)
    h.fw.power_cycle()
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)


async def test_new_start_after_crc_mismatch_works() -> None:
    h = Harness()
    await h.goto(OtaState.ERROR)
    # same size, now the right CRC: a new erase follows (nothing is "resumed")
    h.send(start_for(NEW_IMAGE))
    assert h.take() == []
    await asyncio.sleep(PAGE_S * NEW_PAGES + 0.001)
    msgs = h.take()
    assert sum(isinstance(m, MsgOtaProgress) for m in msgs) == NEW_PAGES
    assert msgs[-1] == MsgOtaReady(CHUNK, 4)
    h.send_image()
    h.send(CmdOtaFinish())
    await asyncio.sleep(2)
    assert MsgOtaDone(p.crc32(NEW_IMAGE)) in h.take()
    assert len(h.resets) == 1


# --- ABORT ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: s.name)
async def test_abort_from_any_state(state: OtaState) -> None:
    h = Harness()
    await h.goto(state)
    assert h.ask(CmdOtaAbort()) == MsgOtaStatus(0, 0, 0, 0)
    assert h.fw.state == OtaState.IDLE
    assert h.fw.session is None
    await asyncio.sleep(60)
    assert h.take() == []  # no PROGRESS / READY / DONE after an abort
    assert h.resets == []
    assert h.fw.state == OtaState.IDLE
    # ABORT in COMPLETE drops the verified image (docs/protocol.md, open points)
    h.fw.power_cycle()
    assert h.info().active_image_crc32 == p.crc32(OLD_IMAGE)


async def test_abort_stops_the_erase() -> None:
    h = Harness(timings=FlashTimings(erase_total_s=30))
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(15)
    assert len(h.take()) == 1  # page 1 of 3 after 10 s
    h.send(CmdOtaAbort())
    h.take()
    await asyncio.sleep(60)
    assert h.take() == []
    assert not [e for e in h.events if e.kind == "ready"]


# --- bad frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg_type", [0x00, 0x02, 0x0F, 0x15, 0x7F, 0x80, 0x81, 0x90, 0x92, 0xEE, 0xFF]
)
async def test_unknown_command(msg_type: int) -> None:
    h = Harness()
    await h.start_and_wait_ready()
    h.fw.receive(p.encode_frame(msg_type, b"\x00" * 4))
    msgs = h.take()
    assert len(msgs) == 1
    assert error_code(msgs[0]) == ErrorCode.UNKNOWN_COMMAND
    assert h.fw.state == OtaState.RECEIVING


async def test_device_message_echoed_back_is_unknown_command() -> None:
    h = Harness()
    reply = h.ask(CmdInfo())
    h.fw.receive(p.encode(reply))  # a host that loops TX back to RX
    assert error_code(h.take()[0]) == ErrorCode.UNKNOWN_COMMAND


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
    msgs = h.take()
    assert len(msgs) == 1
    assert error_code(msgs[0]) == ErrorCode.BAD_FRAME
    # nothing happened: not even the ABORT with a bad length
    assert h.status() == MsgOtaStatus(OtaState.RECEIVING, 300, len(NEW_IMAGE), p.crc32(NEW_IMAGE))


async def test_bad_crc_frame_is_dropped_silently_and_counted() -> None:
    h = Harness()
    frame = bytearray(p.encode(CmdOtaAbort()))
    frame[-1] ^= 0x01
    h.fw.receive(bytes(frame))
    assert h.take() == []
    assert h.fw.decoder_stats.bad_crc == 1
    assert h.info().protocol_version == 1  # the decoder recovered


async def test_frame_split_across_many_receive_calls() -> None:
    h = Harness()
    stream = p.encode(start_for(NEW_IMAGE)) + p.encode(CmdOtaStatus())
    for i, byte in enumerate(stream):
        h.fw.receive(bytes([byte]))
        replies = h.take()
        if i == len(stream) - 1:
            assert replies == [
                MsgOtaStatus(OtaState.ERASING, 0, len(NEW_IMAGE), p.crc32(NEW_IMAGE))
            ]
        else:
            assert replies == []
    await asyncio.sleep(1)
    assert isinstance(h.take()[-1], MsgOtaReady)
    # a DATA frame in 3-byte pieces, then three frames in one piece
    data = p.encode(CmdOtaData(0, NEW_IMAGE[:CHUNK]))
    for i in range(0, len(data), 3):
        h.fw.receive(data[i : i + 3])
    assert h.status().next_expected_offset == CHUNK
    h.fw.receive(p.encode(CmdInfo()) + p.encode(CmdOtaStatus()) + p.encode(CmdInfo()))
    assert [type(m) for m in h.take()] == [MsgInfo, MsgOtaStatus, MsgInfo]


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


# --- timing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [1, 10_000, CAPACITY])
async def test_erase_total_s_stretches_the_erase(image_size: int) -> None:
    loop = asyncio.get_running_loop()
    h = Harness(timings=FlashTimings(erase_total_s=30.0))
    image = NEW_IMAGE[:image_size] if image_size <= len(NEW_IMAGE) else bytes(image_size)
    pages = math.ceil(image_size / PAGE_SIZE)
    t0 = loop.time()
    h.send(start_for(image))
    await asyncio.sleep(29.9)
    assert h.fw.state == OtaState.ERASING
    assert len(h.take()) == pages - 1  # the last page is still being erased
    await asyncio.sleep(0.2)
    assert h.fw.state == OtaState.RECEIVING
    t_ready = h.log[-1][0]
    assert isinstance(h.log[-1][1], MsgOtaReady)
    assert t_ready - t0 == pytest.approx(30.0, abs=1e-3)
    progress_times = [t - t0 for t, m in h.log if isinstance(m, MsgOtaProgress)]
    assert progress_times == pytest.approx([30.0 * (i + 1) / pages for i in range(pages)], abs=1e-3)


async def test_default_timings_erase_a_page_in_85_ms() -> None:
    h = Harness(timings=FlashTimings())
    t0 = h.now()
    h.send(start_for(NEW_IMAGE))
    await asyncio.sleep(1)
    assert isinstance(h.log[-1][1], MsgOtaReady)
    assert h.log[-1][0] - t0 == pytest.approx(0.085 * NEW_PAGES, abs=1e-4)


async def test_observer_sees_commands_and_data() -> None:
    h = Harness(window=4)
    await h.start_and_wait_ready(NEW_IMAGE[:250])
    h.send_image(NEW_IMAGE[:250])
    commands = [e.msg_type for e in h.events if e.kind == "command"]
    assert commands == [p.MsgType.CMD_OTA_START] + [p.MsgType.CMD_OTA_DATA] * 3
    accepted = [e.offset for e in h.events if e.kind == "data_accepted"]
    assert accepted == [100, 200, 250]
    assert h.fw.commands_seen == {p.MsgType.CMD_OTA_START: 1, p.MsgType.CMD_OTA_DATA: 3}


# --- flash write time and the receive buffer ---------------------------------------------

SLOW_FLASH = FlashTimings(erase_page_s=PAGE_S, write_word_s=41e-6, rx_buffer_chunks=2)


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
    # two chunks of 25 words, one after the other
    assert ack[0] - t0 == pytest.approx(2 * 25 * 41e-6, abs=1e-6)


async def test_a_full_receive_buffer_drops_data_and_the_status_rewinds_the_host() -> None:
    h = Harness(window=4, timings=SLOW_FLASH)
    await h.start_and_wait_ready()
    h.take()
    for k in range(3):  # faster than the flash: the third finds the 2-chunk buffer full
        h.send(CmdOtaData(k * CHUNK, NEW_IMAGE[k * CHUNK : (k + 1) * CHUNK]))
    assert h.fw.data_dropped_full == 1
    (status,) = h.take()
    assert isinstance(status, MsgOtaStatus) and status.next_expected_offset == 2 * CHUNK
    await asyncio.sleep(0.01)  # the flash catches up; the chunk is accepted on resend
    h.send(CmdOtaData(2 * CHUNK, NEW_IMAGE[2 * CHUNK : 3 * CHUNK]))
    assert h.status().next_expected_offset == 3 * CHUNK
    assert h.fw.data_dropped_full == 1


async def test_finish_waits_for_the_flash_before_verifying() -> None:
    h = Harness(window=4, timings=replace(SLOW_FLASH, rx_buffer_chunks=200))
    await h.start_and_wait_ready()
    h.send_image()
    h.take()
    t0 = h.now()
    h.send(CmdOtaFinish())
    await asyncio.sleep(2)
    done = [(t, m) for t, m in h.log if isinstance(m, MsgOtaDone)]
    assert len(done) == 1
    words = sum(
        math.ceil(min(CHUNK, len(NEW_IMAGE) - o) / 4) for o in range(0, len(NEW_IMAGE), CHUNK)
    )
    expected = words * 41e-6 + len(NEW_IMAGE) * SLOW_FLASH.verify_s_per_byte
    assert done[0][0] - t0 == pytest.approx(expected, abs=1e-4)

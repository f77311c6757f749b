"""Driving the device under test into each state of the protocol over NUS, and reading
what it answers: the steps of the table-driven conformance tests (test_conformance.py).

Everything here speaks only protocol v1 through a :class:`~pytest_smartball.link.NusLink`,
so it holds on the simulator and on a real board. The images are random bytes that are
never activated (their sessions are aborted, or their CRC is wrong on purpose), except the
one cell that must activate an image: it uses the release image (``--firmware``), which a
real board may boot (the plugin flashes the baseline back afterwards).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.link import LinkLost, NusLink, ResponseTimeout

from .helpers import PAGE_SIZE, present_manifest

TIMING = contract.timing()
#: Radio delivery on top of the device's own obligation: a few connection events (at most
#: 50 ms each on Linux) each way.
RADIO_MARGIN_S = 0.25
#: After the expected replies, how long any further message is waited for.
QUIET_S = TIMING.reply_max_s
CHUNK = 232

#: Three pages: a session that is quick to set up, its last chunk shorter than CHUNK.
SMALL = random.Random(16).randbytes(9_000)
#: Where a RECEIVING set-up stops short of the end: the image's last, shorter chunk is left.
NEAR_END = (len(SMALL) - 1) // CHUNK * CHUNK
#: Where a host drops the link (or the power is cut) mid-transfer: well inside SMALL, at a
#: chunk boundary.
DROP_AT = 20 * CHUNK
#: Another image, for "another image than the session's".
OTHER = random.Random(17).randbytes(5_000)
#: Pages of the image whose erase the ERASING set-up catches under way (about 3.4 s at the
#: nRF52840's 85 ms per page): long enough for a command, its reply and an idle frame.
ERASE_PAGES = 40


@dataclass(frozen=True, slots=True)
class Session:
    """The session a set-up left on the device, as the host knows it."""

    image: bytes
    crc32: int
    #: Bytes the device accepted (its next_expected_offset).
    offset: int = 0

    @property
    def size(self) -> int:
        return len(self.image)


#: The shortest page erase with which the ERASING set-up (ERASE_PAGES pages) lasts long
#: enough for a command, its reply and a STATUS: 40 ms a page is 1.6 s; the nRF52840 takes 85.
CATCHABLE_PAGE_S = 0.040


def erase_image(staging_capacity: int, pages: int = ERASE_PAGES) -> bytes:
    """An image whose erase takes ``pages`` pages (at most the staging area's)."""
    pages = max(1, min(pages, staging_capacity // PAGE_SIZE))
    return random.Random(18).randbytes(pages * PAGE_SIZE - 100)


def status_of(session: Session | None, state: p.OtaState) -> p.MsgOtaStatus:
    """What MSG_OTA_STATUS must say in ``state`` with ``session`` (docs/protocol.md 7.1)."""
    if session is None or state in (p.OtaState.IDLE, p.OtaState.ERROR):
        return p.MsgOtaStatus(state, 0, 0, 0)
    offset = {
        p.OtaState.ERASING: 0,
        p.OtaState.RECEIVING: session.offset,
    }.get(state, session.size)
    return p.MsgOtaStatus(state, offset, session.size, session.crc32)


async def ask_status(nus: NusLink) -> p.MsgOtaStatus:
    """STATUS, and in RECEIVING the ACK the device then owes (so nothing is left over)."""
    status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,), timeout=5.0)
    assert isinstance(status, p.MsgOtaStatus), f"STATUS was answered with {status}"
    if status.state == p.OtaState.RECEIVING:
        while True:  # (an ACK sent before the STATUS may still be on its way)
            ack = await nus.wait_for((p.MsgOtaAck,), 5.0, "MSG_OTA_ACK after CMD_OTA_STATUS")
            assert isinstance(ack, p.MsgOtaAck)
            if ack.next_expected_offset >= status.next_expected_offset:
                break
        assert ack.next_expected_offset == status.next_expected_offset, (
            f"STATUS said {status.next_expected_offset}, the ACK after it {ack}"
        )
    return status


async def settle(nus: NusLink) -> None:
    """Let stragglers arrive, then forget them: the next command starts a clean stream.
    Quiet means nothing for a reply time plus the radio's delivery, as collect() waits."""
    await asyncio.sleep(QUIET_S + RADIO_MARGIN_S)
    nus.drain()


async def start(
    nus: NusLink, image: bytes, crc32: int | None = None, *, manifest: bool = True
) -> p.MsgOtaReady:
    """START a session and wait for READY through the whole erase (on a signed-only
    device the suite's manifest goes first, unless the caller sent its own)."""
    crc = p.crc32(image) if crc32 is None else crc32
    if manifest:
        await present_manifest(nus, image, crc)
    await nus.send(p.CmdOtaStart(len(image), crc, CHUNK))
    pages = math.ceil(len(image) / PAGE_SIZE)
    budget = (pages + 1) * TIMING.progress_gap_max_s + TIMING.ready_after_erase_max_s
    ready = await nus.wait_for((p.MsgOtaReady, p.MsgError), budget + 5, "MSG_OTA_READY")
    assert isinstance(ready, p.MsgOtaReady), f"START was answered with {ready}"
    assert ready.max_chunk == CHUNK, ready
    return ready


async def stream(nus: NusLink, image: bytes, ready: p.MsgOtaReady, end: int, start: int = 0) -> int:
    """Send ``image[start:end]`` within the ACK credit (READY starts it at ``start``, the
    session's next_expected_offset); returns what the device accepted, confirmed by STATUS
    (and the ACK that follows it)."""
    acked = sent = start
    credit = ready.window * ready.max_chunk
    while sent < end:
        while sent < end and sent < acked + credit:
            size = min(ready.max_chunk, end - sent)
            await nus.send(p.CmdOtaData(sent, image[sent : sent + size]))
            sent += size
        if sent < end:  # out of credit: the next ACK brings more
            ack = await nus.wait_for((p.MsgOtaAck,), 5.0, "MSG_OTA_ACK while streaming")
            assert isinstance(ack, p.MsgOtaAck)
            acked = max(acked, ack.next_expected_offset)
    status = await ask_status(nus)
    assert status.next_expected_offset == end, f"sent {end} bytes, STATUS says {status}"
    return end


async def finish(nus: NusLink) -> p.DeviceMessage:
    await nus.send(p.CmdOtaFinish())
    return await nus.wait_for(
        (p.MsgOtaDone, p.MsgError), TIMING.verify_max_s(480 * 1024) + 5, "DONE or CRC_MISMATCH"
    )


async def collect(
    nus: NusLink,
    expected: tuple[str, ...],
    budget_s: float,
    ignore: Callable[[p.DeviceMessage], bool] = lambda msg: False,
) -> list[p.DeviceMessage]:
    """Messages as they come, ignored ones left out, until they match ``expected`` (the
    table's tokens) and nothing more came for QUIET_S, ``budget_s`` is spent or the link
    is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    quiet_until: float | None = None
    got: list[p.DeviceMessage] = []
    while True:
        matched = contract.matches(expected, [contract.message_token(m) for m in got])
        if matched and quiet_until is None:
            quiet_until = loop.time() + QUIET_S
        until = quiet_until if matched and quiet_until is not None else deadline
        remaining = until - loop.time()
        if remaining <= 0:
            return got
        try:
            msg = await nus.receive(remaining)
        except (ResponseTimeout, LinkLost):  # (a link the device ends to reset: all said)
            return got
        if not ignore(msg):
            got.append(msg)
            if not contract.matches(expected, [contract.message_token(m) for m in got]):
                quiet_until = None


def tokens(messages: list[p.DeviceMessage]) -> list[str]:
    return [contract.message_token(m) for m in messages]


def with_crc_mismatch(cell: contract.Cell) -> contract.Cell:
    """A VERIFYING cell for a session whose CRC is wrong: the verify under way ends in
    CRC_MISMATCH (state ERROR) where the table, which assumes a good image, says DONE
    (COMPLETE); its note says either follows."""
    swap = {"MSG_OTA_DONE": "MSG_ERROR:CRC_MISMATCH"}
    then_state = p.OtaState.ERROR if cell.then_state == p.OtaState.COMPLETE else cell.then_state
    return replace(cell, then=tuple(swap.get(t, t) for t in cell.then), then_state=then_state)

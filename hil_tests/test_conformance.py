"""Conformance, table-driven: every command in every state, against the device under test.

The table is docs/protocol.md's command x state table, read from the same data the
document is generated from (``pytest_smartball/contract/command_state.json``). For each
cell the device is driven into the cell's state over NUS (conformance.py), sent the cell's
command, and what it answers is matched against the cell: the replies in order, what
follows, the state afterwards and the session's fields in MSG_OTA_STATUS, every MSG_ERROR
naming the command it answers, and every reply within the timing obligations. Malformed
input (bad CRC, a length above 512, a partial frame left to time out) in every state too.

Holds on ``--device=sim`` and ``--device=real``. Three kinds of cell cannot be reached on a
real board and skip there, saying why: COMPLETE (it lasts until DONE has left the radio;
the simulator holds it with a ``no-reset`` fault), the progressive-erase START on a board
that does not advertise it, and VERIFYING when the board verifies faster than a connection
event. A full receive buffer is reachable only by a host that exceeds its credit while the
flash lags, which no correct host does; test_credit.py checks that the credit is honoured.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import LinkSettings, NusLink, find_device
from pytest_smartball.targets import Target

from . import conformance as c
from .conformance import CHUNK, NEAR_END, OTHER, SMALL, TIMING, Session
from .helpers import present_manifest

pytestmark = pytest.mark.asyncio

TABLE = contract.command_state_table()
CELLS = [(row, state) for row in TABLE.rows for state in contract.STATES]
S = p.OtaState

#: Rows whose RECEIVING set-up has sent the whole image (FINISH needs every byte).
WHOLE_IMAGE_ROWS = ("finish", "finish_crc_mismatch")


class Cell:
    """One cell under test: the device, what the set-up left, the command to send."""

    def __init__(
        self,
        nus: NusLink,
        target: Target,
        info: p.MsgInfo,
        release: FirmwareImage,
        row: contract.Row,
        state: p.OtaState,
    ) -> None:
        self.nus = nus
        self.target = target
        self.info = info
        self.release = release
        self.row = row
        self.state = state
        self.session: Session | None = None

    # --- the set-up ------------------------------------------------------------------

    async def _skip_if_the_erase_cannot_be_caught(self, first: p.MsgOtaProgress) -> None:
        """The page time between two PROGRESS messages (the link's latency cancels out):
        a device that erases a page in a few milliseconds (the simulated SmartBalls behind a
        real-time bluetoothd) ends the set-up's erase before a command can reach it."""
        loop = asyncio.get_running_loop()
        first_at = loop.time()
        second = await self.nus.wait_for(
            (p.MsgOtaProgress, p.MsgOtaReady, p.MsgError),
            TIMING.progress_gap_max_s + c.RADIO_MARGIN_S,
            "the erase's second MSG_OTA_PROGRESS",
        )
        if not isinstance(second, p.MsgOtaProgress) or second.done <= first.done:
            page_s = 0.0  # the erase ended (READY) or made no progress to measure
        else:
            pages = (second.done - first.done) / c.PAGE_SIZE  # done counts bytes erased
            page_s = (loop.time() - first_at) / pages
        if page_s < c.CATCHABLE_PAGE_S:
            pytest.skip(
                f"this device erases a page in {page_s * 1000:.0f} ms, so the set-up's erase "
                f"ends before a command can catch it in ERASING (a real nRF52840 takes 85 ms; "
                f"the cell needs at least {c.CATCHABLE_PAGE_S * 1000:.0f} ms a page)"
            )

    async def reach_state(self) -> None:
        """Drive the device into ``self.state`` (VERIFYING: one step short of it, see
        :meth:`send_in_verifying`) and check it is there."""
        nus = self.nus
        await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
        if self.state == S.ERASING:
            image = c.erase_image(self.info.staging_capacity)
            self.session = Session(image, p.crc32(image))
            await present_manifest(nus, image, self.session.crc32, self.info)
            await nus.send(p.CmdOtaStart(len(image), self.session.crc32, CHUNK))
            first = await nus.wait_for(
                (p.MsgOtaProgress, p.MsgOtaReady, p.MsgError),
                TIMING.progress_gap_max_s + c.RADIO_MARGIN_S,
                "the erase's first MSG_OTA_PROGRESS",
            )
            assert isinstance(first, p.MsgOtaProgress), f"START was answered with {first}"
            await self._skip_if_the_erase_cannot_be_caught(first)
        elif self.state == S.RECEIVING:
            if self.row.id == "finish":
                self.session = Session(self.release.data, self.release.crc32)
            elif self.row.id == "finish_crc_mismatch":
                self.session = Session(SMALL, p.crc32(SMALL) ^ 1)
            else:
                self.session = Session(SMALL, p.crc32(SMALL))
            end = self.session.size if self.row.id in WHOLE_IMAGE_ROWS else NEAR_END
            await self._receive(self.session, end)
        elif self.state in (S.VERIFYING, S.ERROR):
            wrong = Session(SMALL, p.crc32(SMALL) ^ 1)  # never activated
            if self.state == S.VERIFYING and self.target.sim is not None:
                # The simulator's verify is switchable: 0.4 s for this image, well within
                # verify_max_s, so a DATA frame's second write still finds it under way in
                # the stages that run in real time (a board's is what it is: see below).
                firmware = self.target.sim.firmware
                firmware.timings = replace(
                    firmware.timings,
                    verify_s_per_byte=max(firmware.timings.verify_s_per_byte, 0.4 / len(SMALL)),
                )
            await self._receive(wrong, wrong.size)
            self.session = wrong
            if self.state == S.ERROR:
                reply = await c.finish(nus)
                assert isinstance(reply, p.MsgError) and reply.code == p.ErrorCode.CRC_MISMATCH
                self.session = None
        elif self.state == S.COMPLETE:
            assert self.target.sim is not None
            # The simulator holds it in COMPLETE, so the small image is never activated.
            self.target.sim.set_faults("no-reset")
            self.session = Session(SMALL, p.crc32(SMALL))
            await self._receive(self.session, self.session.size)
            done = await c.finish(nus)
            assert done == p.MsgOtaDone(p.crc32(SMALL)), done
        if self.state != S.VERIFYING:
            status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
            assert status == c.status_of(self.session, self.state), "the set-up missed its state"
        await c.settle(nus)

    async def _receive(self, session: Session, end: int) -> None:
        ready = await c.start(self.nus, session.image, session.crc32)
        offset = await c.stream(self.nus, session.image, ready, end)
        self.session = Session(session.image, session.crc32, offset)

    # --- the command -----------------------------------------------------------------

    async def present_manifest_for_the_start(self) -> None:
        """A row's START that opens a new session (from IDLE or ERROR, with valid
        parameters) is, on a signed-only device, preceded by the manifest of the image it
        names, as every host must (docs/protocol.md 16); the table's cell then applies as
        it is. BAD_PARAM and TOO_LARGE come before the manifest check: no manifest."""
        if self.state not in (S.IDLE, S.ERROR):
            return
        s, row = self.session, self.row.id
        if row in ("start_other", "start_progressive"):
            await present_manifest(self.nus, OTHER, p.crc32(OTHER), self.info)
        elif row == "start_same":
            image = s.image if s else SMALL
            await present_manifest(self.nus, image, s.crc32 if s else p.crc32(image), self.info)

    def frame(self) -> bytes:
        """The row's command, as bytes, for the session the set-up left."""
        s, row = self.session, self.row.id
        image = s.image if s else SMALL
        offset = s.offset if s and self.state == S.RECEIVING else 0
        commands: dict[str, p.Command] = {
            "info": p.CmdInfo(),
            "status": p.CmdOtaStatus(),
            "abort": p.CmdOtaAbort(),
            "start_other": p.CmdOtaStart(len(OTHER), p.crc32(OTHER), CHUNK),
            "start_same": p.CmdOtaStart(len(image), s.crc32 if s else p.crc32(image), CHUNK),
            "start_progressive": p.CmdOtaStart(
                len(OTHER), p.crc32(OTHER), CHUNK, flags=p.StartFlag.PROGRESSIVE_ERASE
            ),
            "start_bad_param": p.CmdOtaStart(len(SMALL), p.crc32(SMALL), 2),
            "start_too_large": p.CmdOtaStart(self.info.staging_capacity + 4, 0x5EED, CHUNK),
            "data_next": p.CmdOtaData(offset, image[offset : offset + CHUNK] or b"\0" * 4),
            "data_offset": p.CmdOtaData(
                offset + CHUNK, image[offset + CHUNK :][:CHUNK] or b"\0" * 4
            ),
            "data_length": p.CmdOtaData(offset, b""),
            "data_past_end": p.CmdOtaData(offset, (image[offset:] + b"\0" * CHUNK)[:CHUNK]),
            "data_words": p.CmdOtaData(offset, image[offset : offset + 6]),
            "data_buffer_full": p.CmdOtaData(offset, image[offset : offset + CHUNK]),
            "finish": p.CmdOtaFinish(),
            "finish_crc_mismatch": p.CmdOtaFinish(),
            "finish_incomplete": p.CmdOtaFinish(),
        }
        if row in commands:
            return p.encode(commands[row])
        if row == "unknown":
            return p.encode_frame(0x7F, b"")
        if row == "short":
            return p.encode_frame(p.MsgType.CMD_OTA_START, b"\x00\x01\x02")
        assert row == "bad_frame", row
        frame = bytearray(p.encode(p.CmdOtaStatus()))
        frame[-1] ^= 0xFF
        return bytes(frame)

    def session_after(self, final: p.OtaState) -> Session | None:
        """The session once the command (and what follows it) is done."""
        s, row = self.session, self.row.id
        opens = row.startswith("start_") and self.state in (S.IDLE, S.ERROR)
        if opens and final in (S.ERASING, S.RECEIVING):
            image = OTHER if row in ("start_other", "start_progressive") else SMALL
            return Session(image, p.crc32(image))
        if row == "data_next" and s is not None and self.state == S.RECEIVING:
            return Session(s.image, s.crc32, s.size)
        return s

    def expected(self) -> tuple[contract.Cell, tuple[str, ...], set[p.OtaState]]:
        """The cell (for a wrong-CRC verify: DONE becomes CRC_MISMATCH), the messages it
        makes in order, and the states the device may be in afterwards."""
        cell = self.row.cells[self.state]
        if self.state == S.VERIFYING:
            cell = c.with_crc_mismatch(cell)
        tokens = cell.reply + cell.then
        finals = {cell.then_state or cell.state}
        if not cell.then and cell.state is self.state:
            # Work under way goes on (the table does not repeat it in every cell).
            if self.state == S.ERASING:
                tokens += ("MSG_OTA_READY?",)
                finals.add(S.RECEIVING)
            elif self.state == S.VERIFYING:
                tokens += ("MSG_ERROR:CRC_MISMATCH",)
                finals = {S.ERROR}
        return cell, tokens, finals

    def budget_s(self, tokens: tuple[str, ...]) -> float:
        """How long the cell's messages may take: the reply, then any erase, verify or
        ACK that follows, each at its obligation's limit."""
        sizes = [len(SMALL), len(OTHER)] + ([self.session.size] if self.session else [])
        pages = math.ceil(max(sizes) / c.PAGE_SIZE)
        names = {t.rstrip("+?") for t in tokens}
        budget = TIMING.reply_max_s + c.RADIO_MARGIN_S
        if names & {"MSG_OTA_PROGRESS", "MSG_OTA_READY"}:
            budget += (pages + 1) * TIMING.progress_gap_max_s + TIMING.ready_after_erase_max_s
        if names & {"MSG_OTA_DONE", "MSG_ERROR:CRC_MISMATCH"}:
            budget += TIMING.verify_max_s(max(sizes))
        if "MSG_OTA_ACK" in names:
            budget += TIMING.ack_latency_max_s
        return budget

    # --- VERIFYING ---------------------------------------------------------------------

    async def send_in_verifying(self, frame: bytes) -> None:
        """FINISH, a STATUS and the command in one write where they fit (every command but
        a whole DATA chunk): the device handles them in one go, so the STATUS (whose reply
        is checked and removed) shows the state the command met. Three writes raced the
        verify: over the emulated bluetoothd on a loaded machine the START arrived after a
        verify the STATUS had still seen under way. A DATA frame goes in a second write; it
        is refused with BAD_STATE in VERIFYING and in the ERROR a failed verify leaves."""
        await self.nus.send_frame(p.encode(p.CmdOtaFinish()) + p.encode(p.CmdOtaStatus()) + frame)


#: The longest command frame a cell sends (a DATA frame of a whole chunk).
LONGEST_FRAME = len(p.encode(p.CmdOtaData(0, bytes(CHUNK))))


def _skip_reason(
    row: contract.Row, state: p.OtaState, target: Target, info: p.MsgInfo, write_size: int
) -> str:
    if state == S.COMPLETE and target.sim is None:
        return (
            "COMPLETE lasts only until MSG_OTA_DONE has left the radio; a real board cannot be "
            "held in it (the simulator holds it with a no-reset fault)"
        )
    if row.id == "start_progressive" and not info.capabilities & p.Capability.PROGRESSIVE_ERASE:
        if target.sim is None:
            return "the board does not advertise PROGRESSIVE_ERASE: the row does not apply"
    if state in (S.ERASING, S.VERIFYING) and write_size < LONGEST_FRAME:
        return (
            f"the link writes {write_size} bytes at a time: a command of several writes "
            f"outlasts {state.name}, which the device leaves within seconds (erase) or "
            "milliseconds (verify); these cells need a link that carries a DATA frame in one "
            f"write ({LONGEST_FRAME} bytes, ATT MTU 247)"
        )
    if row.id == "data_buffer_full" and state == S.RECEIVING:
        return (
            "a full receive buffer needs a host beyond its ACK credit while the flash lags; "
            "test_credit.py checks that a host within it is never refused"
        )
    return ""


@pytest.mark.parametrize(
    ("row", "state"), CELLS, ids=[f"{row.id}-{state.name}" for row, state in CELLS]
)
async def test_command_in_state(
    row: contract.Row,
    state: p.OtaState,
    nus: NusLink,
    smartball: Target,
    firmware_image: FirmwareImage,
) -> None:
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo)
    reason = _skip_reason(row, state, smartball, info, nus.max_write)
    if reason:
        pytest.skip(reason)
    if row.id == "start_progressive" and smartball.sim is not None:
        smartball.sim.firmware.progressive_erase = True  # the simulator's is switchable
    cell = Cell(nus, smartball, info, firmware_image, row, state)
    await cell.reach_state()
    table_cell, expected, finals = cell.expected()
    frame = cell.frame()
    await cell.present_manifest_for_the_start()
    ignore_progress = state == S.ERASING
    if state == S.VERIFYING:
        await cell.send_in_verifying(frame)
    else:
        await nus.send_frame(frame)
    got = await c.collect(
        nus,
        (("MSG_OTA_STATUS",) if state == S.VERIFYING else ()) + expected,
        cell.budget_s(expected),
        ignore=lambda m: ignore_progress and isinstance(m, p.MsgOtaProgress),
    )
    if state == S.VERIFYING:
        probe = got.pop(0) if got else None
        if not (isinstance(probe, p.MsgOtaStatus) and probe.state == S.VERIFYING):
            if smartball.sim is None:
                pytest.skip(f"the board had verified before the command arrived ({probe})")
            raise AssertionError(f"the simulated device was not verifying: {probe}")
    assert c.contract.matches(expected, c.tokens(got)), (
        f"{row.command} ({row.case or 'any'}) in {state.name}: expected "
        f"{' '.join(expected) or 'nothing'} (docs/protocol.md 7.2), got "
        f"{' '.join(c.tokens(got)) or 'nothing'}: {got}"
    )
    answered = frame[1]
    for msg in got[: len(table_cell.reply)]:  # the replies, not what follows later
        if isinstance(msg, p.MsgError):
            assert msg.command == answered, f"{msg} does not name the command 0x{answered:02X}"
    final = (table_cell.then_state or table_cell.state) if table_cell.then else None
    if final == S.COMPLETE and state == S.RECEIVING:
        await _check_activation(nus, smartball, firmware_image)
        return
    status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
    assert isinstance(status, p.MsgOtaStatus)
    if state == S.ERASING and "MSG_OTA_READY" not in c.tokens(got):
        finals.discard(S.RECEIVING)  # the erase under way has not ended
    after = S(status.state)
    assert after in finals, f"after {row.command} in {state.name}: {status}"
    assert status == c.status_of(cell.session_after(after), after), (
        f"STATUS after {row.command} ({row.case or 'any'}) in {state.name} (docs/protocol.md 7.1)"
    )


async def _check_activation(nus: NusLink, target: Target, image: FirmwareImage) -> None:
    """After DONE the device ends the link within its obligation and comes back running
    the image it verified."""
    async with asyncio.timeout(TIMING.done_to_disconnect_max_s + c.RADIO_MARGIN_S):
        await nus.lost.wait()
    sighting = await find_device(
        target.backend,
        name=target.name,
        address=target.address,
        timeout=TIMING.reset_to_advertising_max_s(activation=True) + c.RADIO_MARGIN_S,
    )
    async with await NusLink.open(sighting.ble_device, target.backend, LinkSettings()) as link:
        info = await link.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo)
    assert (info.active_image_size, info.active_image_crc32) == (image.size, image.crc32), info


# --- malformed input, in every state -------------------------------------------------------

MALFORMED = ("bad-crc", "too-long", "partial-then-idle")
REACHABLE = (S.IDLE, S.ERASING, S.RECEIVING, S.COMPLETE, S.ERROR)


@pytest.mark.parametrize("state", REACHABLE, ids=[s.name for s in REACHABLE])
@pytest.mark.parametrize("kind", MALFORMED)
async def test_malformed_input_in_state(
    kind: str,
    state: p.OtaState,
    nus: NusLink,
    smartball: Target,
    firmware_image: FirmwareImage,
) -> None:
    """The decoder's rules (docs/protocol.md 4): a frame with a bad CRC or a length above
    512 costs only its SOF (the good frame right behind it is answered); a partial frame
    is discarded after decoder_idle_s of silence, so the next command is answered. The
    state and the session stay as they were."""
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo)
    status_row = TABLE.row("status")
    reason = _skip_reason(status_row, state, smartball, info, nus.max_write)
    if reason:
        pytest.skip(reason)
    cell = Cell(nus, smartball, info, firmware_image, status_row, state)
    await cell.reach_state()
    good = p.encode(p.CmdOtaStatus())
    if kind == "bad-crc":
        bad = bytearray(p.encode(p.CmdInfo()))
        bad[-2] ^= 0x5A
        await nus.send_frame(bytes(bad) + good)
    elif kind == "too-long":
        await nus.send_frame(bytes([p.SOF, p.MsgType.CMD_OTA_START, 0x58, 0x02]) + good)
    else:
        start = p.encode(p.CmdOtaStart(len(SMALL), p.crc32(SMALL), CHUNK))
        await nus.send_frame(start[:6])  # header and two payload bytes: then silence
        await asyncio.sleep(TIMING.decoder_idle_s * 1.2)
        nus.drain()
        await nus.send_frame(good)
    got = await c.collect(
        nus,
        ("MSG_OTA_STATUS",) + (("MSG_OTA_ACK",) if state == S.RECEIVING else ()),
        TIMING.reply_max_s + TIMING.ack_latency_max_s + c.RADIO_MARGIN_S,
        ignore=lambda m: isinstance(m, p.MsgOtaProgress | p.MsgOtaReady),
    )
    statuses = [m for m in got if isinstance(m, p.MsgOtaStatus)]
    assert statuses, f"{kind}: the good frame after it was not answered ({got})"
    assert [m for m in got if isinstance(m, p.MsgError)] == [], f"{kind}: {got}"
    status = statuses[0]
    still = {state} | ({S.RECEIVING} if state == S.ERASING else set())
    assert status.state in still, f"{kind} changed the state: {status}"
    assert status == c.status_of(cell.session, S(status.state)), f"{kind}: {status}"

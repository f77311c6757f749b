"""Stateful fuzzing of the device protocol (hypothesis RuleBasedStateMachine).

Random sequences of START / DATA (right, repeated, skipped, past the end, bad sizes) /
FINISH / ABORT / STATUS / INFO, link drops, resets and waits. Two drivers:

* the firmware model directly, checked step by step against a simple model of what the
  device must answer (many examples, simulator only);
* a NUS link through bleak to the device under test (``--device=sim`` or ``--device=real``,
  fewer examples): the device always answers ``CMD_OTA_STATUS`` and never switches to an
  image whose CRC it did not verify.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.link import BleBackend, LinkSettings, NusLink, find_device
from pytest_smartball.loops import virtual_event_loop
from pytest_smartball.strategies import command_frames
from smartball_sim.firmware.model import PAGE_SIZE, FlashTimings, SmartBallFirmware
from smartball_sim.make_image import make_image

from .helpers import SuiteKey

IMAGES = {"A": make_image(3_000, 1), "B": make_image(9_000, 2), "C": make_image(1, 3)}
BASELINE = make_image(5_000, 99)
WINDOW = 4
CHUNK = 100
ERASE_PAGE_S = 0.085


def default_examples() -> int:
    """The loaded profile's example count (set by --fuzz-examples or HYPOTHESIS_PROFILE)."""
    return settings().max_examples


@dataclass
class ModelSession:
    """The fuzz model's own record of the device's session, by image name (mutable, as the
    model moves its offset); hil_tests/conformance.py's ``Session`` is a set-up's."""

    name: str
    crc: int
    next_offset: int = 0

    @property
    def data(self) -> bytes:
        return IMAGES[self.name]


class FirmwareDriver:
    """The firmware model on its own virtual-time loop; collects what it sends."""

    def __init__(self) -> None:
        self.loop = virtual_event_loop()
        self.inbox: list[p.DeviceMessage] = []
        #: CRC-32 of every image the device answered FINISH with DONE for (it verified it).
        self.verified_crcs: set[int] = set()
        self._decoder = p.FrameDecoder()
        self.fw = SmartBallFirmware(
            active_image=BASELINE,
            window=WINDOW,
            staging_capacity=64 * 1024,
            timings=FlashTimings(erase_page_s=ERASE_PAGE_S),
            send=self._on_send,
            request_reset=self._reset,
        )
        self.resets = 0

    def _on_send(self, frame: bytes) -> None:
        for f in self._decoder.feed(frame):
            msg = p.parse_message(f)
            self.inbox.append(msg)  # type: ignore[arg-type]
            if isinstance(msg, p.MsgOtaDone):
                self.verified_crcs.add(msg.crc32)

    def _reset(self) -> None:
        self.resets += 1
        self.fw.power_cycle()

    def now(self) -> float:
        return self.loop.time()

    # A page erase stalls the device's CPU (85 ms): a command sent during one is answered
    # when the page is done, so every write waits longer than a page for its replies.
    def write(self, data: bytes, settle_s: float = 0.1) -> list[p.DeviceMessage]:
        async def go() -> None:
            self.fw.receive(data)
            await asyncio.sleep(settle_s)

        return self.run(go())

    def wait(self, seconds: float) -> list[p.DeviceMessage]:
        return self.run(asyncio.sleep(seconds))

    def run(self, coro: object) -> list[p.DeviceMessage]:
        self.inbox = []
        self.loop.run_until_complete(coro)  # type: ignore[arg-type]
        return self.inbox

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


TABLE = contract.command_state_table()


class DeviceProtocolModel(RuleBasedStateMachine):
    """What protocol v1 says the device must answer, step by step: the model keeps the
    session (image, next offset) and the state; which reply each command gets in that state,
    and the state after it, come from the contract's command x state table."""

    def __init__(self) -> None:
        super().__init__()
        self.d = FirmwareDriver()
        self.state = p.OtaState.IDLE
        self.session: ModelSession | None = None
        self.erase_done_at = 0.0
        self.active = BASELINE
        self.verified: set[bytes] = {BASELINE}

    def teardown(self) -> None:
        self.d.close()

    # --- helpers -----------------------------------------------------------------------

    def expect(self, row_id: str, replies: list[p.DeviceMessage]) -> contract.Cell:
        """The table's cell for this command case in the model's state: the errors the device
        sent are exactly the cell's, its other messages are among the replies (the erase's or
        the verify's own messages may come with them), and the model moves to its state."""
        cell = TABLE.row(row_id).cells[self.state]
        got = [contract.message_token(m) for m in replies]
        want_errors = [t for t in cell.reply if t.startswith("MSG_ERROR:")]
        # An error the cell says follows later (its "then": the verify's CRC_MISMATCH after
        # FINISH) may already be among the replies when the work was quick; the caller checks
        # the "then" part itself.
        later = {t.rstrip("+?") for t in cell.then}
        errors = [t for t in got if t.startswith("MSG_ERROR:") and t not in later]
        assert errors == want_errors, (row_id, replies)
        for token in cell.reply:
            assert token in got, (row_id, token, replies)
        self.state = cell.state
        return cell

    def settle_erase(self) -> None:
        """Erase ends at a known time; move the model when it has clearly passed."""
        # (5 ms: a chunk's write under way when START arrives delays the erase by ~1 ms)
        if self.state == p.OtaState.ERASING and self.d.now() >= self.erase_done_at + 5e-3:
            self.state = p.OtaState.RECEIVING

    # --- rules -------------------------------------------------------------------------

    @rule(name=st.sampled_from(sorted(IMAGES)), wrong_crc=st.booleans())
    def start(self, name: str, wrong_crc: bool) -> None:
        data = IMAGES[name]
        crc = p.crc32(data) ^ (1 if wrong_crc else 0)
        sent_at = self.d.now()
        replies = self.d.write(p.encode(p.CmdOtaStart(len(data), crc, CHUNK)))
        s = self.session
        same = s is not None and (len(s.data), s.crc) == (len(data), crc)
        was = self.state
        cell = self.expect("start_same" if same else "start_other", replies)
        if cell.state == p.OtaState.ERASING and was != p.OtaState.ERASING:
            self.session = ModelSession(name, crc)  # a new session: erase from the start
            self.data_while_erasing = 0
            pages = -(-len(data) // PAGE_SIZE)
            self.erase_done_at = sent_at + pages * ERASE_PAGE_S

    @rule(seconds=st.sampled_from([0.01, 0.1, 0.5, 2.0]))
    def wait(self, seconds: float) -> None:
        was_erasing = self.state == p.OtaState.ERASING
        replies = self.d.wait(seconds)
        self.settle_erase()
        if was_erasing and self.state == p.OtaState.RECEIVING:
            assert any(isinstance(m, p.MsgOtaReady) for m in replies), replies

    @rule(
        kind=st.sampled_from(
            ["next", "next", "next", "repeat", "skip", "past-end", "empty", "too-big"]
        )
    )
    def data(self, kind: str) -> None:
        s = self.session
        if self.state != p.OtaState.RECEIVING or s is None:
            replies = self.d.write(p.encode(p.CmdOtaData(0, b"x")))
            self.settle_erase()
            if self.state == p.OtaState.ERASING:
                # rate-limited while erasing: the first DATA since START, then one per window
                self.data_while_erasing += 1
                if (self.data_while_erasing - 1) % WINDOW:
                    assert not any(isinstance(m, p.MsgError) for m in replies), replies
                    return
            if self.state != p.OtaState.RECEIVING:
                self.expect("data_next", replies)
            return
        size = len(s.data)
        offset, length = s.next_offset, min(CHUNK, size - s.next_offset)
        if kind == "repeat":
            offset = max(0, s.next_offset - CHUNK)
        elif kind == "skip":
            offset = s.next_offset + CHUNK
        elif kind == "past-end":
            offset, length = s.next_offset, CHUNK + 1
        payload = s.data[offset : offset + length] if kind not in ("empty", "too-big") else b""
        if kind == "too-big":
            payload = bytes(CHUNK + 1)
        if kind == "past-end":
            payload = (s.data[offset:] + b"\0" * length)[: min(length, CHUNK)]
        replies = self.d.write(p.encode(p.CmdOtaData(offset, payload)))
        if kind in ("empty", "too-big") or not payload:  # the length is checked first
            self.expect("data_length", replies)
        elif offset != s.next_offset:
            # answered with STATUS, rate-limited like every rejection: no error either way
            assert not any(isinstance(m, p.MsgError) for m in replies), replies
        elif offset + len(payload) > size:
            self.expect("data_past_end", replies)
        else:
            self.expect("data_next", replies)
            s.next_offset += len(payload)

    @rule()
    def finish(self) -> None:
        replies = self.d.write(p.encode(p.CmdOtaFinish()), settle_s=0.5)
        self.settle_erase()
        s = self.session
        if self.state != p.OtaState.RECEIVING or s is None or s.next_offset != len(s.data):
            self.expect("finish_incomplete", replies)
            return
        good = s.crc == p.crc32(s.data)
        cell = self.expect("finish" if good else "finish_crc_mismatch", replies)
        # what follows FINISH by itself (verify, then DONE or CRC_MISMATCH) came within 0.5 s
        following = {token.rstrip("+?") for token in cell.then}
        got = [contract.message_token(m) for m in replies]
        assert contract.matches(cell.then, [t for t in got if t in following]), (cell, replies)
        if good:
            assert p.MsgOtaDone(s.crc) in replies, replies
            self.active = s.data
            self.verified.add(s.data)
            self.state = p.OtaState.IDLE  # COMPLETE, then the device reset into the new image
        else:
            assert cell.then_state is not None
            self.state = cell.then_state
        self.session = None

    @rule()
    def abort(self) -> None:
        replies = self.d.write(p.encode(p.CmdOtaAbort()))
        self.settle_erase()
        self.expect("abort", replies)
        assert p.MsgOtaStatus(self.state, 0, 0, 0) in replies, replies
        self.session = None

    @rule()
    def reset(self) -> None:
        self.d.fw.power_cycle()
        self.state, self.session = p.OtaState.IDLE, None

    @rule(cut=st.integers(1, 5))  # CMD_OTA_ABORT is 6 bytes: always a partial frame
    def link_drop_mid_frame(self, cut: int) -> None:
        """Half a frame, then the link drops: the device must forget the half."""
        self.d.write(p.encode(p.CmdOtaAbort())[:cut])
        self.d.fw.link_lost()

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def status_matches_the_model(self) -> None:
        replies = self.d.write(p.encode(p.CmdOtaStatus()))
        statuses = [m for m in replies if isinstance(m, p.MsgOtaStatus)]
        assert statuses, replies
        status = statuses[-1]
        self.settle_erase()
        s = self.session
        if self.state == p.OtaState.ERASING and status.state == p.OtaState.RECEIVING:
            self.state = p.OtaState.RECEIVING  # within a millisecond of the erase's end
        assert status.state == self.state, (status, self.state)
        if s is not None:
            assert (status.image_size, status.image_crc32) == (len(s.data), s.crc)
            assert status.next_expected_offset == s.next_offset
        else:
            assert (status.image_size, status.image_crc32, status.next_expected_offset) == (0, 0, 0)

    @invariant()
    def only_verified_images_ever_run(self) -> None:
        assert self.d.fw.active.data == self.active
        assert self.d.fw.active.data in self.verified


@pytest.mark.sim_only
def test_the_device_answers_as_the_command_state_table_says() -> None:
    run_state_machine_as_test(
        DeviceProtocolModel,
        settings=settings(
            max_examples=default_examples() * 2, stateful_step_count=30, deadline=None
        ),
    )


@pytest.mark.sim_only
@pytest.mark.parametrize("start_session", [False, True])
def test_arbitrary_input_never_breaks_the_device(start_session: bool) -> None:
    @settings(max_examples=default_examples() * 3)
    @given(chunks=st.lists(command_frames(), max_size=20))
    def check(chunks: list[bytes]) -> None:
        d = FirmwareDriver()
        try:
            if start_session:
                d.write(p.encode(p.CmdOtaStart(len(IMAGES["A"]), p.crc32(IMAGES["A"]), CHUNK)))
                d.wait(1.0)
            for chunk in chunks:
                d.write(chunk)
            d.fw.link_lost()  # whatever half-frame is left goes with the link
            replies = d.write(p.encode(p.CmdOtaStatus()))
            assert any(isinstance(m, p.MsgOtaStatus) for m in replies), replies
            # Random bytes can at most be valid commands; the image that runs is always one
            # whose CRC the device verified.
            active = d.fw.active.data
            assert active == BASELINE or p.crc32(active) in d.verified_crcs
        finally:
            d.close()

    check()


# --- the same command sequences through a NUS link, on the device under test -----------------


class LinkDriver:
    """A NUS link to the device under test, on a loop of its own (hypothesis drives the
    state machine synchronously). On the simulator the loop runs on virtual time."""

    def __init__(self, target: object) -> None:
        self.target = target
        virtual = getattr(target, "is_sim", False)
        if virtual:
            self.runner = asyncio.Runner(loop_factory=virtual_event_loop)
        else:
            self.runner = asyncio.Runner()
        backend: BleBackend = target.backend  # type: ignore[attr-defined]
        self.link: NusLink = self.runner.run(self._open(backend))

    async def _open(self, backend: BleBackend) -> NusLink:
        t = self.target
        sighting = await find_device(backend, name=t.name, address=t.address, timeout=10)  # type: ignore[attr-defined]
        return await NusLink.open(sighting.ble_device, backend, LinkSettings(settle_s=0.5))

    def reconnect_if_lost(self) -> None:
        """A verified image makes the device reset: connect again, as a host would."""
        if not self.link.is_connected:
            self.runner.run(self.link.close())
            self.link = self.runner.run(self._open(self.target.backend))  # type: ignore[attr-defined]

    def request(self, cmd: p.Command, expect: tuple[type, ...], timeout: float = 10.0) -> object:
        return self.runner.run(self.link.request(cmd, expect, timeout))

    def send(self, cmd: p.Command) -> None:
        self.reconnect_if_lost()
        self.runner.run(self.link.send(cmd))

    def wait(self, seconds: float) -> None:
        self.runner.run(asyncio.sleep(seconds))

    def close(self) -> None:
        self.runner.run(self.link.close())
        self.runner.close()


def test_command_sequences_through_the_link_keep_the_device_safe(smartball: object) -> None:
    """On real hardware too: random command sequences over NUS; afterwards the device
    answers STATUS and runs only an image it verified. Fewer examples (real time)."""
    image = IMAGES["A"]

    @settings(
        max_examples=max(5, default_examples() // 10),
        stateful_step_count=15,
        deadline=None,
    )
    class OverTheLink(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.d = LinkDriver(smartball)
            info = self.d.request(p.CmdInfo(), (p.MsgInfo,))
            assert isinstance(info, p.MsgInfo)
            self.allowed = {info.active_image_crc32, p.crc32(image)}
            # On a signed-only device a session needs the manifest first (the suite's key).
            signer = SuiteKey.signer
            self.manifest = (
                signer.manifest_command(image, counter=info.security_counter)
                if info.signed_only and signer is not None
                else None
            )

        @initialize()
        def clean_state(self) -> None:
            self.d.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))

        @rule(wrong_crc=st.booleans(), signed=st.booleans())
        def start(self, wrong_crc: bool, signed: bool) -> None:
            crc = p.crc32(image) ^ (1 if wrong_crc else 0)
            if signed and self.manifest is not None:
                self.d.send(self.manifest)
            self.d.send(p.CmdOtaStart(len(image), crc, CHUNK))

        # Never more than three contiguous chunks: the device can never receive the whole
        # (random) image, so a real board cannot end up booting it.
        @rule(offset=st.sampled_from([0, CHUNK, 2 * CHUNK, len(image) - CHUNK, len(image)]))
        def data(self, offset: int) -> None:
            self.d.send(p.CmdOtaData(offset, image[offset : offset + CHUNK] or b"x"))

        @rule()
        def finish(self) -> None:
            self.d.send(p.CmdOtaFinish())

        @rule()
        def abort(self) -> None:
            self.d.send(p.CmdOtaAbort())

        @rule(seconds=st.sampled_from([0.05, 1.0]))
        def wait(self, seconds: float) -> None:
            self.d.wait(seconds)

        @invariant()
        def answers_status_and_runs_a_verified_image(self) -> None:
            self.d.wait(0.5)  # let a reset after a verified FINISH happen
            self.d.reconnect_if_lost()
            status = self.d.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
            assert isinstance(status, p.MsgOtaStatus), status
            info = self.d.request(p.CmdInfo(), (p.MsgInfo,))
            assert isinstance(info, p.MsgInfo)
            assert info.active_image_crc32 in self.allowed

        def teardown(self) -> None:
            try:
                self.d.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
            finally:
                self.d.close()

    run_state_machine_as_test(OverTheLink)

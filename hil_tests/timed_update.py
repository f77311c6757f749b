"""A whole update driven by a careful host that times everything the device owes it: the
firmware's timing obligations (pytest_smartball/contract/timing.json, docs/protocol.md
section 10) and the figures of each phase a release is compared on.

It speaks protocol v1 over a NUS link, so it measures a simulated and a real SmartBall
alike. Times are taken at the host when a message is handed to it or a write is queued:
they include the radio's delivery (a connection event or two each way), so each is an
upper bound of the device's own figure. The host keeps to the protocol's rules (credit
only from ACKs, a STATUS after a silence) and asks INFO and STATUS now and then, during
the erase and the transfer, to time the replies.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass, field

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.figures import BYTES_PER_SECOND, FigureRecorder
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import LinkLost, LinkSettings, NusLink, ResponseTimeout, find_device
from pytest_smartball.targets import Target

from .helpers import present_manifest

TIMING = contract.timing()
#: How often the host asks INFO or STATUS while the device erases or receives.
PROBE_EVERY_S = 0.3
#: Longest silence with chunks in flight before the host asks STATUS (as the engine does).
ACK_SILENCE_S = 3.0
#: Silences in a row (each answered by a STATUS) before the update is given up.
MAX_SILENCES = 5
#: On top of an obligation's limit, how long the host waits before it calls it missed.
WAIT_SLACK_S = 10.0


class UpdateFailed(AssertionError):
    """The device did not do its part; the message says what and where."""


@dataclass(slots=True)
class Probe:
    sent_at: float
    expect: type


@dataclass(slots=True)
class TimedUpdate:
    nus: NusLink
    target: Target
    image: FirmwareImage
    figures: FigureRecorder
    progress_at: list[float] = field(default_factory=list)
    reply_latencies: list[float] = field(default_factory=list)
    ack_latencies: list[float] = field(default_factory=list)
    rewinds: int = 0
    ready: p.MsgOtaReady | None = None
    #: "erase" or "transfer": the probes of the erase alternate INFO and STATUS; those
    #: of the transfer are INFO only (a STATUS there would rewind and bring an ACK).
    _phase: str = "erase"
    _probe: Probe | None = None
    _next_probe_at: float = 0.0
    _probe_count: int = 0

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    async def run(self) -> None:
        """The update; every figure is recorded as soon as it is measured."""
        t_start = await self._start()
        t_ready = await self._erase(t_start)
        await self._transfer(t_ready)
        t_done = await self._verify()
        t_lost = await self._reset(t_done)
        t_back = await self._advertise_and_confirm(t_lost)
        self.figures.record("update_s", t_back - t_start)

    # --- phases ------------------------------------------------------------------------

    async def _start(self) -> float:
        asked = self.now()
        reply = await self.nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
        self._reply_took(self.now() - asked)
        assert isinstance(reply, p.MsgOtaStatus), f"ABORT was answered with {reply}"
        signed = getattr(self.image, "signed", None)  # a signed image file's own manifest
        await present_manifest(
            self.nus, self.image.data, self.image.crc32, signed_head=signed and signed.head
        )
        t_start = self.now()
        self._next_probe_at = t_start + PROBE_EVERY_S
        await self.nus.send(p.CmdOtaStart(self.image.size, self.image.crc32, p.MAX_DATA_CHUNK))
        return t_start

    async def _erase(self, t_start: float) -> float:
        pages = math.ceil(self.image.size / 4096)
        deadline = t_start + (pages + 1) * TIMING.progress_gap_max_s + WAIT_SLACK_S
        while True:
            msg = await self._receive(deadline, "MSG_OTA_READY after CMD_OTA_START")
            if isinstance(msg, p.MsgOtaProgress):
                self.progress_at.append(self.now())
            elif isinstance(msg, p.MsgOtaReady):
                t_ready = self.now()
                self.ready = msg
                break
            elif isinstance(msg, p.MsgError):
                raise UpdateFailed(f"the device refused CMD_OTA_START: {msg}")
        self.figures.record("erase_s", t_ready - t_start)
        # START -> the first PROGRESS and between them; without any PROGRESS, the whole erase.
        marks = [t_start, *(self.progress_at or [t_ready])]
        gaps = [b - a for a, b in itertools.pairwise(marks)]
        self.figures.record("progress_gap_max_s", max(gaps), limit=TIMING.progress_gap_max_s)
        if self.progress_at:
            last = self.progress_at[-1]
            self.figures.record(
                "ready_after_erase_s", t_ready - last, limit=TIMING.ready_after_erase_max_s
            )
        return t_ready

    async def _transfer(self, t_ready: float) -> float:
        assert self.ready is not None
        self._phase = "transfer"
        data, size = self.image.data, self.image.size
        chunk = min(self.ready.max_chunk, self.nus.max_data_chunk)
        credit = max(1, self.ready.window) * chunk
        acked = sent = 0
        sent_at: dict[int, float] = {}
        silences = 0
        while acked < size:
            while sent < size and sent < acked + credit:
                end = min(sent + chunk, size)
                await self.nus.send_frame(p.encode_data_frame(sent, data[sent:end]))
                sent_at[end] = self.now()
                sent = end
            try:
                msg = await self._receive(self.now() + ACK_SILENCE_S, "MSG_OTA_ACK")
            except UpdateFailed:
                silences += 1
                if silences > MAX_SILENCES:
                    raise UpdateFailed(
                        f"no MSG_OTA_ACK for {MAX_SILENCES} silences of {ACK_SILENCE_S:g} s in "
                        f"a row, even after CMD_OTA_STATUS (acknowledged {acked} of {size})"
                    ) from None
                await self.nus.send(p.CmdOtaStatus())  # its reply rewinds, its ACK credits
                continue
            silences = 0
            if isinstance(msg, p.MsgOtaAck):
                offset = msg.next_expected_offset
                if offset in sent_at and offset > acked:
                    self.ack_latencies.append(self.now() - sent_at[offset])
                    self.figures.record(
                        "ack_latency_max_s",
                        max(self.ack_latencies),
                        limit=TIMING.ack_latency_max_s,
                    )
                acked = max(acked, offset)
            elif isinstance(msg, p.MsgOtaStatus):
                if msg.state != p.OtaState.RECEIVING:
                    raise UpdateFailed(f"the device left its session mid-transfer: {msg}")
                self.rewinds += 1
                sent = msg.next_expected_offset
            elif isinstance(msg, p.MsgError):
                raise UpdateFailed(f"the device refused CMD_OTA_DATA: {msg}")
        t_acked = self.now()
        self.figures.record(
            "transfer_bps",
            size / max(t_acked - t_ready, 1e-9),
            unit=BYTES_PER_SECOND,
            higher_is_better=True,
        )
        return t_acked

    async def _verify(self) -> float:
        self._probe = None  # no more probes: FINISH's answer is what counts now
        self.nus.drain()
        t_finish = self.now()
        await self.nus.send(p.CmdOtaFinish())
        limit = TIMING.verify_max_s(self.image.size)
        msg = await self.nus.wait_for(
            (p.MsgOtaDone, p.MsgError), limit + WAIT_SLACK_S, "MSG_OTA_DONE after CMD_OTA_FINISH"
        )
        t_done = self.now()
        self.figures.record("verify_s", t_done - t_finish, limit=limit)
        if msg != p.MsgOtaDone(self.image.crc32):
            raise UpdateFailed(
                f"FINISH after all {self.image.size} bytes (crc32 {self.image.crc32:08x}) was "
                f"answered with {msg}"
            )
        return t_done

    async def _reset(self, t_done: float) -> float:
        limit = TIMING.done_to_disconnect_max_s
        try:
            async with asyncio.timeout(limit + WAIT_SLACK_S):
                await self.nus.lost.wait()
        except TimeoutError:
            self.figures.record("done_to_disconnect_s", self.now() - t_done, limit=limit)
            raise UpdateFailed(
                f"the device kept the link {limit + WAIT_SLACK_S:g} s after MSG_OTA_DONE "
                "instead of resetting into the new image"
            ) from None
        t_lost = self.now()
        self.figures.record("done_to_disconnect_s", t_lost - t_done, limit=limit)
        return t_lost

    async def _advertise_and_confirm(self, t_lost: float) -> float:
        limit = TIMING.reset_to_advertising_max_s(activation=True)
        t = self.target
        sighting = await find_device(
            t.backend, name=t.name, address=t.address, timeout=limit + WAIT_SLACK_S
        )
        self.figures.record("reset_to_advertising_s", self.now() - t_lost, limit=limit)
        async with await NusLink.open(sighting.ble_device, t.backend, LinkSettings()) as link:
            info = await link.request(p.CmdInfo(), (p.MsgInfo,))
        assert isinstance(info, p.MsgInfo)
        if (info.active_image_size, info.active_image_crc32) != (self.image.size, self.image.crc32):
            raise UpdateFailed(
                f"after the reset the device runs {info.active_image_size} bytes, crc32 "
                f"{info.active_image_crc32:08x}, not the image it verified "
                f"({self.image.size} bytes, crc32 {self.image.crc32:08x})"
            )
        return self.now()

    # --- receiving, with probes ----------------------------------------------------------

    async def _receive(self, deadline: float, what: str) -> p.DeviceMessage:
        """The next message that is not a probe's reply, asking INFO / STATUS every
        PROBE_EVERY_S meanwhile; UpdateFailed naming ``what`` at the deadline."""
        while True:
            now = self.now()
            if self._probe is None and now >= self._next_probe_at:
                await self._send_probe()
            wake = min(deadline, self._next_probe_at) if self._probe is None else deadline
            if self._probe is not None:
                wake = min(wake, self._probe.sent_at + TIMING.reply_max_s + WAIT_SLACK_S)
            try:
                msg = await self.nus.receive(max(wake - self.now(), 1e-6))
            except ResponseTimeout:
                if self._probe is not None and self.now() >= self._probe.sent_at + WAIT_SLACK_S:
                    raise UpdateFailed(
                        f"no reply to {self._probe.expect.__name__}'s command within "
                        f"{WAIT_SLACK_S:g} s"
                    ) from None
                if self.now() >= deadline:
                    raise UpdateFailed(f"no {what} in time") from None
                continue
            except LinkLost as exc:
                raise UpdateFailed(f"the link dropped while waiting for {what}: {exc}") from None
            if self._probe is not None and isinstance(msg, self._probe.expect):
                self._reply_took(self.now() - self._probe.sent_at)
                self._probe = None
                self._next_probe_at = self.now() + PROBE_EVERY_S
                continue
            return msg

    async def _send_probe(self) -> None:
        use_status = self._phase == "erase" and self._probe_count % 2 == 1
        command: p.Command = p.CmdOtaStatus() if use_status else p.CmdInfo()
        self._probe = Probe(self.now(), p.MsgOtaStatus if use_status else p.MsgInfo)
        self._probe_count += 1
        await self.nus.send(command)

    def _reply_took(self, seconds: float) -> None:
        self.reply_latencies.append(seconds)
        self.figures.record("reply_max_s", max(self.reply_latencies), limit=TIMING.reply_max_s)

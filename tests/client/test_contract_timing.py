"""The protocol contract's timing obligations (pytest_smartball/contract/timing.json) held by
the reference firmware model, in both erase modes and through the simulated radio, and the
model's own rules of time (issue 10): it schedules in one place and compares clock times in
whole microseconds."""

from __future__ import annotations

import ast
import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from smartball_sim.device import SimDevice
from smartball_sim.firmware.model import FlashTimings, SmartBallFirmware
from smartball_sim.make_image import make_image
from tests.hosts import SimPeer

from .contract_cases import TIMING

# --- timing obligations against the model -----------------------------------------------------


class ZeroLatencyHost:
    """A host wired straight to the firmware: it sees a message the instant it is sent and
    reacts at once (on the loop, never inside the firmware's call). It follows the
    contract: credit only from ACKs, at most ``window`` chunks past the last ACK."""

    def __init__(self, fw_kwargs: dict[str, Any], image: bytes) -> None:
        self.loop = asyncio.get_running_loop()
        self.image = image
        self.decoder = p.FrameDecoder()
        self.log: list[tuple[float, p.Message]] = []
        self.sent: list[tuple[float, p.Message]] = []
        self.resets: list[float] = []
        self.fw = SmartBallFirmware(
            send=self._on_frame, request_reset=lambda: self.resets.append(self.now()), **fw_kwargs
        )
        self.ready: p.MsgOtaReady | None = None
        self.acked = 0
        self.next = 0
        self.done = asyncio.Event()

    def now(self) -> float:
        return self.loop.time()

    def send(self, msg: p.Message) -> None:
        self.sent.append((self.now(), msg))
        self.fw.receive(p.encode(msg))

    def _on_frame(self, frame: bytes) -> None:
        for f in self.decoder.feed(frame):
            msg = p.parse_message(f)
            self.log.append((self.now(), msg))
            self.loop.call_soon(self._react, msg)

    def _react(self, msg: p.Message) -> None:
        if isinstance(msg, p.MsgOtaReady):
            self.ready, self.acked = msg, self.next
        elif isinstance(msg, p.MsgOtaAck):
            self.acked = max(self.acked, msg.next_expected_offset)
        elif isinstance(msg, p.MsgOtaDone | p.MsgError):
            self.done.set()
            return
        else:
            return
        self._stream()

    def _stream(self) -> None:
        assert self.ready is not None
        chunk, size = self.ready.max_chunk, len(self.image)
        while self.next < size and self.next < self.acked + self.ready.window * chunk:
            end = min(self.next + chunk, size)
            self.send(p.CmdOtaData(self.next, self.image[self.next : end]))
            self.next = end
        if self.acked == size and not any(isinstance(m, p.CmdOtaFinish) for _, m in self.sent):
            self.send(p.CmdOtaFinish())

    def times(self, kind: type) -> list[float]:
        return [t for t, m in self.log if isinstance(m, kind)]


def _timing_cases() -> list[tuple[str, int, bool, FlashTimings]]:
    field = FlashTimings(erase_total_s=40.0)  # the field's slowest erase, yielding
    return [
        ("field-image", 323_194, False, FlashTimings()),
        ("full-staging", 480 * 1024, False, FlashTimings()),
        ("field-image-40s-erase", 323_194, False, field),
        ("field-image-progressive", 323_194, True, FlashTimings()),
        ("full-staging-progressive", 480 * 1024, True, FlashTimings()),
    ]


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize(
    ("size", "progressive", "timings"),
    [c[1:] for c in _timing_cases()],
    ids=[c[0] for c in _timing_cases()],
)
async def test_the_model_meets_its_timing_obligations(
    size: int, progressive: bool, timings: FlashTimings
) -> None:
    image = make_image(size, 4)
    host = ZeroLatencyHost(
        {
            "active_image": b"\x00" * 100,
            "window": 16,
            "timings": timings,
            "progressive_erase": progressive,
        },
        image,
    )
    flags = p.StartFlag.PROGRESSIVE_ERASE if progressive else 0
    t_start = host.now()
    host.send(p.CmdOtaStart(size, p.crc32(image), 232, flags=flags))
    # a host asking INFO / STATUS now and then, erase or not, to time the replies
    probes: list[tuple[float, type]] = []

    async def probe() -> None:
        for k in range(200):
            await asyncio.sleep(0.0371 * (k % 7 + 1))
            if host.done.is_set():
                return
            cmd = (p.CmdInfo(), p.CmdOtaStatus())[k % 2]
            probes.append((host.now(), p.MsgInfo if k % 2 == 0 else p.MsgOtaStatus))
            host.send(cmd)

    prober = asyncio.get_running_loop().create_task(probe())
    async with asyncio.timeout(300):
        await host.done.wait()
    await prober
    assert isinstance(host.log[-1][1], p.MsgOtaDone), host.log[-1]

    progress = host.times(p.MsgOtaProgress)
    (ready,) = host.times(p.MsgOtaReady)
    if progressive:
        assert progress == [] and ready == t_start  # READY at once, no erase PROGRESS
    else:
        assert len(progress) == math.ceil(size / 4096)
        gaps = [b - a for a, b in zip([t_start, *progress], progress, strict=False)]
        assert max(gaps) <= TIMING.progress_gap_max_s
        assert ready - progress[-1] <= TIMING.ready_after_erase_max_s
    # every ACK: from the DATA that completed its interval (or the image) to the ACK
    data_end = {m.offset + len(m.data): t for t, m in host.sent if isinstance(m, p.CmdOtaData)}
    latencies = [
        t - data_end[m.next_expected_offset]
        for t, m in host.log
        if isinstance(m, p.MsgOtaAck) and m.next_expected_offset in data_end
    ]
    assert latencies and max(latencies) <= TIMING.ack_latency_max_s
    # every probe answered within reply_max_s
    for asked_at, kind in probes:
        answer = next(t for t, m in host.log if t >= asked_at and isinstance(m, kind))
        assert answer - asked_at <= TIMING.reply_max_s, (asked_at, kind)
    (finish_at,) = [t for t, m in host.sent if isinstance(m, p.CmdOtaFinish)]
    (done_at,) = host.times(p.MsgOtaDone)
    assert done_at - finish_at <= TIMING.verify_max_s(size)
    assert host.resets and host.resets[0] - done_at <= TIMING.done_to_disconnect_max_s


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("size", [4096, 480 * 1024])
async def test_activation_ends_the_link_and_advertises_within_the_obligations(size: int) -> None:
    """Through the simulated radio: DONE on air -> the device ends the link within
    done_to_disconnect_max_s; advertising again within the activation's limit (the
    bootloader copies the image); a plain reset advertises within the other limit."""
    image = make_image(size, 5)
    device = SimDevice(active_image=b"\x01" * 1000, window=16)
    peer = SimPeer()
    link = await device.connect(peer)
    loop = asyncio.get_running_loop()

    async def write(msg: p.Message) -> None:
        await device.write(link, p.encode(msg))

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():  # noqa: ASYNC110 - polls the simulated device, virtual time
            await asyncio.sleep(0.005)

    def acked() -> int:
        acks = [m.next_expected_offset for m in peer.messages if isinstance(m, p.MsgOtaAck)]
        return max(acks, default=0)

    await write(p.CmdOtaStart(size, p.crc32(image), 232))
    await until(lambda: any(isinstance(m, p.MsgOtaReady) for m in peer.messages))
    for offset in range(0, size, 232):
        if offset >= acked() + 16 * 232:  # out of credit: wait for an ACK
            await until(lambda: offset < acked() + 16 * 232)  # noqa: B023 - awaited at once
        await write(p.CmdOtaData(offset, image[offset : offset + 232]))
    await until(lambda: acked() == size)
    await write(p.CmdOtaFinish())
    await until(lambda: bool(peer.lost))
    (done_at,) = [t for t, m in peer.timed() if isinstance(m, p.MsgOtaDone)]
    assert peer.lost[0][0] - done_at <= TIMING.done_to_disconnect_max_s
    reset_at = peer.lost[0][0]
    await until(lambda: device.advertising)
    assert loop.time() - reset_at <= TIMING.reset_to_advertising_max_s(activation=True)
    assert device.firmware.active.data == image
    # a reset without an image to switch to
    reset_at = loop.time()
    device.reboot()
    await until(lambda: device.advertising)
    assert loop.time() - reset_at <= TIMING.reset_to_advertising_max_s(activation=False)


# --- the reference model's own rules (issue 10) ------------------------------------------------


def test_the_firmware_schedules_in_one_place() -> None:
    """Every step goes through SmartBallFirmware._at, which the reset guard wraps: no
    other call_at / call_later / call_soon / create_task in the module or its parts (the
    folder sim/smartball_sim/firmware/ but the C core's glue, c_*.py)."""
    import smartball_sim.firmware.model as module

    where = []
    parts = sorted(Path(module.__file__).parent.glob("*.py"))
    assert len(parts) >= 8, parts  # the folder, not one file
    for path in [path for path in parts if not path.name.startswith("c_")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for call in ast.walk(node):
                    if (
                        isinstance(call, ast.Call)
                        and isinstance(call.func, ast.Attribute)
                        and call.func.attr
                        in {"call_at", "call_later", "call_soon", "create_task", "ensure_future"}
                    ):
                        where.append(node.name)
    assert where == ["_at"]


def test_the_simulator_compares_clock_times_in_whole_microseconds() -> None:
    """Issue 10: looptime rounds its clock to microseconds, so no simulator module may
    compare a float time exactly. A comparison that reads the clock (``.time()``,
    ``now()``) must go through ``to_us``."""
    import smartball_sim

    offenders = []
    for path in Path(smartball_sim.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            text = ast.unparse(node)
            reads_clock = ".time()" in text or "now()" in text or "now " in f"{text} "
            if reads_clock and "to_us(" not in text and "_us" not in text:
                offenders.append(f"{path.name}:{node.lineno}: {text}")
    assert offenders == []

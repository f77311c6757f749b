"""A progressive session's window (``progressive_window_bytes``): READY grants enough credit
for the radio to go on while a page erases, the receive buffer and the ACK interval follow
it, and nothing changes for the normal mode or a device configured without it.

Why the window must grow, measured on the model (docs/performance.md): with the normal
16-chunk window the progressive transfer of the field image takes 11.3 s on the default
radio profile (its bound 10.03 s) and 14.7 s on ``bluez-default`` (bound 10.47 s); with
8 KB it is at the bound on both.
"""

from __future__ import annotations

import asyncio

import pytest

from pytest_smartball.contract.codec import CmdOtaData, MsgOtaAck, MsgOtaReady, MsgOtaStatus
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import EventKind, OtaEngine
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.firmware.model import SmartBallFirmware
from smartball_sim.make_image import make_image
from tests.firmware_harness import NEW_IMAGE, SLOW_FLASH, Harness, start_for

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

TWO_PAGES = 8192


async def test_the_window_covers_the_bytes_in_whole_chunks_and_never_shrinks() -> None:
    fw = SmartBallFirmware(active_image=b"", window=16, progressive_window_bytes=TWO_PAGES)
    assert fw.session_window(True, 232) == 36  # ceil(8192 / 232)
    assert fw.session_window(True, 500) == 17
    assert fw.session_window(True, 8) == 1024  # MTU 23: still 8 KB of buffer
    assert fw.session_window(True, 4096) == 16  # never below the normal window
    assert fw.session_window(False, 232) == 16  # the normal mode keeps its window
    plain = SmartBallFirmware(active_image=b"", window=16)
    assert plain.session_window(True, 232) == 16  # not configured: as before


async def test_ready_grants_it_and_a_resume_recomputes_it_for_the_new_chunk() -> None:
    h = Harness(
        window=16, timings=SLOW_FLASH, progressive_erase=True, progressive_window_bytes=TWO_PAGES
    )
    assert h.ask(start_for(NEW_IMAGE, chunk=232, flags=1)) == MsgOtaReady(232, 36)
    h.send(CmdOtaData(0, NEW_IMAGE[:232]))
    await asyncio.sleep(0.2)
    h.take()
    h.send(start_for(NEW_IMAGE, chunk=100))  # a resume after a reconnect at a smaller MTU
    await asyncio.sleep(0.01)
    assert h.take() == [MsgOtaReady(100, 82)]  # ceil(8192 / 100)


async def test_a_whole_window_fits_while_a_page_erases_and_acks_come_per_half_window() -> None:
    h = Harness(
        window=16, timings=SLOW_FLASH, progressive_erase=True, progressive_window_bytes=TWO_PAGES
    )
    assert h.ask(start_for(NEW_IMAGE, chunk=232, flags=1)) == MsgOtaReady(232, 36)
    # 36 chunks at once: the first needs page 0 erased (85 ms), the 18th page 1; all of
    # them fit the buffer, none is refused.
    end = min(36 * 232, len(NEW_IMAGE))
    for offset in range(0, end, 232):
        h.send(CmdOtaData(offset, NEW_IMAGE[offset : min(offset + 232, len(NEW_IMAGE))]))
    await asyncio.sleep(0.5)
    msgs = h.take()
    assert not any(isinstance(m, MsgOtaStatus) for m in msgs), msgs
    assert h.fw.data.dropped_full == 0
    acks = [m.next_expected_offset for m in msgs if isinstance(m, MsgOtaAck)]
    assert acks == [18 * 232, 36 * 232]  # every 18 chunks, half of 36 (not every 8)


async def test_the_normal_mode_is_unchanged() -> None:
    h = Harness(window=16, timings=SLOW_FLASH, progressive_window_bytes=TWO_PAGES)
    await h.start_and_wait_ready(chunk=232)
    assert h.fw.session is not None and h.fw.session.window == 16


@pytest.mark.parametrize(
    "plan", ["", "drop@erase:50%", "drop@offset:60000", "reboot@offset:60000", "lose:MSG_OTA_ACK"]
)
async def test_the_engine_finishes_with_the_wider_window_through_the_faults(plan: str) -> None:
    image = FirmwareImage(make_image(100_000, 3), "progressive.bin")
    target = make_sim_target(
        progressive_erase=True, progressive_window_bytes=TWO_PAGES, faults=plan
    )
    assert target.sim is not None
    result = await OtaEngine(image, target.backend).run()
    assert result.success, result.error
    assert target.sim.firmware.active.data == image.data
    assert target.sim.firmware.data.dropped_full == 0  # the credit kept within the buffer
    ready = [e.detail for e in result.events if e.kind is EventKind.READY]
    assert ready and all(detail.endswith("window 36") for detail in ready)

"""A board whose power is cut in the middle of an update (docs/protocol.md 7.7: a reset
ends the session; the old image stays until a verified one is switched to). On the
simulator the plugin resets the simulated device; on hardware these tests need the lab's
``pytest_smartball_power_cycle`` hook (a switchable USB hub, ...) and skip without it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets import Target

from . import conformance as c
from .conformance import DROP_AT, SMALL, TIMING
from .helpers import present_manifest, reconnect

pytestmark = pytest.mark.asyncio

PowerCycle = Callable[[], Awaitable[None]]


async def back_after_reset(target: Target) -> NusLink:
    await asyncio.sleep(0)  # (the reset's link loss is delivered first)
    return await reconnect(target)


async def test_a_power_cut_mid_transfer_ends_the_session(
    nus: NusLink, smartball: Target, power_cycle: PowerCycle
) -> None:
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    ready = await c.start(nus, SMALL)
    await c.stream(nus, SMALL, ready, DROP_AT)
    await power_cycle()
    async with await back_after_reset(smartball) as link:
        status = await link.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
        assert status == p.MsgOtaStatus(p.OtaState.IDLE, 0, 0, 0), (
            f"after a power cut mid-transfer the device says {status}: a reset must end the "
            "session (docs/protocol.md 7.7), its receive buffer died with the RAM"
        )
        assert await link.request(p.CmdInfo(), (p.MsgInfo,)) == before


async def test_a_power_cut_during_the_erase_keeps_the_old_image(
    nus: NusLink, smartball: Target, power_cycle: PowerCycle
) -> None:
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(before, p.MsgInfo)
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    image = c.erase_image(before.staging_capacity)
    await present_manifest(nus, image, info=before)
    await nus.send(p.CmdOtaStart(len(image), p.crc32(image), c.CHUNK))
    await nus.wait_for((p.MsgOtaProgress,), TIMING.progress_gap_max_s + 1, "MSG_OTA_PROGRESS")
    await power_cycle()
    async with await back_after_reset(smartball) as link:
        status = await link.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
        assert status == p.MsgOtaStatus(p.OtaState.IDLE, 0, 0, 0), status
        assert await link.request(p.CmdInfo(), (p.MsgInfo,)) == before


async def test_an_update_survives_a_power_cut_mid_transfer(
    ota: Callable[..., OtaEngine], firmware_image: FirmwareImage, power_cycle: PowerCycle
) -> None:
    """The engine finds the session gone after the reset, starts over, and finishes."""
    cuts: list[asyncio.Future[None]] = []

    def on_progress(phase: str, done: int, total: int) -> None:
        if phase == "transfer" and not cuts and done > total // 2:
            cuts.append(asyncio.ensure_future(power_cycle()))

    result = await ota(on_progress=on_progress).run()
    assert cuts, "the transfer never passed halfway"
    await cuts[0]
    assert result.success, result.error
    assert result.restarts >= 1, "the session cannot have survived the power cut"
    assert result.info_after is not None
    assert result.info_after.active_image_crc32 == firmware_image.crc32

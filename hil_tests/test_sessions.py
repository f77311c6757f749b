"""A session outlives a link drop and nothing of an abandoned one leaks into the next
(docs/protocol.md 7.3, 7.6, 7.7), on the simulator and on hardware."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets import Target

from . import conformance as c
from .conformance import CHUNK, DROP_AT, SMALL, TIMING
from .helpers import present_manifest, reconnect

pytestmark = pytest.mark.asyncio


async def test_a_link_drop_keeps_the_session_and_its_offset(
    nus: NusLink, smartball: Target
) -> None:
    """The host drops the link after the device acknowledged DROP_AT bytes; on the next
    link STATUS says the same session at exactly that offset, a START for it answers READY
    at once, and the rest completes it."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    ready = await c.start(nus, SMALL)
    assert await c.stream(nus, SMALL, ready, DROP_AT) == DROP_AT
    await nus.close()
    async with await reconnect(smartball) as link:
        status = await link.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
        assert status == p.MsgOtaStatus(
            p.OtaState.RECEIVING, DROP_AT, len(SMALL), p.crc32(SMALL)
        ), (
            f"after a link drop at {DROP_AT} bytes the device says {status} (docs/protocol.md "
            "7.7: the session and next_expected_offset stay)"
        )
        await c.settle(link)
        await link.send(p.CmdOtaStart(len(SMALL), p.crc32(SMALL), CHUNK))
        resumed = await link.wait_for(
            (p.MsgOtaReady, p.MsgOtaProgress, p.MsgError),
            TIMING.reply_max_s + c.RADIO_MARGIN_S,
            "MSG_OTA_READY for a resume",
        )
        assert resumed == p.MsgOtaReady(CHUNK, ready.window), (
            f"a START for the session's image answered {resumed}, not READY (a resume, 7.6)"
        )
        assert isinstance(resumed, p.MsgOtaReady)
        await c.stream(link, SMALL, resumed, len(SMALL), start=DROP_AT)  # within the credit
        await link.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))


async def test_a_link_drop_during_the_erase_lets_the_erase_go_on(
    nus: NusLink, smartball: Target
) -> None:
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo)
    image = c.erase_image(info.staging_capacity)
    await present_manifest(nus, image, info=info)
    await nus.send(p.CmdOtaStart(len(image), p.crc32(image), CHUNK))
    await nus.wait_for((p.MsgOtaProgress,), 5.0, "the erase's first MSG_OTA_PROGRESS")
    await nus.close()
    async with await reconnect(smartball) as link:
        status = await link.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
        assert isinstance(status, p.MsgOtaStatus)
        assert (status.state, status.image_size, status.image_crc32) in (
            (p.OtaState.ERASING, len(image), p.crc32(image)),
            (p.OtaState.RECEIVING, len(image), p.crc32(image)),
        ), f"after a link drop during the erase the device says {status}"
        await link.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))


async def test_an_update_after_an_abandoned_session_succeeds(
    nus: NusLink, ota: Callable[..., OtaEngine], firmware_image: FirmwareImage
) -> None:
    """The staging bank holds what an abandoned session wrote (as on every real board): the
    next session must erase every page its image touches, the partial last one too."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    pages = -(-firmware_image.size // c.PAGE_SIZE)
    leftover = random.Random(19).randbytes(pages * 4096)  # never finished: aborted below
    ready = await c.start(nus, leftover)
    await c.stream(nus, leftover, ready, len(leftover))
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    await nus.close()
    result = await ota().run()
    assert result.success, result.error
    assert result.info_after is not None
    assert result.info_after.active_image_crc32 == firmware_image.crc32

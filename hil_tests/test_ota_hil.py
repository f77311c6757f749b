"""Whole updates through the OTA engine, simulated or real."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine

pytestmark = pytest.mark.asyncio


async def test_full_update_activates_the_new_image(
    ota: Callable[..., OtaEngine], firmware_image: FirmwareImage
) -> None:
    result = await ota().run()
    assert result.success, result.error
    assert result.info_after is not None
    assert result.info_after.active_image_size == firmware_image.size
    assert result.info_after.active_image_crc32 == firmware_image.crc32
    assert result.bytes_sent >= firmware_image.size


async def test_host_drops_the_link_mid_transfer_and_the_update_resumes(
    ota: Callable[..., OtaEngine], firmware_image: FirmwareImage
) -> None:
    """Holds on real hardware too: the host closes the link itself halfway through."""
    dropped: list[int] = []
    engine: OtaEngine

    def on_progress(phase: str, done: int, total: int) -> None:
        link = engine.link
        if phase == "transfer" and not dropped and done > total // 2 and link is not None:
            dropped.append(done)
            asyncio.get_running_loop().create_task(link.close())

    engine = ota(on_progress=on_progress)
    result = await engine.run()
    assert dropped, "the transfer never passed halfway"
    assert result.success, result.error
    # At least the resume we caused (a real radio, or a --sim-faults plan, may add more).
    assert result.resumes >= 1
    assert result.info_after is not None
    assert result.info_after.active_image_crc32 == firmware_image.crc32

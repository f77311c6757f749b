"""Whole updates through the OTA engine, simulated or real."""

from __future__ import annotations

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

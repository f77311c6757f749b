"""The lower bound follows the erase mode (issue 15): normal erase + max(radio, flash),
progressive max(radio, erase + flash); and it is a lower bound: no simulated update beats it."""

from __future__ import annotations

import pytest

from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.device import RadioTimings
from smartball_sim.firmware.model import FlashTimings
from smartball_sim.make_image import FIELD_IMAGE_SIZE, make_image
from smartball_sim.radio.profiles import PROFILES
from smartball_sim.timing import lower_bound

BOOT_S = RadioTimings().boot_s


def test_the_field_image_on_the_default_profile() -> None:
    """The figures docs/performance.md derives by hand."""
    normal = lower_bound(FIELD_IMAGE_SIZE, PROFILES["default"], FlashTimings(), BOOT_S)
    assert normal.erase_s == pytest.approx(79 * 0.085)
    assert normal.radio_s == pytest.approx(349 * 0.015)
    assert normal.transfer_s == normal.radio_s  # the radio is slower than the flash
    assert normal.total_s == pytest.approx(24.056, abs=1e-3)
    progressive = lower_bound(
        FIELD_IMAGE_SIZE, PROFILES["default"], FlashTimings(), BOOT_S, progressive=True
    )
    # erase + write (6.715 + 3.313 s) is slower than the radio (5.235 s): the flash bounds it
    assert progressive.transfer_s == pytest.approx(6.715 + 3.313, abs=1e-3)
    assert progressive.total_s == pytest.approx(normal.total_s - 5.235 - 6.715 + 10.028, abs=1e-3)


def test_on_a_slow_radio_progressive_hides_the_whole_erase() -> None:
    radio = PROFILES["bluez-default"]
    normal = lower_bound(FIELD_IMAGE_SIZE, radio, FlashTimings(), BOOT_S)
    progressive = lower_bound(FIELD_IMAGE_SIZE, radio, FlashTimings(), BOOT_S, progressive=True)
    assert progressive.transfer_s == normal.radio_s  # 10.47 s of radio > 10.03 s of flash
    assert normal.total_s - progressive.total_s == pytest.approx(normal.erase_s)


def test_the_field_erase_idles_between_pages_only_in_the_normal_mode() -> None:
    field = FlashTimings(erase_total_s=15.0)
    radio = PROFILES["default"]
    assert lower_bound(FIELD_IMAGE_SIZE, radio, field, BOOT_S).erase_s == pytest.approx(15.0)
    on_demand = lower_bound(FIELD_IMAGE_SIZE, radio, field, BOOT_S, progressive=True)
    assert on_demand.erase_s == pytest.approx(79 * 0.085)


def test_link_setup_is_two_connections_on_top() -> None:
    bound = lower_bound(65536, PROFILES["default"], FlashTimings(), BOOT_S, connect_s=0.3)
    assert bound.link_setup_s == pytest.approx(0.6)
    assert bound.total_s == pytest.approx(bound.without_link_setup_s + 0.6)


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("profile", ["default", "bluez-default"])
@pytest.mark.parametrize("progressive", [False, True])
async def test_no_simulated_update_beats_its_bound(profile: str, progressive: bool) -> None:
    image = FirmwareImage(make_image(40_000, 5), "bound.bin")
    radio = RadioTimings(link=PROFILES[profile])
    target = make_sim_target(
        radio=radio, progressive_erase=progressive, progressive_window_bytes=8192
    )
    device = target.sim
    assert device is not None
    result = await OtaEngine(image, target.backend).run()
    assert result.success, result.error
    bound = lower_bound(
        image.size,
        radio.link,
        device.flash_timings,
        radio.boot_s,
        progressive=progressive,
        connect_s=radio.connect_s,
    )
    assert result.duration_s >= bound.total_s
    assert result.phase_s["transferring"] >= bound.transfer_s
    if progressive:  # READY at once: no erase before it
        assert result.phase_s["waiting-ready"] < bound.erase_s / 10

"""Between tests on real hardware the device goes back to idle and its baseline image
(pytest_smartball.known_state); exercised here against simulated devices through bleak."""

from __future__ import annotations

import asyncio

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.known_state import CHECK_TIMEOUT_S, ResetFailed, return_to_baseline
from pytest_smartball.link import LinkSettings
from pytest_smartball.ota import OtaEngine, OtaSettings
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.make_image import make_image

# Virtual time: a 40 s erase costs milliseconds, and timings are exact.
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

BASELINE = FirmwareImage(make_image(6_000, 1), "baseline.bin")
CANDIDATE = FirmwareImage(make_image(9_000, 2), "candidate.bin")
SETTINGS = OtaSettings(link=LinkSettings(settle_s=0.2), reappear_timeout_s=10)


def target(**kwargs):
    return make_sim_target("SmartBall", "C0:FF:EE:00:00:01", active_image=BASELINE.data, **kwargs)


async def reset(bench, image: FirmwareImage | None = BASELINE):
    return await return_to_baseline(
        bench.backend,
        name="SmartBall",
        address=bench.sim.address,
        baseline=sim_baseline,
        baseline_image=image,
        settings=SETTINGS,
    )


sim_baseline = target().sim.firmware.info()


async def test_a_device_left_idle_on_its_baseline_is_left_alone() -> None:
    bench = target()
    outcome = await reset(bench)
    assert outcome.state_before == "idle"
    assert outcome.restored is None and outcome.warning is None
    assert outcome.info == sim_baseline


class GiveUp(Exception):
    pass


async def test_a_session_left_half_done_is_aborted() -> None:
    bench = target()

    def stop_halfway(phase: str, done: int, total: int) -> None:
        if phase == "transfer" and done > total // 2:
            raise GiveUp  # a test that stops mid-transfer

    engine = OtaEngine(
        CANDIDATE,
        bench.backend,
        address=bench.sim.address,
        settings=SETTINGS,
        on_progress=stop_halfway,
    )
    with pytest.raises(GiveUp):
        await engine.run()
    assert bench.sim.firmware.state == p.OtaState.RECEIVING
    outcome = await reset(bench)
    assert outcome.state_before == "receiving"
    assert bench.sim.firmware.state == p.OtaState.IDLE
    assert outcome.restored is None and outcome.info == sim_baseline


async def test_another_image_active_is_replaced_by_the_baseline() -> None:
    bench = target()
    flashed = await OtaEngine(
        CANDIDATE, bench.backend, address=bench.sim.address, settings=SETTINGS
    ).run()
    assert flashed.success, flashed.error
    assert bench.sim.firmware.active.data == CANDIDATE.data
    outcome = await reset(bench)
    assert outcome.found.active_image_crc32 == CANDIDATE.crc32
    assert outcome.restored is not None and outcome.restored.success
    assert bench.sim.firmware.active.data == BASELINE.data
    assert outcome.info.active_image_crc32 == BASELINE.crc32


async def test_without_a_baseline_image_it_says_so() -> None:
    bench = target()
    assert (
        await OtaEngine(
            CANDIDATE, bench.backend, address=bench.sim.address, settings=SETTINGS
        ).run()
    ).success
    outcome = await reset(bench, image=None)
    assert outcome.restored is None
    assert outcome.warning is not None
    assert f"runs crc32 {CANDIDATE.crc32:08x}" in outcome.warning
    assert "--baseline-firmware PATH" in outcome.warning
    assert bench.sim.firmware.active.data == CANDIDATE.data


async def test_a_device_that_is_gone_fails_the_reset_in_bounded_time() -> None:
    """It waits as long as a device back from a reset gets (the reappear timeout), and gives
    up within the check's own bound after that; simulated seconds, exact under looptime."""
    bench = target()
    bench.sim.pause_advertising(3600)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ResetFailed, match="could not return the SmartBall C0:FF:EE:00:00:01"):
        await reset(bench)
    waited = loop.time() - started
    assert SETTINGS.reappear_timeout_s <= waited <= CHECK_TIMEOUT_S + SETTINGS.reappear_timeout_s

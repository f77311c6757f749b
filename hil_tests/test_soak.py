"""``--smartball-soak N``: N back-to-back updates on each device, alternating the release
image and the baseline (candidate, baseline, candidate, ...). The summary (min / median /
max of each figure per direction, every failure with its timeline) goes into the terminal
summary and the smartball report; the test fails if any update failed.

On the simulator ``--sim-faults`` is re-armed before every update, so a fault profile
soaks the engine and the firmware together: that is the nightly-sized run (.ci/nightly),
not CI's. Without the option the test skips."""

from __future__ import annotations

import pytest

from pytest_smartball import soak
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine, OtaSettings
from pytest_smartball.plugin.fixtures import SoakPlan
from pytest_smartball.targets import Target

pytestmark = pytest.mark.asyncio


@pytest.mark.timeout(24 * 3600)  # bounded by N updates, each bounded by the engine
async def test_soak(
    smartball: Target,
    firmware_image: FirmwareImage,
    ota_settings: OtaSettings,
    smartball_soak: SoakPlan,
) -> None:
    plan = smartball_soak
    if not plan.updates:
        pytest.skip("runs with --smartball-soak N (N back-to-back updates per device)")
    if plan.baseline is None:
        pytest.skip("a soak on hardware alternates with --baseline-firmware: pass it")
    sim = smartball.sim
    updates: list[soak.SoakUpdate] = []
    for iteration in range(1, plan.updates + 1):
        role = soak.CANDIDATE if iteration % 2 else soak.BASELINE
        image = firmware_image if role == soak.CANDIDATE else plan.baseline
        logged = 0
        if sim is not None:
            sim.set_faults(plan.faults)  # every update meets the whole plan
            logged = len(sim.fault_log)
        engine = OtaEngine(
            image,
            smartball.backend,
            name=smartball.name,
            address=smartball.address,
            settings=ota_settings,
        )
        result = await engine.run()
        device_log = [str(r) for r in sim.fault_log[logged:]] if sim is not None else []
        updates.append(soak.SoakUpdate(iteration, role, result, device_log))
    summary = soak.summary(updates, device=smartball.address, faults=plan.faults)
    plan.record(summary)
    if summary["failures"]:
        pytest.fail("\n".join(soak.lines(summary)), pytrace=False)

"""Differential check: the same seeded fault plans over our radio model and over Bumble end
the same way (success, or the same clean failure) with the same image on the device.

Bumble moves bytes without airtime, so times differ (durations, when a time-triggered
fault fires) and the engine may send a different number of commands; docs/faults.md lists
what legitimately differs. The plans here leave out what depends on time or on how many
random draws a link makes (``t:`` triggers, ``flaky``, ``cmd:`` triggers on commands whose
count depends on timing), as many refused connects in a row as bleak-retry-connector
retries (BlueZ's error is transient, Bumble's a connect error), and BlueZ's own faults
(``race``, ``stale-cache``), which the Bumble link refuses. A disagreement on what remains
is a bug in one of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, event, example, given, note, settings
from hypothesis import strategies as st

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import LinkSettings
from pytest_smartball.loops import run as run_loop
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.bumble import make_bumble_target
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.bumble.faults import BLUEZ_ONLY_EFFECTS
from smartball_sim.faults import EFFECTS, Effect, FaultPlan
from smartball_sim.fuzz_inputs import UNFINISHABLE_EFFECTS, faults, image_specs, triggers
from smartball_sim.make_image import make_image

#: Effects whose outcome does not depend on timing or on the link's random draws.
COMPARABLE_EFFECTS = sorted(
    frozenset(EFFECTS) - BLUEZ_ONLY_EFFECTS - UNFINISHABLE_EFFECTS - {Effect.FLAKY}
)
#: Commands the engine sends a timing-independent number of times.
COUNTED_COMMANDS = (p.MsgType.CMD_OTA_START, p.MsgType.CMD_OTA_FINISH)
SMALL_IMAGE_MAX = 12 * 1024
EXAMPLES = max(10, settings().max_examples // 2)


@dataclass(frozen=True, slots=True)
class Ending:
    """What an update ends in, as far as the two links must agree."""

    success: bool
    failure: str | None
    active_crc32: int
    active_size: int


def run(link: str, image: FirmwareImage, plan: FaultPlan, seed: int) -> Ending:
    make = make_bumble_target if link == "bumble" else make_sim_target
    target = make(faults=plan, seed=seed)
    device = target.sim
    assert device is not None
    engine = OtaEngine(image, target.backend, address=device.address)
    result = run_loop(engine.run(), virtual=True)
    note(f"{link}: {'ok' if result.success else result.error} in {result.duration_s:.2f} s")
    for ota_event in result.events:
        note(f"  {link} {ota_event}")
    for record in device.fault_log:
        note(f"  {link} device: {record}")
    active = device.firmware.active
    failure = result.failure.value if result.failure else None
    return Ending(result.success, failure, active.crc32, len(active.data))


@st.composite
def cases(draw: st.DrawFn) -> tuple[FirmwareImage, FaultPlan, int]:
    spec = draw(image_specs(max_size=SMALL_IMAGE_MAX))
    image = FirmwareImage(spec.data, spec.name)
    comparable = faults(
        image.size,
        effects=COMPARABLE_EFFECTS,
        trigger_strategy=triggers(image.size, timed=False, commands=COUNTED_COMMANDS),
    )
    plan = draw(st.lists(comparable, max_size=3).map(lambda fs: FaultPlan(tuple(fs))))
    # A refused connect is transient on the model (BlueZ's br-connection-canceled, retried
    # within one connect) and a connect error on Bumble (HCI 0x3E, connect_attempts of them
    # per connect): from that many on, the engine's recovery budget counts differently.
    refused = sum(f.count for f in plan.faults if f.effect is Effect.CONNECT_FAIL)
    assume(refused < LinkSettings().connect_attempts)
    return image, plan, draw(st.integers(0, 3))


@pytest.mark.sim_only
@example(case=(FirmwareImage(make_image(20_000, 1), "diff-20000-1.bin"), FaultPlan(), 0))
@example(
    case=(
        FirmwareImage(make_image(20_000, 2), "diff-20000-2.bin"),
        FaultPlan.parse("slow-erase:30s,drop@erase:50%,connect-fail@connect:2"),
        0,
    )
)
@example(
    case=(
        FirmwareImage(make_image(9_000, 3), "diff-9000-3.bin"),
        FaultPlan.parse("reboot@offset:4000,lose:MSG_OTA_DONE"),
        1,
    )
)
@example(  # corrupted replies and refused connects: each costs the engine an attempt
    case=(
        FirmwareImage(make_image(1, 0), "diff-1-0.bin"),
        FaultPlan.parse("corrupt:3,corrupt:2,connect-fail:2"),
        1,
    )
)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_model_and_bumble_end_the_same(case: tuple[FirmwareImage, FaultPlan, int]) -> None:
    image, plan, seed = case
    note(f"plan {plan or '(none)'}, seed {seed}, image {image.size} bytes")
    model = run("model", image, plan, seed)
    bumble = run("bumble", image, plan, seed)
    event(f"model {'succeeded' if model.success else model.failure}")
    assert bumble == model

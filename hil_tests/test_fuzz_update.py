"""Hypothesis proves the update never bricks: generated fault plans against whole updates.

Each example builds a fresh simulated SmartBall with a generated fault plan, runs the OTA
engine to the end on a virtual clock, and checks the properties below. A failing example
shrinks to a minimal plan and prints the shell command that replays it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import event, example, given, note, settings
from hypothesis import strategies as st

from pytest_smartball import protocol as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.loops import run as run_loop
from pytest_smartball.ota import OtaEngine, OtaResult, Outcome
from pytest_smartball.targets import Target
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.device import SimDevice
from smartball_sim.faults import FaultPlan
from smartball_sim.firmware import DEFAULT_STAGING_CAPACITY
from smartball_sim.make_image import make_image
from smartball_sim.strategies import fault_plans, image_specs

# The work is bounded by example counts and virtual time, not by the wall clock; the
# timeout only catches a hang, generously, so a busy machine cannot fail the run.
pytestmark = [pytest.mark.sim_only, pytest.mark.timeout(1800)]

CHUNK, WINDOW = 232, 16
#: The many-plans property uses small images so thousands of updates fit in CI time;
#: the second property covers the whole size range with fewer examples.
SMALL_IMAGE_MAX = 12 * 1024
MANY = settings().max_examples * 20
FEW = max(10, settings().max_examples // 2)


@contextmanager
def recording_waits() -> Iterator[list[tuple[float, float]]]:
    """Record (timeout, waited) for every NusLink.receive, in loop time."""
    waits: list[tuple[float, float]] = []
    original = NusLink.receive

    async def receive(self: NusLink, timeout: float) -> p.DeviceMessage:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            return await original(self, timeout)
        finally:
            waits.append((timeout, loop.time() - start))

    with mock.patch.object(NusLink, "receive", receive):
        yield waits


def replay_command(
    image: FirmwareImage,
    plan: FaultPlan,
    seed: int,
    sim_link: str,
    firmware_bugs: tuple[str, ...] = (),
) -> str:
    size, image_seed = image.source.removeprefix("fuzz-").removesuffix(".bin").split("-")
    link = f" --sim-link {sim_link}" if sim_link != "model" else ""
    bugs = "".join(f" --sim-firmware-bug {bug}" for bug in firmware_bugs)
    return (
        f"python -m smartball_sim.make_image /tmp/fuzz.bin {size} --seed {image_seed} && "
        f"smartball-ota flash /tmp/fuzz.bin --sim{link} --seed {seed} --faults '{plan}'{bugs} -v"
    )


def make_target(
    sim_link: str, plan: FaultPlan, seed: int, firmware_bugs: tuple[str, ...] = ()
) -> Target:
    """A fresh simulated SmartBall on the link ``--sim-link`` asks for."""
    if sim_link == "bumble":
        from pytest_smartball.targets.bumble import make_bumble_target

        return make_bumble_target(faults=plan, seed=seed, firmware_bugs=firmware_bugs)
    return make_sim_target(faults=plan, seed=seed, firmware_bugs=firmware_bugs)


def for_link(plan: FaultPlan, sim_link: str) -> FaultPlan:
    """The generated plan without the faults the link cannot show (BlueZ's, on Bumble)."""
    if sim_link != "bumble":
        return plan
    from smartball_sim.bumble.faults import BLUEZ_ONLY_EFFECTS

    return FaultPlan(tuple(f for f in plan.faults if f.effect not in BLUEZ_ONLY_EFFECTS))


def run_update(
    image: FirmwareImage,
    plan: FaultPlan,
    seed: int,
    report: Callable[[str], None] = note,
    sim_link: str = "model",
    firmware_bugs: tuple[str, ...] = (),
) -> tuple[OtaResult, SimDevice, bytes, list[tuple[float, float]]]:
    """One whole update on a fresh simulated device (with the run's firmware bugs, if
    any): the result, the device, the image it ran before, and every wait. ``report``
    shows what a failing example needs (hypothesis prints the notes of the final, shrunk
    example only)."""
    plan = for_link(plan, sim_link)
    report(f"replay: {replay_command(image, plan, seed, sim_link, firmware_bugs)}")
    target = make_target(sim_link, plan, seed, firmware_bugs)
    device = target.sim
    assert device is not None
    baseline = device.firmware.active.data
    engine = OtaEngine(image, target.backend, address=device.address)
    with recording_waits() as waits:
        result = run_loop(virtual=True, coro=engine.run())
    for ota_event in result.events:
        report(str(ota_event))
    for record in device.fault_log:
        report(f"device: {record}")
    return result, device, baseline, waits


def check_never_bricks(
    image: FirmwareImage,
    result: OtaResult,
    device: SimDevice,
    baseline: bytes,
    waits: list[tuple[float, float]],
) -> None:
    fw = device.firmware
    if result.success:
        assert fw.active.data == image.data, "success reported but the device runs other bytes"
        assert result.info_after is not None
        assert result.info_after.active_image_crc32 == image.crc32
    elif result.outcome is Outcome.UNCONFIRMED:
        # The whole image was delivered and the switch asked for: the new image, or the old
        # one still, never anything else.
        assert result.failure is None and result.error
        assert fw.active.data in (baseline, image.data), "device runs an image nobody sent"
    else:
        # "Failed" says the device keeps its old image: it must be true.
        assert result.failure is not None and result.error
        assert fw.active.data == baseline, "failed, but the device runs the new image"
    if fw.pending_image is not None:
        assert fw.pending_image.data == image.data, "a partial image is marked complete"
    if fw.state == p.OtaState.COMPLETE:
        assert fw.staged_bytes() == image.data
    assert fw.data_rejected_behind == 0, "the client sent DATA the device had not asked for"
    for timeout, waited in waits:
        assert waited <= timeout + 1e-6, f"a wait of {timeout} s lasted {waited} s"
    rewinds = sum(1 for e in result.events if e.kind in ("rewind", "ack-timeout", "desync"))
    per_window = WINDOW * CHUNK
    assert result.bytes_resent <= (
        (result.resumes + rewinds + result.reconnects) * per_window + result.restarts * image.size
    ), "more than one window re-sent per resume"


@st.composite
def image_and_plan(draw: st.DrawFn, max_size: int) -> tuple[FirmwareImage, FaultPlan, int]:
    spec = draw(image_specs(max_size=max_size))
    image = FirmwareImage(spec.data, spec.name)
    plan = draw(fault_plans(image_size=image.size))
    return image, plan, draw(st.integers(0, 3))


# Edge cases that run first in every run, whatever hypothesis draws: a drop at the very
# first chunk, a lost DONE (success must come from the INFO check after the reset), and a
# reset while verifying. Bugs the fuzzers find get a regression example here or a plain
# test (the stateful fuzzer's find, a stale MSG_ERROR taken as a reply, is
# hil_tests/test_protocol_hil.py::test_an_error_for_an_earlier_command_is_not_taken_as_a_reply).
@example(
    case=(
        FirmwareImage(make_image(5000, 1), "fuzz-5000-1.bin"),
        FaultPlan.parse("drop@offset:0"),
        0,
    )
)
@example(
    case=(FirmwareImage(make_image(1, 0), "fuzz-1-0.bin"), FaultPlan.parse("lose:MSG_OTA_DONE"), 0)
)
@example(
    case=(
        FirmwareImage(make_image(4096, 2), "fuzz-4096-2.bin"),
        FaultPlan.parse("reboot@cmd:CMD_OTA_FINISH#1"),
        1,
    )
)
@settings(max_examples=MANY)
@given(case=image_and_plan(SMALL_IMAGE_MAX))
def test_update_never_bricks_under_generated_faults(
    case: tuple[FirmwareImage, FaultPlan, int],
    pytestconfig: pytest.Config,
    sim_firmware_bugs: tuple[str, ...],
) -> None:
    image, plan, seed = case
    sim_link = pytestconfig.getoption("--sim-link")
    result, device, baseline, waits = run_update(
        image, plan, seed, sim_link=sim_link, firmware_bugs=sim_firmware_bugs
    )
    check_never_bricks(image, result, device, baseline, waits)


@example(
    case=(
        FirmwareImage(
            make_image(DEFAULT_STAGING_CAPACITY, 3), f"fuzz-{DEFAULT_STAGING_CAPACITY}-3.bin"
        ),
        FaultPlan.parse("drop@offset:400000,reboot@offset:450000"),
        2,
    )
)
@settings(max_examples=FEW)
@given(case=image_and_plan(DEFAULT_STAGING_CAPACITY))
def test_update_never_bricks_across_image_sizes(
    case: tuple[FirmwareImage, FaultPlan, int],
    pytestconfig: pytest.Config,
    sim_firmware_bugs: tuple[str, ...],
) -> None:
    image, plan, seed = case
    event(f"image {'over' if image.size > SMALL_IMAGE_MAX else 'up to'} {SMALL_IMAGE_MAX} bytes")
    sim_link = pytestconfig.getoption("--sim-link")
    result, device, baseline, waits = run_update(
        image, plan, seed, sim_link=sim_link, firmware_bugs=sim_firmware_bugs
    )
    check_never_bricks(image, result, device, baseline, waits)


def test_without_faults_every_generated_update_succeeds(
    pytestconfig: pytest.Config, sim_firmware_bugs: tuple[str, ...]
) -> None:
    """Control: the properties above are not satisfied by failing everything."""
    sim_link = pytestconfig.getoption("--sim-link")
    for size in (1, 4095, 4096, 4097, 233, 234, 235, DEFAULT_STAGING_CAPACITY):
        image = FirmwareImage(make_image(size, 9), f"fuzz-{size}-9.bin")
        result, device, _, _ = run_update(
            image,
            FaultPlan(),
            0,
            report=lambda text: None,
            sim_link=sim_link,
            firmware_bugs=sim_firmware_bugs,
        )
        assert result.success, (size, result.error)
        assert device.firmware.active.data == image.data

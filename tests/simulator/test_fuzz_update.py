"""Hypothesis proves every update that can finish does finish, and none ever bricks.

Each example builds a fresh simulated SmartBall with a generated fault plan, runs the OTA
engine to the end on a virtual clock, and checks what that kind of plan demands
(tests/simulator/fault_classes.py classifies plans from the plan alone; docs/faults.md, "Which
plans must succeed", states the budgets):

* a **recoverable** plan (every fault within the engine's budgets) MUST end in success:
  the device runs exactly the file, at most one window is re-sent per resume, and the
  whole update ends within the plan's time bound;
* a **hopeless** plan (a wall no host gets past: every connect refused, a device that never
  resets, ...) must end within its time bound, in a clean failure or the unconfirmed
  outcome, with a sentence that matches what the device holds;
* any generated plan (also one beyond a budget) must leave the device safe and end within
  its time bound.

Both erase modes are covered: the device advertises progressive erase or not (P18). A
failing example shrinks to a minimal plan and prints the shell command that replays it.

Every update runs under the contract monitor (``smartball_monitor``), as the release suite's
tests do: a device that breaks protocol v1 fails the example even when the engine recovered.

CI runs 2,000 recoverable updates (20 times hypothesis's example count) and a few hundred
others; a nightly run reaches 20,000 with ``--fuzz-examples 1000`` (see docs/faults.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, example, given, note, settings
from hypothesis import strategies as st

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.options import SmartBallOptions
from pytest_smartball.ota import OtaResult, Outcome
from pytest_smartball.targets import SimulatedUpdate, kind_of, simulated_update
from smartball_sim.device import SimDevice
from smartball_sim.faults import FaultPlan
from smartball_sim.firmware.model import DEFAULT_STAGING_CAPACITY, SmartBallFirmware
from smartball_sim.fuzz_inputs import fault_plans, image_specs
from smartball_sim.make_image import make_image
from tests.simulator.fault_classes import (
    Budgets,
    Kind,
    Link,
    classify,
    hopeless_plans,
    recoverable_plans,
    time_bound,
)

# The work is bounded by example counts and virtual time, not by the wall clock; the
# timeout only catches a hang, generously, so a busy machine cannot fail the run.
pytestmark = [
    pytest.mark.sim_only,
    pytest.mark.timeout(3600),
    pytest.mark.usefixtures("smartball_monitor"),
]

CHUNK, WINDOW = 232, 16
#: The many-plans properties use small images so thousands of updates fit in CI time;
#: the across-sizes property covers the whole size range with fewer examples.
SMALL_IMAGE_MAX = 12 * 1024
#: The loaded profile's example count (``--fuzz-examples N`` or HYPOTHESIS_PROFILE).
EXAMPLES = settings().max_examples
MANY = EXAMPLES * 20
SOME = EXAMPLES * 2
FEW = max(10, EXAMPLES // 2)
BUDGETS = {link: Budgets.of(link=link) for link in Link}
#: Plans are generated once for both links: within the stricter budgets (Bumble's refused
#: connects are fewer per attempt), with BlueZ's effects, which a Bumble run leaves out.
GENERATE = Budgets.of(link=Link.BUMBLE)


@dataclass(frozen=True, slots=True)
class Case:
    """One generated update: the image, the plan, the device's seed and erase mode."""

    image: FirmwareImage
    plan: FaultPlan
    seed: int
    progressive: bool

    @property
    def mode(self) -> str:
        return "progressive" if self.progressive else "erase-first"


@dataclass(slots=True)
class Run:
    """What one update left: its result, the device, and the image it ran before."""

    result: OtaResult
    device: SimDevice
    baseline: bytes


def replay_command(case: Case, sim_link: str) -> str:
    size, image_seed = case.image.source.removeprefix("fuzz-").removesuffix(".bin").split("-")
    link = f" --sim-link {sim_link}" if sim_link != "model" else ""
    mode = " --sim-progressive-erase" if case.progressive else ""
    bugs = "".join(f" --sim-firmware-bug {bug}" for bug in FIRMWARE_BUGS)
    core = "".join(f" --{key.replace('_', '-')}={value}" for key, value in FIRMWARE_CORE.items())
    return (
        f"python -m smartball_sim.make_image /tmp/fuzz.bin {size} --seed {image_seed} && "
        f"smartball-ota flash /tmp/fuzz.bin --sim{link} --seed {case.seed} "
        f"--faults '{case.plan}'{bugs}{core}{mode} -v"
    )


#: The run's --sim-firmware-bug names (set by the fixture below): the devices these tests
#: build meet the same firmware as the rest of the suite (the kill table relies on it).
FIRMWARE_BUGS: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _the_runs_firmware_bugs(sim_firmware_bugs: tuple[str, ...]) -> None:
    FIRMWARE_BUGS[:] = sim_firmware_bugs


#: The run's --sim-firmware and --sim-firmware-lib when they ask for the C core (set by the
#: fixture below): the update fuzzer then runs against the C core, as the rest of the suite.
FIRMWARE_CORE: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
def _the_runs_firmware_core(smartball_options: SmartBallOptions) -> None:
    FIRMWARE_CORE.clear()
    if smartball_options.sim_firmware != "python":
        FIRMWARE_CORE["sim_firmware"] = smartball_options.sim_firmware
        if smartball_options.sim_firmware_lib:
            FIRMWARE_CORE["sim_firmware_lib"] = smartball_options.sim_firmware_lib


def core_options() -> dict[str, Any]:
    """The device options of the run's firmware (none: the Python model)."""
    if not FIRMWARE_CORE:
        return {}
    return {
        "firmware_core": FIRMWARE_CORE["sim_firmware"],
        "firmware_library": FIRMWARE_CORE.get("sim_firmware_lib"),
    }


def prepare_update(case: Case, sim_link: str) -> SimulatedUpdate:
    """The case's update on a fresh simulated SmartBall on the link ``--sim-link`` asks for
    (with the run's firmware bugs and firmware core, if any)."""
    return simulated_update(
        case.image,
        kind_of("sim", sim_link),
        faults=case.plan,
        seed=case.seed,
        progressive_erase=case.progressive,
        firmware_bugs=tuple(FIRMWARE_BUGS),
        **core_options(),
    )


def for_link(plan: FaultPlan, sim_link: str) -> FaultPlan:
    """The generated plan without the faults the link cannot show (BlueZ's, on Bumble)."""
    if kind_of("sim", sim_link).bluez_faults:
        return plan
    from smartball_sim.bumble.faults import BLUEZ_ONLY_EFFECTS

    return FaultPlan(tuple(f for f in plan.faults if f.effect not in BLUEZ_ONLY_EFFECTS))


def run_update(case: Case, sim_link: str, report: Callable[[str], None] = note) -> Run:
    """One whole update on a fresh simulated device. ``report`` shows what a failing
    example needs (hypothesis prints the notes of the final, shrunk example only)."""
    shown = Case(case.image, for_link(case.plan, sim_link), case.seed, case.progressive)
    report(f"replay: {replay_command(shown, sim_link)}")
    update = prepare_update(shown, sim_link)
    device = update.device
    baseline = device.firmware.active.data
    result = update.run()
    for ota_event in result.events:
        report(str(ota_event))
    for record in device.fault_log:
        report(f"device: {record}")
    report(f"outcome: {result.outcome.value}: {result.error}")
    return Run(result, device, baseline)


_fault_free_s: dict[tuple[int, bool, str], float] = {}


def fault_free_seconds(case: Case, sim_link: str) -> float:
    """How long the same update takes without faults (virtual seconds), the base of every
    time bound; cached by what it depends on (size, mode, link)."""
    key = (case.image.size, case.progressive, sim_link)
    if key not in _fault_free_s:
        clean = Case(case.image, FaultPlan(), 0, case.progressive)
        run = run_update(clean, sim_link, report=lambda text: None)
        assert run.result.success, f"without faults the update failed: {run.result.error}"
        _fault_free_s[key] = run.result.duration_s
    return _fault_free_s[key]


def flaky_drops(device: SimDevice) -> int:
    return sum(1 for r in device.fault_log if r.detail.startswith("flaky:"))


def check_safe(case: Case, run: Run) -> None:
    """Whatever the plan: the device runs the old image or exactly the new one, and the
    outcome says which."""
    image, result, fw = case.image, run.result, run.device.firmware
    if result.success:
        assert fw.active.data == image.data, "success reported but the device runs other bytes"
        assert result.info_after is not None
        assert result.info_after.active_image_crc32 == image.crc32
    elif result.outcome is Outcome.UNCONFIRMED:
        # The whole image was delivered and the switch asked for: the new image, or the old
        # one still, never anything else.
        assert result.failure is None and result.error
        assert fw.active.data in (run.baseline, image.data), "device runs an image nobody sent"
    else:
        # "Failed" says the device keeps its old image: it must be true.
        assert result.failure is not None and result.error
        assert fw.active.data == run.baseline, "failed, but the device runs the new image"
    if fw.bootloader.pending_image is not None:
        assert fw.bootloader.pending_image.data == image.data, "a partial image is marked complete"
    if fw.state == p.OtaState.COMPLETE:
        assert fw.staged_bytes() == image.data
    # The model counts the DATA it refused as behind its offset (the C core keeps no such
    # count): a check of the client, made in the runs against the model.
    behind = fw.data.rejected_behind if isinstance(fw, SmartBallFirmware) else 0
    assert behind == 0, "the client sent DATA the device had not asked for"
    rewinds = sum(1 for e in result.events if e.kind in ("rewind", "ack-timeout", "desync"))
    per_window = WINDOW * CHUNK
    assert result.bytes_resent <= (
        (result.resumes + rewinds + result.reconnects) * per_window + result.restarts * image.size
    ), "more than one window re-sent per resume"


def check_bounded(case: Case, run: Run, sim_link: str) -> None:
    """The whole update, every wait in it included, ends within the plan's bound."""
    budgets = BUDGETS[Link(sim_link)]
    bound = time_bound(
        case.plan,
        case.image.size,
        budgets,
        fault_free_seconds(case, sim_link),
        flaky_drops=flaky_drops(run.device),
    )
    assert run.result.duration_s <= bound, (
        f"the update took {run.result.duration_s:.3f} s (virtual), beyond the plan's "
        f"bound of {bound:.3f} s: a wait outlived its timeout or a budget"
    )


def check_sentence_matches_device(case: Case, run: Run) -> None:
    """A hopeless plan's sentence says what the device holds, and it is true."""
    result, fw = run.result, run.device.firmware
    text = result.error
    assert not result.success, "a plan with a wall succeeded: its classification is wrong"
    if result.outcome is Outcome.FAILED:
        assert fw.active.data == run.baseline
        if "resumes where the device stopped" in text:
            session = fw.session
            kept = session is not None and session.next_offset > 0
            reset = any(r.fault == "reboot" for r in run.device.fault_log)
            assert kept or ("unless it was reset" in text and reset), (
                "said the update resumes, but the device holds no session to resume"
            )
        return
    assert result.outcome is Outcome.UNCONFIRMED
    if "switches at its next reset" in text:
        # The switch is committed and waits for a reset: the old image runs, the new one
        # is pending.
        assert fw.active.data == run.baseline
        assert (
            fw.bootloader.pending_image is not None
            and fw.bootloader.pending_image.data == case.image.data
        )
    elif "The device verified the new image" in text:
        verified = fw.active.data == case.image.data or (
            fw.bootloader.pending_image is not None
            and fw.bootloader.pending_image.data == case.image.data
        )
        assert verified, "said verified, but the device holds no verified new image"
    else:
        assert "may have verified" in text, text


@st.composite
def recoverable_cases(draw: st.DrawFn, max_size: int) -> Case:
    spec = draw(image_specs(max_size=max_size))
    image = FirmwareImage(spec.data, spec.name)
    plan = draw(recoverable_plans(image.size, GENERATE))
    return Case(image, plan, draw(st.integers(0, 3)), draw(st.booleans()))


@st.composite
def hopeless_cases(draw: st.DrawFn, max_size: int) -> Case:
    spec = draw(image_specs(max_size=max_size))
    image = FirmwareImage(spec.data, spec.name)
    # Walls the Bumble link cannot show (BlueZ's services race) are left out for both.
    plan = draw(hopeless_plans(image.size, GENERATE, link=Link.BUMBLE))
    return Case(image, plan, draw(st.integers(0, 3)), draw(st.booleans()))


@st.composite
def any_cases(draw: st.DrawFn, max_size: int) -> Case:
    spec = draw(image_specs(max_size=max_size))
    image = FirmwareImage(spec.data, spec.name)
    plan = draw(fault_plans(image_size=image.size))
    return Case(image, plan, draw(st.integers(0, 3)), draw(st.booleans()))


def _field(plan: str, seed: int = 0, progressive: bool = False) -> Case:
    size = 323194  # the field image
    return Case(
        FirmwareImage(make_image(size, 1), f"fuzz-{size}-1.bin"),
        FaultPlan.parse(plan),
        seed,
        progressive,
    )


def _case(size: int, image_seed: int, plan: str, seed: int = 0, progressive: bool = False) -> Case:
    image = FirmwareImage(make_image(size, image_seed), f"fuzz-{size}-{image_seed}.bin")
    return Case(image, FaultPlan.parse(plan), seed, progressive)


def check_recoverable(case: Case, sim_link: str) -> None:
    link = Link(sim_link)
    plan = for_link(case.plan, sim_link)
    c = classify(plan, case.image.size, BUDGETS[link])
    assert c.kind is Kind.RECOVERABLE, f"{plan} is {c}, not recoverable"
    event(f"{case.mode}, {len(plan.faults)} faults, {c.attempts} attempts at worst")
    run = run_update(case, sim_link)
    check_safe(case, run)
    assert run.result.success, (
        f"a recoverable plan ({plan}) did not end in success: {run.result.outcome.value}: "
        f"{run.result.error}"
    )
    check_bounded(case, run, sim_link)


# Edge cases that run first in every run, whatever hypothesis draws: a drop at the very
# first chunk, a lost DONE (success must come from the INFO check after the reset), and a
# reset while verifying. Bugs the fuzzers find get a regression example here or a plain
# test (the stateful fuzzer's find, a stale MSG_ERROR taken as a reply, is
# hil_tests/test_protocol_hil.py::test_an_error_for_an_earlier_command_is_not_taken_as_a_reply).
@example(case=_case(5000, 1, "drop@offset:0"))
@example(case=_case(1, 0, "lose:MSG_OTA_DONE", progressive=True))
@example(case=_case(4096, 2, "reboot@cmd:CMD_OTA_FINISH#1", seed=1))
@settings(max_examples=MANY)
@given(case=recoverable_cases(SMALL_IMAGE_MAX))
def test_recoverable_plans_must_succeed(case: Case, pytestconfig: pytest.Config) -> None:
    sim_link = pytestconfig.getoption("--sim-link")
    check_recoverable(case, sim_link)


# The simulator bugs on the field image: a reset from inside the erase, and a
# reset on the START that resumes (the command must count as never seen).
@example(case=_field("slow-erase:30s,reboot@erase:20%"))
@example(case=_field("drop@offset:323194,reboot@cmd:CMD_OTA_START#2"))
@example(case=_case(DEFAULT_STAGING_CAPACITY, 3, "drop@offset:400000,reboot@offset:450000", seed=2))
@settings(max_examples=FEW)
@given(case=recoverable_cases(DEFAULT_STAGING_CAPACITY))
def test_recoverable_plans_must_succeed_across_image_sizes(
    case: Case, pytestconfig: pytest.Config
) -> None:
    sim_link = pytestconfig.getoption("--sim-link")
    event(
        f"image {'over' if case.image.size > SMALL_IMAGE_MAX else 'up to'} {SMALL_IMAGE_MAX} bytes"
    )
    check_recoverable(case, sim_link)


# A device that answers DONE and never resets (the endless loop), and every connect
# refused after the reset into the new image: both end, the second unconfirmed.
# A reset the host takes for a drop, then a wall: the session is gone, and the sentence
# must not promise that the next run resumes.
@example(case=_case(8193, 0, "connect-fail:1000000@erase:0%,reboot@erase:34%", progressive=True))
@example(case=_case(5000, 1, "no-reset"))
@example(case=_case(5000, 1, "connect-fail:1000000@connect:2", progressive=True))
@settings(max_examples=SOME)
@given(case=hopeless_cases(SMALL_IMAGE_MAX))
def test_hopeless_plans_end_in_bounded_time_with_a_true_sentence(
    case: Case, pytestconfig: pytest.Config
) -> None:
    sim_link = pytestconfig.getoption("--sim-link")
    plan = for_link(case.plan, sim_link)
    c = classify(plan, case.image.size, BUDGETS[Link(sim_link)])
    assert c.kind is Kind.HOPELESS, f"{plan} is {c}, not hopeless"
    assert c.wall is not None
    event(f"{c.wall.name}, {case.mode}")
    run = run_update(case, sim_link)
    event(f"{c.wall.name}: {run.result.outcome.value}")
    check_safe(case, run)
    check_sentence_matches_device(case, run)
    check_bounded(case, run, sim_link)


@settings(max_examples=SOME)
@given(case=any_cases(SMALL_IMAGE_MAX))
def test_any_plan_leaves_the_device_safe_in_bounded_time(
    case: Case, pytestconfig: pytest.Config
) -> None:
    """Plans as users write them, beyond a budget too: the engine may finish or give up,
    but safely, truthfully and in bounded time."""
    sim_link = pytestconfig.getoption("--sim-link")
    kind = classify(for_link(case.plan, sim_link), case.image.size, BUDGETS[Link(sim_link)]).kind
    event(kind.value)
    run = run_update(case, sim_link)
    event(f"{kind.value}: {run.result.outcome.value}")
    check_safe(case, run)
    check_bounded(case, run, sim_link)
    if kind is Kind.RECOVERABLE:
        assert run.result.success, run.result.error


def test_without_faults_every_generated_update_succeeds(pytestconfig: pytest.Config) -> None:
    """Control: the properties above are not satisfied by failing everything."""
    sim_link = pytestconfig.getoption("--sim-link")
    for size in (1, 4095, 4096, 4097, 233, 234, 235, DEFAULT_STAGING_CAPACITY):
        for progressive in (False, True):
            case = _case(size, 9, "", progressive=progressive)
            run = run_update(case, sim_link, report=lambda text: None)
            assert run.result.success, (size, progressive, run.result.error)
            assert run.device.firmware.active.data == case.image.data


def test_the_fuzzers_devices_run_the_runs_firmware(smartball_options: SmartBallOptions) -> None:
    """The devices these properties build run what ``--sim-firmware`` asks for (the C core
    or the model), and a failing example's replay line asks the CLI for the same."""
    from smartball_sim.firmware.c_firmware import CFirmware

    device = prepare_update(_case(5000, 1, ""), "model").device
    on_c = smartball_options.sim_firmware == "c"
    assert isinstance(device.firmware, CFirmware) is on_c
    replay = replay_command(_case(5000, 1, ""), "model")
    assert ("--sim-firmware=c" in replay) is on_c, replay

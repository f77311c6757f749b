"""A run on a labgrid farm on loopback: a real coordinator and exporter, two simulated balls
behind the emulated bluetoothd, each in a place with a simplerest power port
(pytest_smartball.targets.labgrid_loopback). Needs labgrid (pip install
'pytest-smartball[labgrid]'); .ci/run's labgrid stage runs this module.

Inner pytest runs go through a subprocess with the farm's environment (its D-Bus, LG_ENV,
LG_COORDINATOR), as a CI job on the bench host would."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("labgrid")

from pytest_smartball.targets.labgrid_loopback import LoopbackFarm

from ..plugin_sessions import INNER_INI, assert_clean_usage_error, run

pytest_plugins = ["pytester"]

#: Someone else on the farm (labgrid names a holder host/user; LG_USERNAME sets the user).
OTHER_USER = "alice"

POWER_CUT_TEST = """
import pytest

from pytest_smartball.contract import codec as p


@pytest.mark.asyncio
async def test_a_power_cut_through_the_place(smartball, nus, power_cycle):
    await nus.send(p.CmdOtaStart(9000, 1, 100))
    while not isinstance(await nus.receive(10), p.MsgOtaReady):
        pass
    await power_cycle()
"""


@pytest.fixture(scope="module")
def farm() -> Iterator[LoopbackFarm]:
    with LoopbackFarm(balls=2) as running:
        yield running
    assert running.still_running() == [], "the farm's daemons outlived it"


@pytest.fixture
def lab(
    farm: LoopbackFarm, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    for key, value in farm.environment().items():
        monkeypatch.setenv(key, value)
    pytester.makefile(".ini", pytest=INNER_INI)
    pytester.makepyfile(test_lab=POWER_CUT_TEST)
    return pytester


def lab_args(farm: LoopbackFarm, *more: str) -> tuple[str, ...]:
    env = farm.environment()
    return (
        "--device=real",
        "--ble-scan-timeout=5",
        f"--lg-env={env['LG_ENV']}",
        f"--lg-coordinator={env['LG_COORDINATOR']}",
        *more,
    )


def holders(farm: LoopbackFarm) -> str:
    return farm.client("who").stdout


def test_a_power_cut_goes_through_the_places_power_driver(
    farm: LoopbackFarm, lab: pytest.Pytester
) -> None:
    assert farm.power is not None
    before = len(farm.power.switched)
    result = run(lab, *lab_args(farm), "-rs", "--junitxml=junit.xml", timeout=120)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["smartball labgrid: place smartball-1: *NetworkPowerDriver*"])
    # NetworkPowerDriver.cycle(): off, then on, over HTTP to the switch of port 1.
    assert farm.power.switched[before:] == [(1, False), (1, True)]
    assert "smartball-1" not in holders(farm), "the run did not release its place"
    # Which ball a test ran on, for CI: in the JUnit properties.
    junit = (lab.path / "junit.xml").read_text()
    assert '<property name="labgrid.place" value="smartball-1"' in junit, junit
    assert '<property name="labgrid.ball" value="C0:FF:EE:00:01:01"' in junit, junit


def test_a_place_without_a_power_driver_skips_the_power_cut_saying_so(
    farm: LoopbackFarm, lab: pytest.Pytester
) -> None:
    env = lab.makefile(
        ".yaml",
        env=(
            "imports:\n  - pytest_smartball.plugin.farm.lab\ntargets:\n  smartball-2:\n"
            "    resources:\n      RemotePlace:\n        name: smartball-2\n"
            "    drivers:\n      SmartBallDriver: {}\n"
        ),
    )
    assert farm.power is not None
    before = len(farm.power.switched)
    args = [a for a in lab_args(farm) if not a.startswith("--lg-env")]
    result = run(lab, *args, f"--lg-env={env}", "-rs", timeout=120)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*labgrid target smartball-2 has no power driver*"])
    assert farm.power.switched[before:] == []
    assert "smartball-2" not in holders(farm)


def test_a_place_another_user_holds_is_refused_in_one_sentence(
    farm: LoopbackFarm, lab: pytest.Pytester
) -> None:
    taken = farm.client("-p", "smartball-1", "acquire", user=OTHER_USER)
    assert taken.returncode == 0, taken.stderr
    try:
        result = run(lab, *lab_args(farm, "--smartball-place-wait", "1"), timeout=120)
        error = assert_clean_usage_error(result, "smartball-1", OTHER_USER, "after waiting 1 s")
        assert "labgrid place smartball-1 is held by" in error
    finally:
        released = farm.client("-p", "smartball-1", "release", user=OTHER_USER)
    assert released.returncode == 0, f"the refused run took the place: {released.stderr}"


def test_a_place_another_user_holds_is_waited_for(farm: LoopbackFarm, lab: pytest.Pytester) -> None:
    taken = farm.client("-p", "smartball-1", "acquire", user=OTHER_USER)
    assert taken.returncode == 0, taken.stderr
    # The other run ends 3 s later (a bounded wait: the timer is joined below).
    release = threading.Timer(
        3.0, farm.client, args=("-p", "smartball-1", "release"), kwargs={"user": OTHER_USER}
    )
    release.start()
    try:
        result = run(lab, *lab_args(farm, "--smartball-place-wait", "60"), timeout=120)
    finally:
        release.join(timeout=30)
    result.assert_outcomes(passed=1)
    assert "smartball-1" not in holders(farm)

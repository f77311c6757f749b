"""Inner pytest sessions for the plugin's tests (tests/client/test_plugin_*.py and the modules
that test one option of it): their pytest.ini, the arguments every session gets, a runner, the
check of a clean usage error, an emulated bench for ``--device=real``, and a reader of the
JUnit XML a session writes. The ``inner`` fixture (a pytester directory with the ini and no
conftest.py) is in tests/conftest.py."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

INNER_INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
timeout = 15
"""

#: ``-p no:hypothesispytest``: hypothesis's plugin alone costs ~1 s per inner session and
#: no inner test uses it.
BASE_ARGS = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def run(
    pytester: pytest.Pytester, *args: str, timeout: float = 60, inprocess: bool = False
) -> pytest.RunResult:
    if inprocess:
        return pytester.runpytest_inprocess(*BASE_ARGS, *args)
    return pytester.runpytest_subprocess(*BASE_ARGS, *args, timeout=timeout)


def assert_clean_usage_error(result: pytest.RunResult, *needles: str) -> str:
    """One ``ERROR: ...`` line naming the problem, exit code 4, nothing collected or run."""
    out = result.stdout.str() + "\n" + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], errors[0]
    ran = [line for line in out.splitlines() if not line.startswith("smartball report:")]
    assert not re.search(r"\d+ (passed|failed|error)", "\n".join(ran)), out
    return errors[0]


# --- --device=real against simulated boards (the backend hook, BlueZ stubbed) -----------------

A, B = "C0:FF:EE:00:00:0A", "C0:FF:EE:00:00:0B"

EMULATED_CONFTEST = f"""
\"\"\"An emulated bench: --device=real reaches simulated SmartBalls through the
pytest_smartball_backend hook, in real time; BlueZ's two answers are stubbed.\"\"\"
import pytest

from pytest_smartball import bluez
from pytest_smartball.link import LinkSettings
from pytest_smartball.ota import Limits, OtaSettings
from pytest_smartball.targets.simulated import backend_for
from smartball_sim.fronts.in_process import SimWorld
from smartball_sim.device import RadioTimings, SimDevice
from smartball_sim.make_image import make_image

BASELINE = make_image(6000, 1)
RADIO = RadioTimings(connect_s=0.05, boot_s=0.2)
WORLD = SimWorld(
    [
        SimDevice("SmartBall", {A!r}, active_image=BASELINE, radio=RADIO, seed=1),
        SimDevice("SmartBall", {B!r}, active_image=BASELINE, radio=RADIO, seed=2),
        SimDevice("Headphones", "11:22:33:44:55:66", radio=RADIO, seed=3),
    ]
)


async def probe_adapter(adapter, timeout=3.0):
    return bluez.AdapterInfo(adapter, f"/org/bluez/{{adapter}}", "00:1A:7D:DA:71:13", True)


async def bluez_version(timeout=3.0):
    return (5, 53)


bluez.probe_adapter = probe_adapter
bluez.bluez_version = bluez_version


def pytest_smartball_backend(config, adapter):
    return backend_for(WORLD)


FAST = OtaSettings(
    link=LinkSettings(settle_s=0.05), stabilise_s=0.05, limits=Limits(backoff_base_s=0.05)
)


@pytest.fixture
def link_settings():
    return FAST.link


@pytest.fixture
def ota_settings():
    return FAST


@pytest.fixture(scope="session")
def smartball_reset_settings():
    return FAST
"""

REAL = ("--device=real", "--firmware=candidate.bin", "--ble-scan-timeout=1")


def junit_cases(path: Path) -> dict[str, dict]:
    """Each test case of a JUnit XML file by name: its properties, its captured output and
    its failure text."""
    cases: dict[str, dict] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cases[case.get("name") or ""] = {
            "properties": {p.get("name"): p.get("value") for p in case.iter("property")},
            "system-out": "\n".join(s.text or "" for s in case.iter("system-out")),
            "failure": "\n".join(f.text or "" for f in case.iter("failure")),
        }
    return cases

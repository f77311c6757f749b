"""The release gate's reporting (issue 16): figures with limits, --smartball-compare against
the previous release's report, --smartball-soak's summary, the power-cycle hook.

The pure parts directly; the options end to end through pytest runs of the HIL suite's
own tests on the simulator, with two firmware timing settings (--sim-flash) standing for
two releases."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball import compare, soak
from pytest_smartball.figures import BYTES_PER_SECOND, Figure, FigureRecorder, junit_properties
from pytest_smartball.ota import EventKind, OtaEvent, OtaResult, Outcome

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
BPS = BYTES_PER_SECOND

# --- figures -------------------------------------------------------------------------------


def test_a_figure_beyond_its_limit_fails_with_both_numbers() -> None:
    figures = FigureRecorder()
    figures.record("verify_s", 0.2, limit=1.1)
    figures.record("reply_max_s", 0.73, limit=0.5)
    figures.record("transfer_bps", 20_000, unit=BPS, limit=30_000, higher_is_better=True)
    with pytest.raises(AssertionError) as failed:
        figures.check_limits()
    text = str(failed.value)
    assert "reply_max_s is 0.730 s, above the limit of 0.500 s" in text
    assert "transfer_bps is 20.0 kB/s, below the minimum of 30.0 kB/s" in text
    assert "verify_s" not in text
    figures.record("reply_max_s", 0.3, limit=0.5)  # measured again: the last value counts
    figures.record("transfer_bps", 40_000, unit=BPS, limit=30_000, higher_is_better=True)
    figures.check_limits()


def test_figures_become_junit_properties() -> None:
    props = junit_properties([Figure("verify_s", 0.25, limit=1.5), Figure("erase_s", 2.835)])
    assert props == [
        ("figure.verify_s", "0.25"),
        ("figure.verify_s.limit", "1.5"),
        ("figure.erase_s", "2.835"),
    ]


# --- compare -------------------------------------------------------------------------------


def _figures(**values: float) -> dict[str, Figure]:
    return {
        name: Figure(name, v, BYTES_PER_SECOND, higher_is_better=True)
        if name.endswith("_bps")
        else Figure(name, v)
        for name, v in values.items()
    }


def test_compare_fails_a_figure_worse_than_the_tolerance_and_names_it() -> None:
    before = _figures(erase_s=2.8, verify_s=0.04, transfer_bps=60_000, update_s=13.0)
    now = _figures(erase_s=3.4, verify_s=0.07, transfer_bps=45_000, update_s=13.5)
    result = compare.compare(now, before, 15.0, "release-1.4.json")
    assert [r.name for r in result.regressions] == ["erase_s", "transfer_bps"]
    sentences = result.sentences()
    assert sentences[0].startswith("erase_s is 21 % worse than in release-1.4.json (3.400 s now")
    assert "transfer_bps is 25 % worse" in sentences[1] and "lower" in sentences[1]
    # verify_s is 75 % worse but by 30 ms: within a radio's jitter (the noise floor)
    assert not next(r for r in result.rows if r.name == "verify_s").regressed
    rows = {r["name"]: r for r in result.as_dict()["figures"]}
    assert rows["erase_s"]["ratio"] == pytest.approx(3.4 / 2.8, abs=1e-4)
    assert rows["update_s"]["regressed"] is False


def test_compare_tolerance_is_settable_and_new_or_missing_figures_never_regress() -> None:
    before = _figures(erase_s=2.8, old_s=1.0)
    now = _figures(erase_s=3.4, new_s=1.0)
    assert compare.compare(now, before, 25.0).regressions == []
    lines = compare.compare(now, before, 25.0).lines()
    assert any("new_s" in line and "new" in line for line in lines)
    assert any("old_s" in line and "not measured" in line for line in lines)
    assert compare.worse_by(Figure("x", 1.0), Figure("x", 0.0)) == math.inf


def test_compare_on_too_few_measured_figures_fails_naming_the_missing_ones() -> None:
    before = _figures(erase_s=2.8, verify_s=0.04, update_s=13.0, transfer_bps=60_000)
    nothing = compare.compare({}, before, 15.0, "release-1.4.json")
    assert nothing.regressions == [] and nothing.failed
    [sentence] = nothing.failures()
    assert sentence.startswith("this run measured 0 of the 4 figures of release-1.4.json")
    assert "not measured erase_s, transfer_bps, update_s, verify_s" in sentence
    assert "--smartball-compare-min-measured" in sentence
    data = nothing.as_dict()
    assert data["failed"] and data["measured_percent"] == 0 and len(data["not_measured"]) == 4
    some = compare.compare(_figures(erase_s=2.8, update_s=13.0), before, 15.0)
    assert some.failed and some.measured_percent == 50
    # The share is the user's to lower, explicitly; everything measured always passes.
    assert not compare.compare(_figures(erase_s=2.8, update_s=13.0), before, 15.0, "p", 50).failed
    assert not compare.compare(before, before, 15.0).failed


def test_the_plugin_and_the_gate_agree_on_the_share_to_measure() -> None:
    from pytest_smartball.options import DEFAULT_COMPARE_MIN_MEASURED_PERCENT

    assert DEFAULT_COMPARE_MIN_MEASURED_PERCENT == compare.DEFAULT_MIN_MEASURED_PERCENT


def test_a_previous_report_that_cannot_be_compared_is_named(tmp_path: Path) -> None:
    with pytest.raises(compare.ReportUnusable, match="cannot read"):
        compare.load_figures(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(compare.ReportUnusable, match="is not JSON"):
        compare.load_figures(tmp_path / "text.json")
    (tmp_path / "empty.json").write_text(json.dumps({"smartball_report": 1, "figures": []}))
    with pytest.raises(compare.ReportUnusable, match="holds no figures"):
        compare.load_figures(tmp_path / "empty.json")


# --- soak ------------------------------------------------------------------------------------


def _result(success: bool, duration: float) -> OtaResult:
    outcome = Outcome.SUCCEEDED if success else Outcome.FAILED
    result = OtaResult(outcome=outcome, image_size=1000, duration_s=duration)
    result.phase_s = {"transferring": duration / 2, "waiting-ready": 1.0}
    if not success:
        result.error = "gave up"
        result.events = [OtaEvent(1.5, EventKind.LINK_FAILURE, "device disconnected")]
    return result


def test_the_soak_summary_has_min_median_max_and_every_failure() -> None:
    updates = [
        soak.SoakUpdate(1, soak.CANDIDATE, _result(True, 10.0)),
        soak.SoakUpdate(2, soak.BASELINE, _result(True, 8.0)),
        soak.SoakUpdate(3, soak.CANDIDATE, _result(False, 30.0), ["  12.0s  drop [offset:1]"]),
        soak.SoakUpdate(5, soak.CANDIDATE, _result(True, 14.0)),
        soak.SoakUpdate(7, soak.CANDIDATE, _result(True, 12.0)),
    ]
    summary = soak.summary(updates, device="C0:FF:EE:00:00:01", faults="flaky:1%")
    assert (summary["updates"], summary["succeeded"]) == (5, 4)
    assert summary["figures"]["candidate"]["update_s"] == {
        "n": 3,
        "min": 10.0,
        "median": 12.0,
        "max": 14.0,
    }
    (failure,) = summary["failures"]
    assert failure["iteration"] == 3 and failure["error"] == "gave up"
    assert failure["timeline"] == ["1.500s  link-failure   device disconnected"]
    lines = soak.lines(summary)
    assert lines[0] == "device C0:FF:EE:00:00:01: 4 of 5 updates succeeded, faults flaky:1%"
    assert "  FAILED update 3 (to the candidate): gave up" in lines
    json.dumps(summary)  # the report can hold it


# --- end to end, through the HIL suite on the simulator ---------------------------------------


def run_hil(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--device=sim",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        f"--basetemp={tmp_path / 'inner'}",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False
    )


def report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


TIMING_TEST = "hil_tests/test_timing_contract.py"
#: A candidate whose flash erases a page in 120 ms instead of the nRF52840's 85 ms.
SLOWER_ERASE = "erase_page_s=0.12"


def test_compare_against_the_previous_release_on_the_simulator(tmp_path: Path) -> None:
    """The previous release: the reference flash timings. The candidate: a slower page
    erase. The run fails naming the erase figure; the same firmware twice passes."""
    previous = tmp_path / "release-1.json"
    first = run_hil(tmp_path, TIMING_TEST, f"--smartball-report={previous}")
    assert first.returncode == 0, first.stdout + first.stderr
    figures = {f["name"]: f for f in report(previous)["figures"]}
    assert {"erase_s", "transfer_bps", "verify_s", "reset_to_advertising_s", "update_s"} <= set(
        figures
    )
    assert figures["progress_gap_max_s"]["limit"] == 1.0

    same = run_hil(tmp_path, TIMING_TEST, f"--smartball-compare={previous}")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "smartball compare: no figure worse than the tolerance (every figure" in same.stdout

    slower = tmp_path / "candidate.json"
    worse = run_hil(
        tmp_path,
        TIMING_TEST,
        f"--sim-flash={SLOWER_ERASE}",
        f"--smartball-compare={previous}",
        f"--smartball-report={slower}",
    )
    out = worse.stdout
    assert worse.returncode == 1, out + worse.stderr
    assert "1 passed" in out, "the test itself passes: the comparison fails the run"
    assert "smartball compare: FAILED: erase_s is 41 % worse than in" in out, out
    data = report(slower)
    assert data["verdict"] == "fail"
    rows = {r["name"]: r for r in data["comparison"]["figures"]}
    assert rows["erase_s"]["regressed"] and rows["erase_s"]["ratio"] == pytest.approx(
        0.12 / 0.085, rel=0.02
    )
    assert not rows["transfer_bps"]["regressed"]

    tolerant = run_hil(
        tmp_path,
        TIMING_TEST,
        f"--sim-flash={SLOWER_ERASE}",
        f"--smartball-compare={previous}",
        "--smartball-compare-tolerance=50",
    )
    assert tolerant.returncode == 0, tolerant.stdout


def test_compare_with_a_run_that_measured_nothing_fails(tmp_path: Path) -> None:
    """--sim-faults skips the raw-link timing test: no figure is measured, so nothing was
    compared, and the gate must not say it passed."""
    previous = tmp_path / "release.json"
    figures = [
        {"name": "erase_s", "value": 2.8, "unit": "s", "test": "t", "device": None},
        {"name": "update_s", "value": 13.0, "unit": "s", "test": "t", "device": None},
    ]
    previous.write_text(json.dumps({"smartball_report": 1, "figures": figures}))
    candidate = tmp_path / "candidate.json"
    args = (TIMING_TEST, "--sim-faults=field-linux", f"--smartball-compare={previous}")
    result = run_hil(tmp_path, *args, f"--smartball-report={candidate}")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 skipped" in out
    assert "no figure worse than the tolerance" not in out
    assert "smartball compare: FAILED: this run measured 0 of the 2 figures" in out, out
    assert "not measured erase_s, update_s" in out
    data = report(candidate)
    assert data["verdict"] == "fail" and data["comparison"]["not_measured"] == [
        "erase_s",
        "update_s",
    ]
    allowed = run_hil(tmp_path, *args, "--smartball-compare-min-measured=0")
    assert allowed.returncode == 0, allowed.stdout
    assert "no figure worse than the tolerance (0 % of the figures measured)" in allowed.stdout


def test_compare_refuses_a_report_without_figures(tmp_path: Path) -> None:
    empty = tmp_path / "old.json"
    empty.write_text(json.dumps({"smartball_report": 1, "figures": []}))
    result = run_hil(tmp_path, TIMING_TEST, f"--smartball-compare={empty}")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--smartball-compare: " in result.stderr and "holds no figures" in result.stderr


def test_a_soak_reports_each_figure_and_each_failure(tmp_path: Path) -> None:
    path = tmp_path / "soak.json"
    result = run_hil(
        tmp_path,
        "hil_tests/test_soak.py",
        "--smartball-soak=3",
        "--sim-faults=drop@offset:50000",
        f"--smartball-report={path}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smartball soak" in result.stdout
    (summary,) = report(path)["soak"]
    assert (summary["updates"], summary["succeeded"]) == (3, 3)
    candidate = summary["figures"]["candidate"]
    assert candidate["update_s"]["n"] == 2 and candidate["reconnects"]["min"] == 1.0

    failing = run_hil(
        tmp_path,
        "hil_tests/test_soak.py",
        "--smartball-soak=2",
        "--sim-firmware-bug=done-wrong-crc",
    )
    assert failing.returncode == 1
    assert "FAILED update 1 (to the candidate)" in failing.stdout
    assert "device reported crc32" in failing.stdout


def test_without_the_option_the_soak_skips(tmp_path: Path) -> None:
    result = run_hil(tmp_path, "hil_tests/test_soak.py", "-rs")
    assert result.returncode == 0
    assert "runs with --smartball-soak N" in result.stdout


# --- the lab's power-cycle hook, on the real-device path -------------------------------------

#: A lab's conftest.py: the boards are simulated SmartBalls reached through the backend
#: hook (tests/client/test_plugin_real_path.py's bench); the hook "cuts the power" of the
#: board it is given by resetting that simulated device on the test's loop, from the worker
#: thread it is called in, as a switchable USB hub would.
POWER_CYCLE_HOOK = """
import asyncio

import pytest_asyncio

CALLS = []
LOOP = []


@pytest_asyncio.fixture(autouse=True)
async def _the_tests_loop():
    LOOP[:] = [asyncio.get_running_loop()]
    yield


async def _reboot(address):
    board = WORLD.devices[address.upper()]
    board.reboot()
    for _ in range(50):  # it boots on the test's loop, which ends with the test
        if board.booted:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the simulated board did not boot within 5 s")


def pytest_smartball_power_cycle(config, device):
    CALLS.append(device.address)
    asyncio.run_coroutine_threadsafe(_reboot(device.address), LOOP[0]).result(10)
    return True
"""

POWER_CUT_TEST = """
import pytest

import conftest
from pytest_smartball.contract import codec as p


@pytest.mark.asyncio
async def test_a_power_cut_ends_the_session(smartball, nus, power_cycle):
    board = conftest.WORLD.devices[smartball.address.upper()]
    boots = board.firmware.boot_count
    await nus.send(p.CmdOtaStart(9000, 1, 100))
    while not isinstance(await nus.receive(10), p.MsgOtaReady):
        pass
    await power_cycle()
    assert conftest.CALLS == [smartball.address]
    assert board.firmware.boot_count == boots + 1
    assert board.firmware.session is None
"""


@pytest.mark.parametrize("lab_has_the_hook", [False, True])
def test_reset_mid_update_tests_use_the_labs_power_cycle_hook_or_skip(
    pytester: pytest.Pytester, lab_has_the_hook: bool
) -> None:
    from pytest_smartball.plugin.fixtures import NO_POWER_CYCLE
    from smartball_sim.make_image import make_image

    from ..plugin_sessions import EMULATED_CONFTEST, INNER_INI, REAL, A, run

    pytester.makefile(".ini", pytest=INNER_INI)
    pytester.makeconftest(EMULATED_CONFTEST + (POWER_CYCLE_HOOK if lab_has_the_hook else ""))
    pytester.makepyfile(test_lab=POWER_CUT_TEST)
    (pytester.path / "baseline.bin").write_bytes(make_image(6000, 1))
    (pytester.path / "candidate.bin").write_bytes(make_image(9000, 2))
    result = run(pytester, *REAL, f"--ble-address={A}", "--baseline-firmware=baseline.bin", "-rs")
    if lab_has_the_hook:
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines([f"*{NO_POWER_CYCLE}*"])

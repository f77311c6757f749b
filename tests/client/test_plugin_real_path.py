"""The pytest plugin's --device=real path against simulated boards (the backend hook of
tests/plugin_sessions.py, BlueZ stubbed): preflight and its one-sentence failures, the reset
to the baseline between tests, one device per xdist worker, and the report."""

from __future__ import annotations

import zlib

import pytest

from ..plugin_sessions import (
    EMULATED_CONFTEST,
    REAL,
    A,
    B,
    assert_clean_usage_error,
    junit_cases,
    run,
)

pytest_plugins = ["pytester"]

# --- --device=real against simulated boards (the backend hook, BlueZ stubbed) -----------------

BENCH_TESTS = """
import os

import pytest

from pytest_smartball.contract import codec as p
from smartball_sim.make_image import make_image

BASELINE_CRC = p.crc32(make_image(6000, 1))


@pytest.mark.asyncio
async def test_flashes_the_candidate(ota, firmware_image):
    result = await ota().run()
    assert result.success, result.error
    assert result.info_after.active_image_crc32 == firmware_image.crc32


@pytest.mark.asyncio
async def test_leaves_a_session_open(nus):
    await nus.send(p.CmdOtaStart(9000, 1, 100))
    while not isinstance(await nus.receive(10), p.MsgOtaReady):
        pass


@pytest.mark.asyncio
async def test_starts_idle_on_the_baseline(nus):
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert info.active_image_crc32 == BASELINE_CRC
    status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
    assert status.state == p.OtaState.IDLE


def test_where(smartball, pytestconfig, request):
    # A real update takes minutes: the plugin raises pytest-timeout's 60 s for hardware.
    assert request.node.get_closest_marker("timeout").args == (900,)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (pytestconfig.rootpath / f"where-{worker}.txt").write_text(smartball.address)
"""


@pytest.fixture
def bench(inner: pytest.Pytester) -> pytest.Pytester:
    from smartball_sim.make_image import make_image

    inner.makeconftest(EMULATED_CONFTEST)
    inner.makepyfile(test_bench=BENCH_TESTS)
    (inner.path / "baseline.bin").write_bytes(make_image(6000, 1))
    (inner.path / "candidate.bin").write_bytes(make_image(9000, 2))
    return inner


def test_real_path_preflight_reset_between_tests_and_report(bench: pytest.Pytester) -> None:
    """The order that breaks without the reset: flash another image, leave a session open,
    then expect idle on the baseline."""
    import json

    order = [
        "test_bench.py::test_flashes_the_candidate",
        "test_bench.py::test_leaves_a_session_open",
        "test_bench.py::test_starts_idle_on_the_baseline",
    ]
    result = run(
        bench,
        *REAL,
        f"--ble-address={A}",
        "--baseline-firmware=baseline.bin",
        "--junitxml=out.xml",
        "--smartball-report=report.json",
        "-v",
        *order,
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*test session starts*",
            f"smartball: device=real target={A} firmware=candidate.bin *",
            "smartball: the bench is checked once tests that need a device are collected",
            "smartball preflight: BlueZ answers on the system D-Bus; adapter hci0 "
            "(00:1A:7D:DA:71:13) is powered",
            f"smartball preflight: scanning for the SmartBall at {A} (up to 1 s)",
            f"smartball preflight: found SmartBall ({A}, -* dBm)",
            "smartball preflight: --baseline-firmware baseline.bin is what the devices run",
            "smartball preflight: WARNING BlueZ 5.53: ServicesResolved may be reported *",
            "smartball: BlueZ 5.53; adapter hci0 (00:1A:7D:DA:71:13)",
            f"smartball: SmartBall {A}, -* dBm: firmware 1.0.0, crc32 *",
        ]
    )
    assert next(line for line in result.stdout.lines if "PASSED" in line).startswith(
        "test_bench.py::test_flashes_the_candidate"
    )
    props = junit_cases(bench.path / "out.xml")["test_flashes_the_candidate"]["properties"]
    assert props["ota.success"] == "true" and props["restore.success"] == "true"
    report = json.loads((bench.path / "report.json").read_text())
    assert report["verdict"] == "pass"
    assert report["bluez"] == {
        "version": "5.53",
        "adapter": "hci0",
        "adapter_address": "00:1A:7D:DA:71:13",
    }
    assert report["preflight"]["ok"] and report["preflight"]["warnings"]
    (device,) = report["devices"]
    assert device["address"] == A and device["rssi_dbm"] is not None
    baseline_crc = f"{zlib.crc32((bench.path / 'baseline.bin').read_bytes()):08x}"
    candidate_crc = report["firmware"]["candidate"]["crc32"]
    assert device["firmware_before"]["active_image_crc32"] == baseline_crc
    assert device["firmware_after"]["active_image_crc32"] == baseline_crc
    assert report["firmware"]["verified_on"] == [A]
    test_update, restore = (
        next(u for u in report["updates"] if u["purpose"] == purpose)
        for purpose in ("test", "restore")
    )
    assert test_update["firmware_before"]["active_image_crc32"] == baseline_crc
    assert test_update["firmware_after"]["active_image_crc32"] == candidate_crc
    assert restore["firmware_before"]["active_image_crc32"] == candidate_crc
    assert restore["firmware_after"]["active_image_crc32"] == baseline_crc


def test_real_path_without_a_baseline_image_warns(bench: pytest.Pytester) -> None:
    result = run(
        bench,
        *REAL,
        f"--ble-address={A}",
        "test_bench.py::test_flashes_the_candidate",
        "test_bench.py::test_starts_idle_on_the_baseline",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "smartball: WARNING no --baseline-firmware: *",
            "*PytestWarning: smartball: the SmartBall C0:FF:EE:00:00:0A runs crc32 * not the "
            "baseline crc32 *; the next test starts from it (pass --baseline-firmware PATH *",
        ]
    )


def test_real_path_gives_each_xdist_worker_its_own_device(bench: pytest.Pytester) -> None:
    result = run(
        bench,
        *REAL,
        "-n",
        "2",
        "--dist=each",  # every worker runs every test, on its own device
        f"--ble-address={A},{B}",
        "--baseline-firmware=baseline.bin",
        "test_bench.py::test_where",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [f"smartball: SmartBall {A}, * -> gw0", f"smartball: * {B}, * -> gw1"]
    )
    assert (bench.path / "where-gw0.txt").read_text() == A
    assert (bench.path / "where-gw1.txt").read_text() == B


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ("--ble-address=C0:FF:EE:00:00:0C",),
            [
                "no SmartBall at C0:FF:EE:00:00:0C advertised within 1 s (seen instead: ",
                f"SmartBall ({A}, ",
                "Headphones (11:22:33:44:55:66, ",
            ],
        ),
        (
            (),  # by name: both boards are called SmartBall
            ["2 devices advertise the name 'SmartBall'", "--ble-address"],
        ),
        (
            (f"--ble-address={A}", "--firmware=candidate.bin", "--baseline-firmware=candidate.bin"),
            ["--baseline-firmware candidate.bin (crc32 ", f"is not what the SmartBall at {A} runs"],
        ),
        (
            ("-n", "2", f"--ble-address={A}"),
            ["-n 2 starts 2 workers and each needs a device of its own", "--ble-address lists 1"],
        ),
    ],
    ids=["not-found", "ambiguous-name", "wrong-baseline", "too-few-addresses"],
)
def test_real_path_preflight_failures_are_one_sentence(
    bench: pytest.Pytester, args: tuple[str, ...], needles: list[str]
) -> None:
    import json

    result = run(bench, *REAL, *args, "--smartball-report=report.json")
    line = assert_clean_usage_error(result, "--device=real: ", *needles)
    assert line.count(". ") == 0, f"not one sentence: {line}"
    report = json.loads((bench.path / "report.json").read_text())
    assert report["verdict"] == "fail" and not report["preflight"]["ok"]
    assert report["preflight"]["error"] in line

"""Tests of the pytest plugin itself (pytest_smartball.plugin), through inner pytest sessions.

Each inner session runs in a fresh pytester directory with its own pytest.ini and no
conftest.py, so the plugin is there only because the ``pytest11`` entry point loads it, as
for a user. Sessions that run real tests go through a subprocess; the cheap ones (usage
errors, the seed comparison) run in-process to keep this module fast. Inner tests check
what they can see (fixtures, clocks, fault plans) and hand values the outer test compares
across sessions (CRCs) back through a small file.
"""

from __future__ import annotations

import random
import re
import zlib
from importlib.metadata import version

import pytest

from ..plugin_sessions import (
    EMULATED_CONFTEST,
    INNER_INI,
    REAL,
    A,
    B,
    assert_clean_usage_error,
    run,
)

pytest_plugins = ["pytester"]

NAME = "Bouncy"
ADDRESS = "12:34:56:78:9A:BC"


def read_values(pytester: pytest.Pytester, name: str) -> dict[str, str]:
    text = (pytester.path / name).read_text()
    return dict(line.split("=", 1) for line in text.split())


# --- loading, --help, the report header ------------------------------------------------


def test_help_lists_the_smartball_options(inner: pytest.Pytester) -> None:
    result = run(inner, "--help")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "SmartBall device under test:",
            "*--smartball-device={sim,real}*",
            "*--ble-name=BLE_NAME*",
            "*--ble-address=BLE_ADDRESS*",
            "*--ble-adapter=BLE_ADAPTER*",
            "*--ble-scan-timeout=SECONDS*",
            "*--firmware=FIRMWARE*",
            "*--baseline-firmware=PATH*",
            "*--smartball-report=PATH*",
            "*--sim-seed=SIM_SEED*",
            "*--sim-faults=SIM_FAULTS*",
        ]
    )
    result.stdout.fnmatch_lines(["*--device={sim,real}*"])
    # The help's '%%' reaches argparse escaped, and shows as one '%'.
    assert "50%%" not in result.stdout.str()


# --- a good neighbour: another --device, other projects' headers ---------------------------

#: A project of someone else's, with its own --device (free text, as --device=cpu|gpu often is).
THEIR_CONFTEST = """
def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="cpu or gpu")
"""

THEIR_TESTS = """
def test_their_option_is_theirs(pytestconfig):
    assert pytestconfig.getoption("--device") == "gpu"


def test_the_smartball_fixtures_still_work(smartball, pytestconfig):
    assert smartball.sim is not None
    assert pytestconfig.getoption("smartball_device") == "sim"
"""

CLASH_SENTENCE = "--device belongs to another plugin or this project's conftest here"


@pytest.mark.parametrize("order", ["entry-point-first", "conftest-loads-the-plugin"])
def test_a_conftest_with_its_own_device_option_keeps_it(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    conftest = THEIR_CONFTEST
    extra: tuple[str, ...] = ()
    if order == "conftest-loads-the-plugin":
        # The conftest is registered first and loads the plugin itself (its options come
        # after the conftest's).
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        conftest = 'pytest_plugins = ["pytest_smartball.plugin"]\n' + conftest
        extra = ("-p", "asyncio", "-p", "looptime")
    inner.makeconftest(conftest)
    inner.makepyfile(test_theirs=THEIR_TESTS)
    result = run(inner, *extra, "--device=gpu")
    assert "option dest" not in result.stderr.str() and "Traceback" not in result.stderr.str()
    result.assert_outcomes(passed=2)
    result = run(inner, *extra, "--device=gpu", "--smartball-device=sim")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"smartball: {CLASH_SENTENCE}*--smartball-device=sim*"])
    # --device=real meant ours, but reaches theirs: one sentence says how to ask for ours.
    sentence = assert_clean_usage_error(run(inner, *extra, "--device=real"), CLASH_SENTENCE)
    assert "--smartball-device=real" in sentence and sentence.count(". ") == 0
    # In a run of only their own tests, --device=sim is theirs to mean what they like.
    inner.makepyfile(
        test_only_theirs="def test_sim(pytestconfig):\n"
        "    assert pytestconfig.getoption('--device') == 'sim'\n"
    )
    run(inner, *extra, "test_only_theirs.py", "--device=sim").assert_outcomes(passed=1)


def test_a_device_clash_under_xdist_names_the_fix_instead_of_crashing_the_workers(
    inner: pytest.Pytester,
) -> None:
    """xdist's controller collects nothing: the workers find the tests that need the
    device, and a usage error raised there crashed them (INTERNALERROR, a traceback)."""
    inner.makeconftest(THEIR_CONFTEST)
    inner.makepyfile(
        test_theirs="def test_theirs(pytestconfig):\n"
        "    assert pytestconfig.getoption('--device') == 'real'\n\n\n"
        "def test_ours(smartball):\n    assert smartball\n"
    )
    result = run(inner, "-n", "2", "--device=real")
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    result.assert_outcomes(passed=1, errors=1)
    assert CLASH_SENTENCE in out and "--smartball-device=real" in out


@pytest.mark.parametrize("where", ["PYTEST_ADDOPTS", "addopts"])
def test_a_device_clash_is_found_in_addopts_too(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """--device=real from PYTEST_ADDOPTS or the ini's addopts is no less meant than one
    typed: running the SmartBall tests on the simulator instead would pass unasked."""
    inner.makeconftest(THEIR_CONFTEST)
    inner.makepyfile(test_ours="def test_ours(smartball):\n    assert smartball\n")
    if where == "PYTEST_ADDOPTS":
        monkeypatch.setenv("PYTEST_ADDOPTS", "--device=real")
    else:
        inner.makefile(".ini", pytest=INNER_INI + "addopts = --device real\n")
    assert_clean_usage_error(run(inner), CLASH_SENTENCE, "--smartball-device=real")


def test_smartball_device_always_works(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_ours="def test_kind(smartball):\n    assert smartball.sim is None\n")
    result = run(inner, "--smartball-device=real", "-p", "no:smartball-recorder", inprocess=True)
    # --device=real spelled the long way reaches the plugin: it checks for a bench.
    assert "--device=real" in result.stdout.str() + result.stderr.str()


def test_where_device_is_theirs_our_sentences_name_smartball_device(
    inner: pytest.Pytester,
) -> None:
    """A sentence that tells the user to type --device=sim, in a project where --device is
    someone else's option, sends them the wrong way."""
    inner.makeconftest(THEIR_CONFTEST)
    inner.makepyfile(
        test_ours="import pytest\n\n\n"
        "def test_kind(smartball):\n    assert smartball\n\n\n"
        "@pytest.mark.real_only\ndef test_bench(smartball):\n    assert smartball\n"
    )
    skipped = run(inner, "-rs", "--smartball-device=sim", inprocess=True)
    skipped.assert_outcomes(passed=1, skipped=1)
    skipped.stdout.fnmatch_lines(["*needs real hardware (--smartball-device=real)*"])
    sentence = assert_clean_usage_error(
        run(inner, "--smartball-device=real", "-p", "no:smartball-recorder", inprocess=True)
    )
    assert sentence.startswith("ERROR: --smartball-device=real: "), sentence
    assert "--device=" not in sentence.replace("--smartball-device=", ""), sentence


def test_no_header_lines_in_a_project_that_does_not_use_the_plugin(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = run(inner, "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if line.startswith("smartball:")]
    assert "virtual time" not in result.stdout.str()
    assert "smartball." not in (inner.path / "out.xml").read_text()  # their XML as it was


def test_header_lines_under_xdist_once_the_workers_used_the_plugin(
    inner: pytest.Pytester,
) -> None:
    """xdist's controller collects nothing, so it learns only from the workers' results
    that the run used the plugin: the lines come with the summary instead."""
    inner.makepyfile(test_ours="def test_sim(sim_device):\n    assert sim_device\n")
    result = run(inner, "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["smartball: device=sim *", "smartball: simulated SmartBall, *"])


@pytest.mark.parametrize("quiet", ["-q", "--no-header"])
def test_no_late_header_lines_where_the_header_is_not_shown(
    inner: pytest.Pytester, quiet: str
) -> None:
    inner.makepyfile(test_ours="def test_sim(sim_device):\n    assert sim_device\n")
    result = run(inner, quiet)
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if line.startswith("smartball:")]


def test_no_header_lines_for_a_projects_own_options_that_look_like_ours(
    inner: pytest.Pytester,
) -> None:
    """An embedded project's own --firmware or --sim-speed is not a SmartBall option."""
    inner.makeconftest(
        "def pytest_addoption(parser):\n"
        "    parser.addoption('--firmware-dir')\n"
        "    parser.addoption('--sim-speed')\n"
    )
    inner.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = run(inner, "--firmware-dir=out", "--sim-speed=2", "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if line.startswith("smartball:")]
    assert "smartball." not in (inner.path / "out.xml").read_text()
    # One of ours, spelled out, is a run about SmartBalls.
    result = run(inner, "--sim-seed=3")
    result.stdout.fnmatch_lines(["smartball: simulated SmartBall, seed=3 *"])


def test_header_lines_once_tests_that_use_the_plugin_are_collected(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(test_ours="def test_sim(sim_device):\n    assert sim_device\n")
    result = run(inner)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "collected 1 item",
            "smartball: device=sim *",
            "smartball: simulated SmartBall, seed=0 faults=none (virtual time in the tests "
            "that use its fixtures)",
        ]
    )


MAIN_TESTS = f"""
import asyncio
import time

import pytest

from pytest_smartball.contract import codec as p


def test_loaded_from_the_entry_point(request):
    plugin = request.config.pluginmanager.get_plugin("smartball")
    assert plugin is not None and plugin.__name__ == "pytest_smartball.plugin"


def test_ble_name_and_address_reach_the_device(smartball, sim_device):
    assert smartball.is_sim
    assert (smartball.name, smartball.address) == ({NAME!r}, {ADDRESS!r})
    assert (sim_device.name, sim_device.address) == ({NAME!r}, {ADDRESS!r})
    assert smartball.sim is sim_device


@pytest.mark.asyncio
async def test_nus_answers_info(nus, sim_device):
    assert nus.is_connected
    assert (nus.device.name, nus.device.address) == ({NAME!r}, {ADDRESS!r})
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo), info
    assert info == sim_device.firmware.info()
    assert info.active_image_crc32 == sim_device.firmware.active.crc32


@pytest.mark.asyncio
async def test_runs_on_virtual_time(smartball):
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.sleep(3600)  # on a real clock the inner run's 15 s timeout would stop it
    assert loop.time() - t0 >= 3600


@pytest.mark.real_only
def test_real_only():
    raise AssertionError("a real_only test ran on the simulator")


@pytest.mark.sim_only
def test_sim_only(sim_device):
    assert sim_device is not None


def test_no_fault_plan_by_default(sim_device):
    assert sim_device.injector.pending == []
    assert sim_device.fault_log == []


@pytest.mark.faults("drop@erase:50%")
def test_faults_marker_sets_the_plan(sim_device):
    assert [str(f) for f in sim_device.injector.pending] == ["drop@erase:50%"]


@pytest.mark.faults("drop@erase:50%")
@pytest.mark.asyncio
async def test_faults_marker_fires_during_ota(ota, sim_device, firmware_image):
    result = await ota().run()
    assert result.success, result.error
    assert [(r.fault, r.trigger) for r in sim_device.fault_log] == [("drop", "erase:50%")]
    assert result.reconnects >= 1
    assert result.info_after.active_image_crc32 == firmware_image.crc32

"""


def test_sim_session_fixtures_markers_and_header(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_inner=MAIN_TESTS)
    result = run(
        inner,
        "-v",
        "--strict-markers",
        "--sim-seed=5",
        f"--ble-name={NAME}",
        f"--ble-address={ADDRESS}",
    )
    result.stdout.fnmatch_lines(
        [
            f"smartball: device=sim target={ADDRESS} firmware=generated bleak={version('bleak')}",
            "smartball: simulated SmartBall, seed=5 faults=none (virtual time in the tests "
            "that use its fixtures)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*::test_real_only SKIPPED (needs real hardware*",
            "*::test_sim_only PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(["plugins: *smartball-*"])
    result.assert_outcomes(passed=8, skipped=1)


# --- --sim-seed ----------------------------------------------------------------------

SEED_TESTS = """
def test_write_crc(firmware_image, sim_device, pytestconfig):
    (pytestconfig.rootpath / "crc.txt").write_text(
        f"image={firmware_image.crc32:08x} device={sim_device.firmware.active.crc32:08x}"
    )
"""


def test_sim_seed_makes_the_generated_image_reproducible(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_seed=SEED_TESTS)
    seen = []
    for seed in ("11", "11", "12"):
        result = run(inner, f"--sim-seed={seed}", inprocess=True)
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"smartball: simulated SmartBall, seed={seed} *"])
        seen.append(read_values(inner, "crc.txt"))
        (inner.path / "crc.txt").unlink()
    first, again, other = seen
    assert first == again
    assert first["image"] != other["image"]
    assert first["device"] != other["device"]


# --- --sim-faults --------------------------------------------------------------------

FAULTS_TESTS = """
import pytest


def test_plan_applies(sim_device):
    assert [str(f) for f in sim_device.injector.pending] == ["drop@offset:100000"]


@pytest.mark.faults("reboot@offset:5")
def test_plan_adds_to_the_marker(sim_device):
    assert [str(f) for f in sim_device.injector.pending] == [
        "drop@offset:100000",
        "reboot@offset:5",
    ]


@pytest.mark.asyncio
async def test_ota_survives_the_drop(ota, smartball, sim_device, firmware_image):
    assert (sim_device.name, smartball.address) == ("Other", "C0:FF:EE:00:00:01")
    assert firmware_image.size > 100_000
    result = await ota().run()
    assert result.success, result.error
    assert [(r.fault, r.trigger) for r in sim_device.fault_log] == [("drop", "offset:100000")]
    assert result.reconnects >= 1
    assert result.info_after.active_image_crc32 == firmware_image.crc32
"""


def test_sim_faults_applies_to_every_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_faults=FAULTS_TESTS)
    result = run(inner, "--strict-markers", "--sim-faults=drop-in-transfer", "--ble-name=Other")
    result.stdout.fnmatch_lines(
        [
            "smartball: device=sim target=name 'Other' *",
            "smartball: simulated SmartBall, seed=0 faults=drop-in-transfer "
            "(virtual time in the tests "
            "that use its fixtures)",
        ]
    )
    result.assert_outcomes(passed=3)


def test_invalid_sim_faults_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_never="def test_never():\n    raise AssertionError('ran')\n")
    result = run(inner, "--sim-faults=drop@erase:50%,bogus", inprocess=True)
    line = assert_clean_usage_error(result, "--sim-faults", "'bogus'")
    assert "unknown effect" in line


# --- --firmware ----------------------------------------------------------------------


def test_missing_firmware_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_never="def test_never():\n    raise AssertionError('ran')\n")
    result = run(inner, "--firmware=no-such-image.bin", inprocess=True)
    assert_clean_usage_error(result, "--firmware", "no-such-image.bin", "no such file")


FIRMWARE_TESTS = """
import pytest


def test_image_is_the_file(firmware_image):
    assert firmware_image.size == {size}
    assert firmware_image.crc32 == {crc:#010x}
    assert firmware_image.source.endswith("app.bin")


@pytest.mark.asyncio
async def test_ota_flashes_the_file(ota, firmware_image, sim_device):
    result = await ota().run()
    assert result.success, result.error
    assert result.info_after.active_image_crc32 == {crc:#010x}
    assert result.info_after.active_image_size == {size}
    assert sim_device.firmware.active.data == firmware_image.data
"""


def test_firmware_option_is_flashed(inner: pytest.Pytester) -> None:
    data = random.Random(2024).randbytes(50_001)
    (inner.path / "app.bin").write_bytes(data)
    crc = zlib.crc32(data)
    inner.makepyfile(test_fw=FIRMWARE_TESTS.format(size=len(data), crc=crc))
    # an unsigned file: a v1 ball (the plugin's simulated ball is signed-only by default)
    result = run(inner, "--firmware=app.bin", "--sim-trust=none")
    result.stdout.fnmatch_lines(["smartball: device=sim * firmware=app.bin *"])
    result.assert_outcomes(passed=2)


# --- --device=real without Bluetooth -------------------------------------------------


def test_device_real_without_bluez_fails_fast(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hermetic even on a machine with BlueZ: point dbus-fast at a system bus that is not there.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={inner.path / 'no-bus'}")
    inner.makepyfile(test_never="def test_never(smartball):\n    raise AssertionError('ran')\n")
    # A hang would hit the subprocess timeout: every step of preflight is bounded.
    result = run(inner, "--device=real", timeout=60)
    line = assert_clean_usage_error(result, "--device=real", "D-Bus", "BlueZ")
    assert line.count(". ") == 0, f"not one sentence: {line}"


# --- what a run records: JUnit XML properties, failure logs, the JSON report -------------

RECORD_TESTS = """
import pytest

from pytest_smartball.image import FirmwareImage

pytestmark = pytest.mark.asyncio


async def test_one_update(ota, pytestconfig, smartball):
    result = await ota().run()
    assert result.success, result.error
    (pytestconfig.rootpath / "address.txt").write_text(smartball.address)


async def test_two_updates(ota, firmware_image, sim_device):
    assert (await ota().run()).success
    too_big = FirmwareImage(b"\\x00" * (sim_device.firmware.staging_capacity + 1), "big.bin")
    result = await ota(too_big).run()
    assert result.failure.value == "bad-input"


@pytest.mark.faults("reboot@offset:60000")
async def test_fails_on_purpose(ota):
    result = await ota().run()
    assert result.restarts == 0
"""


def junit_cases(path) -> dict[str, dict]:
    import xml.etree.ElementTree as ET

    cases: dict[str, dict] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cases[case.get("name") or ""] = {
            "properties": {p.get("name"): p.get("value") for p in case.iter("property")},
            "system-out": "\n".join(s.text or "" for s in case.iter("system-out")),
            "failure": "\n".join(f.text or "" for f in case.iter("failure")),
        }
    return cases


def check_recorded_run(inner: pytest.Pytester) -> dict:
    """What both the plain and the xdist run must leave: figures in the JUnit XML, the
    failure's logs in it, and the JSON report."""
    import json

    cases = junit_cases(inner.path / "out.xml")
    one = cases["test_one_update"]["properties"]
    for name in (
        "ota.duration_s",
        "ota.phase.transferring_s",
        "ota.phase.waiting-ready_s",
        "ota.throughput_bps",
        "ota.reconnects",
        "ota.resumes",
        "ota.restarts",
        "ota.bytes_sent",
        "ota.bytes_resent",
        "ota.rssi",
    ):
        assert name in one, (name, sorted(one))
    assert one["ota.success"] == "true"
    assert int(one["ota.bytes_sent"]) == GENERATED_SIZE
    assert -80 < int(one["ota.rssi"]) < -40
    assert float(one["ota.throughput_bps"]) > 0
    two = cases["test_two_updates"]["properties"]
    assert two["ota1.success"] == "true"
    assert (two["ota2.success"], two["ota2.failure"]) == ("false", "bad-input")
    assert not any(name.startswith("ota.") for name in two)

    failed = cases["test_fails_on_purpose"]
    assert failed["properties"]["ota.restarts"] == "1"
    log = failed["system-out"]
    assert "smartball timeline (client | device)" in log
    assert re.search(r"device  reboot +\[offset:60000\]", log), log
    assert re.search(r"client  restart +the device lost this image's session", log), log
    assert "assert 1 == 0" in failed["failure"]
    assert "smartball timeline" not in cases["test_one_update"]["system-out"]

    report = json.loads((inner.path / "report.json").read_text())
    assert report["verdict"] == "fail"
    assert report["counts"] == {
        "passed": 2,
        "failed": 1,
        "error": 0,
        "skipped": 0,
        "xfailed": 0,
        "xpassed": 0,
    }
    assert report["device"]["kind"] == "sim"
    assert report["firmware"]["candidate"]["size"] == GENERATED_SIZE
    crc = report["firmware"]["candidate"]["crc32"]
    assert report["updates_total"] == 4 and report["updates_failed"] == 1
    by_test: dict[str, list[dict]] = {}
    for update in report["updates"]:
        by_test.setdefault(update["test"].rsplit("::", 1)[1], []).append(update)
    assert [u["success"] for u in by_test["test_two_updates"]] == [True, False]
    first = by_test["test_one_update"][0]
    assert first["test_outcome"] == "passed"
    assert first["firmware_after"]["active_image_crc32"] == crc
    assert first["firmware_before"]["active_image_crc32"] != crc
    assert first["phase_s"]["transferring"] > 0 and first["rssi_dbm"] is not None
    assert "events" not in first
    refused = by_test["test_two_updates"][1]
    assert refused["failure"] == "bad-input" and "staging area" in refused["error"]
    assert refused["events"][0].startswith("0.000s  start") and "end" in refused["events"][-1]
    assert by_test["test_fails_on_purpose"][0]["test_outcome"] == "failed"
    for device in report["devices"]:
        assert device["firmware_before"]["firmware"] and device["firmware_after"]
    return report


GENERATED_SIZE = 131_195

#: Run in this order (no random order): the last test that updates flashes the candidate,
#: and a test after it updates nothing.
IDENTITY_TESTS = """
import pytest

from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine

pytestmark = pytest.mark.asyncio
SMALL = FirmwareImage(bytes(range(256)) * 16, "small.bin")


def own_engine(smartball, image):
    return OtaEngine(image, smartball.backend, name=smartball.name, address=smartball.address)


async def test_a_many_own_engines(smartball):
    for _ in range(7):
        assert (await own_engine(smartball, SMALL).run()).success


async def test_b_one_own_engine(smartball):
    assert (await own_engine(smartball, SMALL).run()).success


async def test_c_the_candidate(ota):
    assert (await ota().run()).success


def test_z_no_update(sim_device):
    assert sim_device.firmware.active.crc32 != 0
"""


def test_the_report_and_junit_say_what_the_run_was_and_what_the_device_runs(
    inner: pytest.Pytester,
) -> None:
    """firmware_after is what the last update left, not the fresh device of whichever test
    ran last; device.addresses names the device devices[] lists; the JUnit suite carries the
    run's identity; every test that ran an update carries ota.* properties, also one that
    built its own engines."""
    import json
    import xml.etree.ElementTree as ET

    inner.makepyfile(test_identity=IDENTITY_TESTS)
    # own engines with an unsigned image: a v1 ball (the default is signed-only)
    result = run(inner, "--junitxml=out.xml", "--smartball-report=report.json", "--sim-trust=none")
    result.assert_outcomes(passed=4)
    report = json.loads((inner.path / "report.json").read_text())
    crc = report["firmware"]["candidate"]["crc32"]
    [device] = report["devices"]
    assert report["firmware"]["verified_on"] == [device["address"]]
    assert device["firmware_after"]["active_image_crc32"] == crc
    assert device["firmware_after_test"].endswith("::test_c_the_candidate")
    assert report["device"]["addresses"] == [device["address"]]

    suite = ET.parse(inner.path / "out.xml").getroot().find("testsuite")
    assert suite is not None
    props = {
        p.get("name"): p.get("value")
        for p in suite.findall("properties/property")  # the suite's own, not a test's
    }
    assert props["smartball.kind"] == "sim"
    assert props["smartball.candidate.crc32"] == crc
    assert props["smartball.candidate.size"] == str(GENERATED_SIZE)
    assert props["smartball.sim_seed"] == "0"
    assert props["smartball.sim_faults"] == "none"
    assert props["smartball.sim_firmware_bugs"] == "none"
    assert props["smartball.addresses"] == device["address"]
    assert props["smartball.verdict"] == "pass"

    cases = junit_cases(inner.path / "out.xml")
    many = cases["test_a_many_own_engines"]["properties"]
    assert (many["ota.all.updates"], many["ota.all.succeeded"]) == ("7", "7")
    one = cases["test_b_one_own_engine"]["properties"]
    assert one["ota.success"] == "true" and one["ota.image_size"] == "4096"
    assert cases["test_c_the_candidate"]["properties"]["ota.image_crc32"] == crc
    assert not cases["test_z_no_update"]["properties"]
    tests = {t["test"].rsplit("::", 1)[1]: t for t in report["tests"]}
    assert tests["test_a_many_own_engines"]["update_summary"]["updates"] == 7
    assert tests["test_b_one_own_engine"]["updates"] == 1


def test_junit_properties_failure_logs_and_the_json_report(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_record=RECORD_TESTS)
    result = run(inner, "--junitxml=out.xml", "--smartball-report=report.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- smartball updates -*",
            "test_one_update[[]1[]] C0:FF:EE:00:00:01  ok  *",
            "smartball report: report.json (verdict fail; 4 updates, 1 failed)",
        ]
    )
    report = check_recorded_run(inner)
    assert [d["address"] for d in report["devices"]] == ["C0:FF:EE:00:00:01"]
    assert report["firmware"]["verified_on"] == ["C0:FF:EE:00:00:01"]


def test_xdist_workers_record_and_the_controller_writes_one_report(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(test_record=RECORD_TESTS)
    a, b = "C0:FF:EE:00:00:0A", "C0:FF:EE:00:00:0B"
    result = run(
        inner,
        "-n",
        "2",
        "--dist=loadfile",  # one worker runs all three: the other has none, like a spare board
        f"--ble-address={a},{b}",
        "--junitxml=out.xml",
        "--smartball-report=report.json",
    )
    result.assert_outcomes(passed=2, failed=1)
    report = check_recorded_run(inner)
    used = (inner.path / "address.txt").read_text()
    assert used in (a, b)
    assert [d["address"] for d in report["devices"]] == [used]
    assert report["devices"][0]["worker"] == {a: "gw0", b: "gw1"}[used]


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

"""What a run of the pytest plugin records, through inner pytest sessions: the JUnit XML's
suite and test properties, a failed test's timeline, the JSON report, and one report from
xdist's workers."""

from __future__ import annotations

import re

import pytest

from ..plugin_sessions import junit_cases, run

pytest_plugins = ["pytester"]

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

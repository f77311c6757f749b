"""The run's record (pytest_smartball.plugin.report): figures per update, JUnit properties, the JSON
summary and how test outcomes are counted."""

from __future__ import annotations

import json
from types import SimpleNamespace

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import EventKind, FailureKind, OtaEvent, OtaResult, Outcome
from pytest_smartball.plugin import report as rep

IMAGE = FirmwareImage(b"\x01" * 1000, "build/smartball.bin")
BEFORE = p.MsgInfo(1, 1, 4, 2, 500, 0xABCD, 491520)
AFTER = p.MsgInfo(1, 1, 5, 0, 1000, IMAGE.crc32, 491520)


def result(success: bool = True) -> OtaResult:
    r = OtaResult(
        outcome=Outcome.SUCCEEDED if success else Outcome.FAILED,
        image_size=IMAGE.size,
        image_crc32=IMAGE.crc32,
        bytes_sent=1200,
        bytes_resent=200,
        connects=3,
        reconnects=1,
        resumes=1,
        duration_s=12.34567,
        phase_s={"scanning": 1.0, "transferring": 4.0, "aborting": 0.0},
        info_after=AFTER if success else None,
        events=[
            OtaEvent(0.0, EventKind.START, "x"),
            OtaEvent(1.5, EventKind.LINK_LOST, "device disconnected"),
        ],
    )
    if not success:
        r.failure, r.error = FailureKind.LINK, "gave up after 5 reconnect attempts"
    return r


def record(success: bool = True, index: int = 1, purpose: str = "test") -> dict:
    return rep.update_record(
        result(success),
        test="hil_tests/test_ota_hil.py::test_full_update",
        index=index,
        image=IMAGE,
        device="C0:FF:EE:00:00:01",
        before=BEFORE,
        rssi=-61,
        purpose=purpose,
    )


def test_an_update_record_is_readable() -> None:
    r = record()
    assert r["duration_s"] == 12.346
    assert r["phase_s"] == {"scanning": 1.0, "transferring": 4.0}  # phases never entered go
    assert r["throughput_bps"] == 250.0
    assert r["image"] == {
        "path": "build/smartball.bin",
        "size": 1000,
        "crc32": f"{IMAGE.crc32:08x}",
    }
    assert r["firmware_before"]["firmware"] == "1.4.2"
    assert r["firmware_before"]["active_image_crc32"] == "0000abcd"
    assert r["firmware_after"]["firmware"] == "1.5.0"
    assert r["rssi_dbm"] == -61
    assert "events" not in r, "a successful update's event log is left out"
    json.dumps(r)


def test_a_failed_update_keeps_its_event_log() -> None:
    r = record(success=False)
    assert r["failure"] == "link" and r["error"].startswith("gave up")
    assert r["firmware_after"] is None
    assert r["events"][1].startswith("1.500s  link-lost")


def test_junit_properties_one_update() -> None:
    props = dict(rep.junit_properties([record()]))
    assert props["ota.success"] == "true"
    assert props["ota.duration_s"] == "12.346"
    assert props["ota.phase.transferring_s"] == "4.0"
    assert props["ota.throughput_bps"] == "250.0"
    assert props["ota.reconnects"] == "1"
    assert props["ota.resumes"] == "1"
    assert props["ota.bytes_resent"] == "200"
    assert props["ota.rssi"] == "-61"
    assert props["ota.firmware_after"] == "1.5.0"
    assert "ota.failure" not in props
    assert all(isinstance(v, str) for v in props.values())


def test_junit_properties_several_updates_and_a_restore() -> None:
    records = [record(index=1), record(False, index=2), record(index=1, purpose="restore")]
    props = dict(rep.junit_properties(records))
    assert props["ota1.success"] == "true" and props["ota2.success"] == "false"
    assert props["ota2.failure"] == "link"
    assert props["restore.success"] == "true"
    assert not any(name.startswith("ota.") for name in props)


def report(when: str, outcome: str, nodeid: str = "t::x", **extra: object) -> SimpleNamespace:
    return SimpleNamespace(
        when=when,
        outcome=outcome,
        passed=outcome == "passed",
        failed=outcome == "failed",
        skipped=outcome == "skipped",
        nodeid=nodeid,
        **extra,
    )


def outcome(*reports: SimpleNamespace) -> str | None:
    seen = None
    for r in reports:
        seen = rep.outcome_of(seen, r)
    return seen


def test_outcomes_are_counted_as_pytest_counts_them() -> None:
    ok = report("setup", "passed"), report("call", "passed"), report("teardown", "passed")
    assert outcome(*ok) == "passed"
    assert outcome(ok[0], report("call", "failed"), ok[2]) == "failed"
    assert outcome(report("setup", "failed"), ok[2]) == "error"
    assert outcome(ok[0], ok[1], report("teardown", "failed")) == "error"
    assert outcome(ok[0], report("call", "failed"), report("teardown", "failed")) == "failed"
    assert outcome(report("setup", "skipped"), ok[2]) == "skipped"
    assert outcome(ok[0], report("call", "skipped", wasxfail=""), ok[2]) == "xfailed"
    assert outcome(ok[0], report("call", "passed", wasxfail=""), ok[2]) == "xpassed"


def test_the_run_report_merges_devices_and_gives_a_verdict(tmp_path) -> None:
    run = rep.RunReport(device={"kind": "real"}, firmware=IMAGE)
    run.add_device({"address": "c0:ff:ee:00:00:01", "firmware_before": {"firmware": "1.4.2"}})
    run.add_device(
        {
            "address": "C0:FF:EE:00:00:01",
            "worker": "gw0",
            "firmware_before": {"firmware": "9.9.9"},  # the earliest one is kept
            "firmware_after": {"firmware": "1.4.2"},
        }
    )
    for when in ("setup", "call", "teardown"):
        r = report(when, "passed", nodeid=record()["test"])
        if when == "teardown":
            r.smartball_updates = [record()]
        run.add_test_report(r)
    data = run.to_dict(exitstatus=0)
    assert data["verdict"] == "pass"
    assert data["counts"]["passed"] == 1 and data["updates_total"] == 1
    assert data["firmware"]["verified_on"] == ["C0:FF:EE:00:00:01"]
    assert data["devices"] == [
        {
            "address": "c0:ff:ee:00:00:01",
            "firmware_before": {"firmware": "1.4.2"},
            "worker": "gw0",
            "firmware_after": {"firmware": "1.4.2"},
        }
    ]
    assert data["updates"][0]["test_outcome"] == "passed"
    path = run.write(tmp_path / "out" / "report.json", 0)
    assert json.loads(path.read_text())["smartball_report"] == rep.FORMAT_VERSION
    run.add_test_report(report("call", "failed", nodeid="t::y"))
    # exit status 0, so the verdict can only come from the failed test's count
    assert run.to_dict(exitstatus=0)["verdict"] == "fail"

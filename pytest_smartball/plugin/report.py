"""What a run records about its updates: JUnit XML properties per test and one JSON summary
(``--smartball-report PATH``) that a release checklist keeps.

Pure data handling: the plugin feeds it OtaResults, device INFOs and test reports. Under
pytest-xdist each worker's figures travel to the controller on the teardown report
(``report.smartball_updates``) and in ``workeroutput``; the controller writes the file.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..contract import codec as p
from ..device_info import info_dict
from ..image import FirmwareImage
from ..ota import OtaResult

#: Bumped when a field changes meaning or goes away (new fields may appear any time).
FORMAT_VERSION = 1

#: The order outcomes are listed in, and the ones that make a run fail.
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
BAD_OUTCOMES = ("failed", "error")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """What a record says of an image (not its bytes, which a test may make thousands of)."""

    source: str
    size: int
    crc32: int

    @classmethod
    def of(cls, image: FirmwareImage) -> ImageRef:
        return cls(image.source, image.size, image.crc32)


#: Updates a test ran on engines it built itself, itemized up to this many; beyond it (a
#: fuzz test's hundreds) they are summed up (:func:`update_summary`).
MAX_ITEMIZED_UPDATES = 5


def update_summary(results: list[OtaResult]) -> dict[str, Any]:
    """Many updates of one test in a few figures: counts by outcome, the longest, totals."""
    durations = [r.duration_s for r in results]
    return {
        "updates": len(results),
        "succeeded": sum(1 for r in results if r.outcome.value == "succeeded"),
        "unconfirmed": sum(1 for r in results if r.outcome.value == "unconfirmed"),
        "failed": sum(1 for r in results if r.outcome.value == "failed"),
        "duration_s_max": round(max(durations, default=0.0), 3),
        "duration_s_total": round(sum(durations), 3),
        "bytes_sent_total": sum(r.bytes_sent for r in results),
        "bytes_resent_total": sum(r.bytes_resent for r in results),
        "reconnects_total": sum(r.reconnects for r in results),
        "resumes_total": sum(r.resumes for r in results),
        "restarts_total": sum(r.restarts for r in results),
    }


def summary_properties(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``ota.all.NAME`` properties of :func:`update_summary` (the test's own engines)."""
    return [(f"ota.all.{name}", str(value)) for name, value in summary.items()]


def image_dict(image: FirmwareImage | ImageRef | None) -> dict[str, Any] | None:
    if image is None:
        return None
    return {"path": image.source, "size": image.size, "crc32": f"{image.crc32:08x}"}


def update_record(
    result: OtaResult,
    *,
    test: str,
    index: int,
    image: FirmwareImage | ImageRef,
    device: str | None,
    before: p.MsgInfo | None = None,
    rssi: int | None = None,
    purpose: str = "test",
    progress: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One update's figures. The event log as text is kept for failed updates only: that is
    when someone reads it. ``timeline`` (every event, with its time) and ``progress`` (erase
    and acknowledged offsets over time) are kept for every update: the release page draws
    them."""
    record: dict[str, Any] = {
        "test": test,
        "update": index,
        "purpose": purpose,
        "device": device,
        "image": image_dict(image),
        "success": result.success,
        "outcome": result.outcome.value,
        "failure": result.failure.value if result.failure else None,
        "error": result.error or None,
        "duration_s": round(result.duration_s, 3),
        "phase_s": {k: round(v, 3) for k, v in result.phase_s.items() if v > 0},
        "throughput_bps": round(result.throughput_bps, 1),
        "bytes_sent": result.bytes_sent,
        "bytes_resent": result.bytes_resent,
        "connects": result.connects,
        "reconnects": result.reconnects,
        "resumes": result.resumes,
        "restarts": result.restarts,
        "rewinds": result.rewinds,
        "rssi_dbm": rssi,
        "firmware_before": info_dict(before),
        "firmware_after": info_dict(result.info_after),
    }
    if not result.success:
        record["events"] = [str(e).strip() for e in result.events]
    record["timeline"] = timeline_events(result)
    record["progress"] = progress or []
    return record


#: At most this many events per update in ``timeline`` (the first ones and the last ones):
#: a flaky update's log stays readable and the report small.
MAX_TIMELINE_EVENTS = 400


def timeline_events(result: OtaResult) -> list[dict[str, Any]]:
    """The update's events as data: ``t`` (seconds since the update began), ``kind``
    (:class:`~pytest_smartball.ota.EventKind`'s value) and ``detail``."""
    events = result.events
    if len(events) > MAX_TIMELINE_EVENTS:
        half = MAX_TIMELINE_EVENTS // 2
        events = [*events[:half], *events[-half:]]
    return [{"t": round(e.time, 3), "kind": str(e.kind), "detail": e.detail} for e in events]


def junit_properties(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``record_property`` pairs: ``ota.duration_s`` etc. for a test's one update,
    ``ota1.``, ``ota2.``... when it ran several; ``restore.`` for the baseline put back
    after the test (real hardware)."""
    tests = [r for r in records if r["purpose"] == "test"]
    props: list[tuple[str, str]] = []
    for r in records:
        if r["purpose"] != "test":
            prefix = f"{r['purpose']}."
        else:
            prefix = "ota." if len(tests) == 1 else f"ota{r['update']}."
        pairs: list[tuple[str, object]] = [
            ("success", str(r["success"]).lower()),
            ("outcome", r["outcome"]),
            ("duration_s", r["duration_s"]),
            *((f"phase.{k}_s", v) for k, v in r["phase_s"].items()),
            ("throughput_bps", r["throughput_bps"]),
            ("bytes_sent", r["bytes_sent"]),
            ("bytes_resent", r["bytes_resent"]),
            ("connects", r["connects"]),
            ("reconnects", r["reconnects"]),
            ("resumes", r["resumes"]),
            ("restarts", r["restarts"]),
            ("rewinds", r["rewinds"]),
            ("image_size", r["image"]["size"]),
            ("image_crc32", r["image"]["crc32"]),
        ]
        if r["device"]:
            pairs.append(("device", r["device"]))
        if r["rssi_dbm"] is not None:
            pairs.append(("rssi", r["rssi_dbm"]))
        if r["firmware_after"]:
            pairs.append(("firmware_after", r["firmware_after"]["firmware"]))
        if r["failure"]:
            pairs.append(("failure", r["failure"]))
        if r["error"]:
            pairs.append(("error", r["error"]))
        props += [(prefix + name, str(value)) for name, value in pairs]
    return props


def suite_properties(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's identity for the JUnit ``<testsuite>`` properties, from the report's
    summary (:meth:`RunReport.to_dict`): device kind and addresses, candidate and baseline
    image, the simulator's seed, fault plan, firmware bugs and flash, BlueZ, the verdict."""
    device = summary["device"]
    firmware = summary["firmware"]
    pairs: list[tuple[str, object]] = [
        ("kind", device.get("kind")),
        ("name", device.get("name")),
        ("addresses", ",".join(device.get("addresses") or [])),
        ("adapter", device.get("adapter")),
    ]
    for which in ("candidate", "baseline"):
        image = firmware.get(which)
        if image:
            pairs += [(f"{which}.{key}", image[key]) for key in ("path", "size", "crc32")]
    pairs.append(("verified_on", ",".join(firmware.get("verified_on") or [])))
    if device.get("kind") == "sim":
        pairs += [
            ("sim_seed", device.get("sim_seed")),
            ("sim_faults", device.get("sim_faults") or "none"),
            ("sim_firmware_bugs", ",".join(device.get("sim_firmware_bugs") or []) or "none"),
            ("sim_flash", device.get("sim_flash") or "nRF52840"),
        ]
    bluez = summary.get("bluez") or {}
    if bluez.get("version"):
        pairs.append(("bluez", bluez["version"]))
    pairs += [
        ("plugin_version", summary["host"].get("pytest-smartball")),
        ("verdict", summary["verdict"]),
    ]
    return [(f"smartball.{name}", str(value)) for name, value in pairs if value is not None]


def outcome_of(previous: str | None, report: Any) -> str | None:
    """A test's outcome so far, given its next setup/call/teardown report (what pytest's
    summary line counts: a failing teardown after a pass is an error)."""
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if xfail:
            return "xfailed" if report.skipped else "xpassed"
        return str(report.outcome)
    if report.failed:
        return previous if previous in BAD_OUTCOMES else "error"
    if report.skipped and report.when == "setup":
        return "xfailed" if xfail else "skipped"
    return previous


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("pytest-smartball", "bleak", "bleak-retry-connector", "pytest", "dbus-fast"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


class RunReport:
    """The JSON summary, filled as the run goes (on the controller under xdist)."""

    def __init__(self, *, device: dict[str, Any], firmware: FirmwareImage | None) -> None:
        self.started = time.time()
        self.device = device
        self.firmware = firmware
        self.baseline: FirmwareImage | None = None
        self.preflight: dict[str, Any] | None = None
        self.bluez: dict[str, Any] | None = None
        self.devices: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, str] = {}
        self.updates: list[dict[str, Any]] = []
        #: What tests measured (pytest_smartball.figures), a soak's summaries, and the
        #: comparison with the previous release (--smartball-compare).
        self.figures: list[dict[str, Any]] = []
        self.soaks: list[dict[str, Any]] = []
        self.comparison: dict[str, Any] | None = None
        #: Per test: the updates of engines it built itself, summed up (too many to list).
        self.update_summaries: dict[str, dict[str, Any]] = {}

    # --- feeding ---------------------------------------------------------------------

    def add_test_report(self, report: Any) -> None:
        outcome = outcome_of(self.outcomes.get(report.nodeid), report)
        if outcome is not None:
            self.outcomes[report.nodeid] = outcome
        self.updates += getattr(report, "smartball_updates", None) or []
        summary = getattr(report, "smartball_update_summary", None)
        if summary:
            self.update_summaries[report.nodeid] = summary
        self.figures += getattr(report, "smartball_figures", None) or []
        self.soaks += getattr(report, "smartball_soak", None) or []

    def add_device(self, part: dict[str, Any]) -> None:
        """A device's entry (address, name, rssi, firmware_before/after, worker): merged
        with what is known, the earliest ``before`` and the latest ``after`` kept."""
        key = (part.get("address") or part.get("name") or "?").upper()
        known = self.devices.setdefault(key, {})
        for name, value in part.items():
            if value is None:
                continue
            if name in ("address", "firmware_before") and known.get(name):
                continue
            if (
                name == "firmware_after"
                and known.get("firmware_after_test")
                and not part.get("firmware_after_test")
            ):
                continue  # a simulated device after an update beats one after no update
            known[name] = value

    # --- the file --------------------------------------------------------------------

    def to_dict(self, exitstatus: int | None = None) -> dict[str, Any]:
        counts = Counter(self.outcomes.values())
        tests = [
            {
                "test": nodeid,
                "outcome": outcome,
                "updates": sum(
                    1 for u in self.updates if u["test"] == nodeid and u["purpose"] == "test"
                ),
                **(
                    {"update_summary": self.update_summaries[nodeid]}
                    if nodeid in self.update_summaries
                    else {}
                ),
            }
            for nodeid, outcome in sorted(self.outcomes.items())
        ]
        updates = [{**u, "test_outcome": self.outcomes.get(u["test"])} for u in self.updates]
        ok = (self.preflight is None or self.preflight.get("ok", True)) and not any(
            counts[o] for o in BAD_OUTCOMES
        )
        if exitstatus not in (None, 0, 5):  # 5: no tests collected, judged by the counts
            ok = False
        if self.comparison and (
            self.comparison["regressions"] or self.comparison.get("failed", False)
        ):
            ok = False
        candidate = self.firmware
        verified_on = sorted(
            {
                u["device"] or "?"
                for u in self.updates
                if candidate is not None
                and u["success"]
                and u["firmware_after"]
                and u["firmware_after"]["active_image_crc32"] == f"{candidate.crc32:08x}"
            }
        )
        devices = [self.devices[k] for k in sorted(self.devices)]
        # The devices the run found, when no --ble-address named them (the simulator's).
        device = dict(self.device)
        if not device.get("addresses"):
            device["addresses"] = [d["address"] for d in devices if d.get("address")]
        return {
            "smartball_report": FORMAT_VERSION,
            "verdict": "pass" if ok else "fail",
            "started": _iso(self.started),
            "finished": _iso(time.time()),
            "command": " ".join(sys.argv),
            "exit_status": exitstatus,
            "host": {"platform": platform.platform(), **versions()},
            "device": device,
            "bluez": self.bluez,
            "preflight": self.preflight,
            "firmware": {
                "candidate": image_dict(candidate),
                "verified_on": verified_on,
                "baseline": image_dict(self.baseline),
            },
            "devices": devices,
            "counts": {o: counts[o] for o in OUTCOMES},
            "updates_total": sum(1 for u in self.updates if u["purpose"] == "test"),
            "updates_failed": sum(
                1 for u in self.updates if u["purpose"] == "test" and u["outcome"] == "failed"
            ),
            "updates_unconfirmed": sum(
                1 for u in self.updates if u["purpose"] == "test" and u["outcome"] == "unconfirmed"
            ),
            "tests": tests,
            "updates": sorted(updates, key=lambda u: (u["test"], u["purpose"], u["update"])),
            "figures": sorted(
                self.figures, key=lambda f: (f["name"], f["test"], f["device"] or "")
            ),
            "soak": self.soaks,
            "comparison": self.comparison,
        }

    def write(self, path: str | Path, exitstatus: int | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(exitstatus), indent=2) + "\n", encoding="utf-8")
        return path


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))

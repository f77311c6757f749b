"""What each test leaves behind: its updates' figures, a soak's summary, and the timeline of
a failed test. The figures are every update's and those a test measured
(``smartball_figures``; JUnit XML properties and the ``--smartball-report`` JSON summary,
:mod:`pytest_smartball.plugin.report`); the timeline, when a test fails, is that of
the client's events and the simulated device's fault log (in the terminal and the JUnit
XML's ``<system-out>``). At the end of the run, ``--smartball-compare`` puts the figures
beside the previous release's (:mod:`pytest_smartball.compare`)."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest

from .. import compare, loops, preflight, soak
from .. import figures as fig
from ..contract import codec as p
from ..device_info import info_dict
from ..image import FirmwareImage
from ..options import SmartBallOptions
from ..ota import OtaEngine, OtaResult, OtaSettings
from ..ota.engine import engines_made
from ..release_report.trace import ProgressTrace
from ..targets import Target
from . import report as rep
from .attach import attach_timelines
from .command_line import NEEDS_DEVICE
from .session import (
    SmartBallSession,
    current_session,
    options_given,
    show_header_once,
    smartball_session,
)

TARGET = pytest.StashKey[Target]()
ENGINES = pytest.StashKey["list[OtaEngine]"]()
UPDATES = pytest.StashKey["list[Update]"]()
LINK_EVENTS = pytest.StashKey["list[tuple[float, str]]"]()
CALLED = pytest.StashKey[bool]()
FIGURES = pytest.StashKey[fig.FigureRecorder]()
SOAKS = pytest.StashKey["list[dict[str, Any]]"]()

TIMELINE_TITLE = "smartball timeline (client | device)"


#: Every engine made during a test's call, however it was made: (result, image, engine).
MADE = pytest.StashKey["list[tuple[OtaResult, rep.ImageRef, weakref.ref[OtaEngine]]]"]()


@dataclass(slots=True)
class Update:
    """An update of the test (an ``ota`` engine) or of its teardown (the baseline put back)."""

    image: FirmwareImage | rep.ImageRef
    result: OtaResult
    before: p.MsgInfo | None
    purpose: str = "test"
    engine: OtaEngine | None = None
    address: str | None = None
    #: The engine's progress over time, for the release page (None: not traced).
    progress: ProgressTrace | None = None

    @property
    def device(self) -> str | None:
        return self.engine.address if self.engine is not None else self.address


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[CALLED] = True
    made = item.stash.setdefault(MADE, [])

    def seen(engine: OtaEngine) -> None:
        # Not the engine: a fuzz test makes thousands, each holding its image's bytes.
        made.append((engine.result, rep.ImageRef.of(engine.image), weakref.ref(engine)))

    with engines_made(seen):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    records: list[dict[str, Any]] = []
    figures: list[dict[str, Any]] = []
    summary: dict[str, Any] | None = None
    if call.when == "teardown":
        records, summary = _update_records(item)
        figures = _figure_records(item)
        # Before the report is made: it copies item.user_properties (JUnit reads them there).
        item.user_properties.extend(rep.junit_properties(records))
        if summary is not None:
            item.user_properties.extend(rep.summary_properties(summary))
        if FIGURES in item.stash:
            item.user_properties.extend(fig.junit_properties(item.stash[FIGURES].figures))
        target = item.stash.get(TARGET, None)
        if target is not None and target.sim is not None:
            state = smartball_session(item.config)
            state.sim_last = target.sim.firmware.info()
            if any(r["purpose"] == "test" for r in records):
                state.sim_updated, state.sim_updated_by = state.sim_last, item.nodeid
    report = yield
    if records:
        report.smartball_updates = records  # type: ignore[attr-defined]
        attach_timelines(item.config, report, records)  # pytest-html's report, if any
    if figures:
        report.smartball_figures = figures  # type: ignore[attr-defined]
    if summary is not None:
        report.smartball_update_summary = summary  # type: ignore[attr-defined]
    if call.when == "teardown" and item.stash.get(SOAKS, None):
        report.smartball_soak = item.stash[SOAKS]  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        timeline = _timeline(item)
        if timeline:
            report.sections.append((TIMELINE_TITLE, timeline))
    return report


def _updates_of(item: pytest.Item) -> tuple[list[Update], list[OtaResult]]:
    """The test's updates in the order their engines were made: those of the ``ota``
    fixture and, listed, those of engines the test built itself, unless there were more of
    those than :data:`~.report.MAX_ITEMIZED_UPDATES` (then their results, to sum up);
    the baseline put back comes last."""
    fixture = item.stash.get(UPDATES, [])
    by_result = {id(u.result): u for u in fixture if u.purpose == "test"}
    own = [
        (result, image, ref)
        for result, image, ref in item.stash.get(MADE, [])
        if id(result) not in by_result and result.events  # made and run
    ]
    itemize = len(own) <= rep.MAX_ITEMIZED_UPDATES
    updates: list[Update] = []
    for result, image, ref in item.stash.get(MADE, []):
        if id(result) in by_result:
            updates.append(by_result.pop(id(result)))
        elif itemize and result.events:
            engine = ref()
            address = engine.address if engine is not None else None
            updates.append(Update(image, result, None, engine=None, address=address))
    updates += by_result.values()  # fixture engines made outside the call (set-up)
    updates += [u for u in fixture if u.purpose != "test"]
    return updates, [] if itemize else [result for result, _, _ in own]


def _update_records(item: pytest.Item) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    target = item.stash.get(TARGET, None)
    records = []
    counts: dict[str, int] = {}
    updates, summed = _updates_of(item)
    for update in updates:
        result = update.result
        if not result.events:  # made, never run
            continue
        counts[update.purpose] = counts.get(update.purpose, 0) + 1
        address = update.device or (target.address if target else None)
        records.append(
            rep.update_record(
                result,
                test=item.nodeid,
                index=counts[update.purpose],
                image=update.image,
                device=address,
                before=update.before,
                rssi=result.rssi_dbm if result.connects else None,
                purpose=update.purpose,
                progress=update.progress.as_list() if update.progress else None,
            )
        )
    return records, rep.update_summary(summed) if summed else None


def _figure_records(item: pytest.Item) -> list[dict[str, Any]]:
    if FIGURES not in item.stash:
        return []
    target = item.stash.get(TARGET, None)
    device = target.address if target else None
    return [
        {"test": item.nodeid, "device": device, **f.as_dict()} for f in item.stash[FIGURES].figures
    ]


def _timeline(item: pytest.Item) -> str:
    """The OTA engines' event logs and the simulated device's fault log, merged by time."""
    # (time, 0 for the device's cause before 1 for the client's effect, text)
    rows: list[tuple[float, int, str]] = []
    for engine in item.stash.get(ENGINES, []):
        rows += [
            (engine.started_at + e.time, 1, f"client  {e.kind:<16} {e.detail}")
            for e in engine.result.events
        ]
    rows += [(t, 1, text) for t, text in item.stash.get(LINK_EVENTS, [])]
    target = item.stash.get(TARGET, None)
    if target is not None and target.sim is not None:
        rows += [
            (r.time, 0, f"device  {r.fault:<16} [{r.trigger or 'armed'}] {r.detail}")
            for r in target.sim.fault_log
        ]
    rows.sort(key=lambda row: row[:2])
    return "\n".join(f"{t:10.3f}s  {text}" for t, _, text in rows)


class Recorder:
    """Session-wide hooks that need the config: collects outcomes and updates (on the
    process that writes the report), the workers' device parts, and writes the file."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.written: str | None = None
        self.comparison: compare.Comparison | None = None
        #: --smartball-html: the page written, or the sentence saying why it was not.
        self.html_written: str | None = None
        self.html_problem: str | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        state = current_session(self.config)
        if state is not None and state.report is not None:
            state.report.add_test_report(report)
        if report.when == "call" and report.failed:
            _junit_system_out(self.config, report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        state = current_session(self.config)
        part = getattr(node, "workeroutput", {}).get("smartball")
        if state is not None and state.report is not None and part:
            for device in part["devices"]:
                state.report.add_device(device)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        state = current_session(self.config)
        if state is None:
            return
        opts = state.options
        part = None if state.controller else _device_part(state, opts)
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["smartball"] = {"devices": [part] if part else []}
        if state.report is not None and opts.compare:
            self.comparison = _compare(
                state.report,
                opts.compare,
                opts.compare_tolerance_percent,
                opts.compare_min_measured_percent,
            )
            state.report.comparison = self.comparison.as_dict()
            if self.comparison.failed and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if state.report is not None and part:
            state.report.add_device(part)
        if state.report is not None and _uses_the_plugin(self.config, state):
            _junit_suite_properties(self.config, state.report, int(session.exitstatus))
        if state.report is None or not (opts.report or opts.html):
            return
        if opts.report:
            state.report.write(opts.report, int(session.exitstatus))
            self.written = opts.report
        if opts.html:
            self.html_problem = _write_html(state.report, opts.html, int(session.exitstatus))
            if self.html_problem and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED  # no page: no success
            self.html_written = None if self.html_problem else opts.html

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        state = current_session(self.config)
        if state is None or state.report is None:
            return
        if _uses_the_plugin(self.config, state):
            show_header_once(self.config)
        updates = [u for u in state.report.updates if u["purpose"] == "test"]
        if updates and (state.options.device == "real" or self.written):
            terminalreporter.write_sep("-", "smartball updates")
            for u in sorted(updates, key=lambda u: (u["test"], u["update"])):
                terminalreporter.write_line(_update_line(u))
        if state.report.figures and (
            self.written or self.comparison or state.options.device == "real"
        ):
            terminalreporter.write_sep("-", "smartball figures")
            for line in _figure_lines(state.report.figures):
                terminalreporter.write_line(line)
        for soak_summary in state.report.soaks:
            terminalreporter.write_sep("-", "smartball soak")
            for line in soak.lines(soak_summary):
                terminalreporter.write_line(line)
        if self.comparison is not None:
            c = self.comparison
            terminalreporter.write_sep(
                "-",
                f"smartball compare with {c.previous_path} (tolerance {c.tolerance_percent:g} %)",
            )
            for line in c.lines():
                terminalreporter.write_line(line)
            for sentence in c.failures():
                terminalreporter.write_line(f"smartball compare: FAILED: {sentence}", red=True)
            if not c.failed:
                measured = (
                    f"{c.measured_percent:.0f} % of the figures measured"
                    if c.not_measured
                    else "every figure measured"
                )
                terminalreporter.write_line(
                    f"smartball compare: no figure worse than the tolerance ({measured})"
                )
        if self.html_written:
            terminalreporter.write_line(f"smartball release page: {self.html_written}")
        if self.html_problem:
            terminalreporter.write_line(
                f"smartball release page: FAILED: {self.html_problem}", red=True
            )
        if self.written:
            summary = state.report.to_dict()
            unconfirmed = summary["updates_unconfirmed"]
            terminalreporter.write_line(
                f"smartball report: {self.written} (verdict {summary['verdict']}; "
                f"{summary['updates_total']} updates, {summary['updates_failed']} failed"
                + (f", {unconfirmed} unconfirmed)" if unconfirmed else ")")
            )


def _uses_the_plugin(config: pytest.Config, state: SmartBallSession) -> bool:
    """Suite properties only for a run about SmartBalls (another project's XML stays
    as it was)."""
    report = state.report
    return (
        options_given(config)
        or config.stash.get(NEEDS_DEVICE, False)
        or bool(report and (report.updates or report.figures or report.devices))
    )


def _junit_xml(config: pytest.Config) -> Any:
    """pytest's JUnit XML writer of this run (``--junitxml``), or None: none asked for, or a
    pytest without it where we look (``_pytest.junitxml`` is not a public API)."""
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - another pytest
        return None
    return config.stash.get(xml_key, None)


def _junit_suite_properties(config: pytest.Config, report: rep.RunReport, exitstatus: int) -> None:
    """What identifies the run, as ``<testsuite>`` properties of the JUnit XML (written by
    the process that writes the XML: the xdist controller, or the only one)."""
    xml = _junit_xml(config)
    if xml is None:
        return
    for name, value in rep.suite_properties(report.to_dict(exitstatus)):
        xml.add_global_property(name, value)


def _compare(
    report: rep.RunReport, path: str, tolerance: float, min_measured: float
) -> compare.Comparison:
    current = fig.median_by_name(report.figures)
    try:
        previous = compare.load_figures(path)
    except compare.ReportUnusable:  # checked at the start; gone or changed since
        previous = {}
    return compare.compare(current, previous, tolerance, path, min_measured)


def _write_html(report: rep.RunReport, path: str, exitstatus: int) -> str | None:
    """Write the release page; None, or the sentence saying why it could not be written."""
    from ..release_report.command import write_page

    try:
        write_page(path, report.to_dict(exitstatus))
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}"
    return None


def _figure_lines(records: list[dict[str, Any]]) -> list[str]:
    """Each figure (the median over devices), with its limit."""
    lines = []
    for name, f in sorted(fig.median_by_name(records).items()):
        limit = f"  (limit {f.text(f.limit)})" if f.limit is not None else ""
        beyond = "  BEYOND THE LIMIT" if f.beyond_limit else ""
        lines.append(f"{name:<26} {f.text():>12}{limit}{beyond}")
    return lines


def _device_part(state: SmartBallSession, opts: SmartBallOptions) -> dict[str, Any] | None:
    """This process's device for the report: before and after the run."""
    if state.options.device == "sim":
        if state.sim_first is None:
            return None
        # Each test has a fresh simulated device: "after" is the one the last update left
        # (what verified_on speaks of), not whichever test happened to run last.
        return {
            "address": state.address,
            "name": opts.name,
            "worker": state.worker,
            "firmware_before": info_dict(state.sim_first),
            "firmware_after": info_dict(state.sim_updated or state.sim_last or state.sim_first),
            "firmware_after_test": state.sim_updated_by,
        }
    device = state.mine
    if device is None or state.backend is None or not (opts.report or opts.html):
        return None
    part: dict[str, Any] = {"address": device.address, "worker": state.worker}
    from ..known_state import find_idle_and_info

    settings = state.reset_settings or OtaSettings()
    try:
        _, info = loops.run(
            asyncio.wait_for(
                find_idle_and_info(
                    state.backend, name=opts.name, address=device.address, settings=settings
                ),
                preflight.INFO_TIMEOUT_S + opts.scan_timeout,
            )
        )
        part["firmware_after"] = info_dict(info)
    except Exception as exc:  # the report must still be written
        part["firmware_after_error"] = f"{type(exc).__name__}: {exc}"
    return part


def _update_line(u: dict[str, Any]) -> str:
    test = u["test"].rsplit("::", 1)[-1]
    if u["success"]:
        status = "ok"
    elif u["outcome"] in ("unconfirmed", "reverted"):
        status = u["outcome"].upper()
    else:
        status = f"FAILED ({u['failure']})"
    rssi = f"  rssi {u['rssi_dbm']} dBm" if u["rssi_dbm"] is not None else ""
    after = u["firmware_after"]["firmware"] if u["firmware_after"] else "?"
    return (
        f"{test}[{u['update']}] {u['device'] or ''}  {status}  {u['duration_s']:.1f} s  "
        f"{u['throughput_bps'] / 1000:.1f} kB/s  reconnects {u['reconnects']}  "
        f"resumes {u['resumes']}  re-sent {u['bytes_resent']} B{rssi}  firmware after {after}"
    )


def _junit_system_out(config: pytest.Config, report: pytest.TestReport) -> None:
    """Put the failure's smartball sections into the JUnit XML as <system-out>, whatever
    junit_logging says (a CI system shows them next to the failure)."""
    sections = [(title, text) for title, text in report.sections if title == TIMELINE_TITLE]
    if not sections:
        return
    import xml.etree.ElementTree as ET

    xml = _junit_xml(config)
    if xml is None:
        return
    from _pytest.junitxml import bin_xml_escape

    node = ET.Element("system-out")
    node.text = bin_xml_escape(
        "\n".join(f"{f' {title} ':-^80}\n{text}\n" for title, text in sections)
    )
    with contextlib.suppress(AttributeError, KeyError):
        xml.node_reporter(report).append(node)

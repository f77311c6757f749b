"""A pytest plugin for the kill-table runner (kill_table.py): which tests a firmware bug
made fail honestly, and which ones only crashed.

Loaded with ``-p hil_tests.kill_observer --kill-observations PATH``; writes one JSON
object: for every test, its outcome and verdict:

* ``caught``: the test's call failed, and not because of the two things below;
* ``crashed``: an exception was raised inside the simulator (``smartball_sim``), or the
  event loop logged one from it: the simulated device broke, it did not misbehave;
* ``hung``: the test ran longer than ``--kill-test-timeout`` seconds (30 by default: the
  suite's slowest test takes a few, so only a loop without a bound gets there).
  pytest-timeout then ends the whole process (its thread method: an exception raised
  into an event loop's callback would be swallowed by the loop), leaving the test marked
  ``running``; kill_table.py records it as hung and runs the tests after it again;
* ``error``: the set-up or tear-down failed (the harness, not the test's verdict);
* ``passed`` / ``skipped``.

And whether the test also runs on real hardware (no ``sim_only`` or ``faults`` marker, no
``sim_device`` fixture): a bug that only such tests catch is caught on a bench too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

SIMULATOR = str(Path(__file__).resolve().parent.parent / "sim" / "smartball_sim")
#: Fixtures and markers that tie a test to the simulator.
SIM_ONLY_FIXTURES = frozenset({"sim_device"})
SIM_ONLY_MARKERS = ("sim_only", "faults")
#: Fixtures that need a lab's hook on hardware.
LAB_FIXTURES = frozenset({"power_cycle"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kill-observations", default=None, metavar="PATH")
    parser.addoption("--kill-test-timeout", type=float, default=30.0, metavar="SECONDS")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--kill-observations")
    if path:
        observer = Observer(Path(path), config.getoption("--kill-test-timeout"))
        config.pluginmanager.register(observer, "kill-observer")


def raised_in_simulator(tb: TracebackType | None) -> bool:
    """Whether the innermost frame of a traceback is simulator code."""
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and str(Path(last.tb_frame.f_code.co_filename).resolve()).startswith(
        SIMULATOR
    )


def exceptions_of(exc: BaseException) -> list[BaseException]:
    """The exception and, for groups (hypothesis reports several this way), its members."""
    if isinstance(exc, BaseExceptionGroup):
        return [e for member in exc.exceptions for e in exceptions_of(member)]
    return [exc]


class _LoopErrors(logging.Handler):
    """Exceptions the event loop logged (a callback or task that raised): from simulator
    code, they mean the simulated device crashed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.simulator_crashes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if any(raised_in_simulator(e.__traceback__) for e in exceptions_of(exc)):
                self.simulator_crashes.append(f"{type(exc).__name__}: {exc}")


class Observer:
    def __init__(self, path: Path, test_timeout_s: float) -> None:
        self.path = path
        self.test_timeout_s = test_timeout_s
        self.tests: dict[str, dict[str, Any]] = {}
        self.loop_errors = _LoopErrors()
        logging.getLogger("asyncio").addHandler(self.loop_errors)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            # Closest, so it wins over a test's own (longer) timeout marker.
            item.add_marker(pytest.mark.timeout(self.test_timeout_s, method="thread"), append=False)
            fixtures = set(getattr(item, "fixturenames", ()))
            sim_only = bool(fixtures & SIM_ONLY_FIXTURES) or any(
                item.get_closest_marker(m) for m in SIM_ONLY_MARKERS
            )
            self.tests[item.nodeid] = {
                "outcome": "not run",
                "verdict": "not run",
                "why": "",
                "hardware": "no" if sim_only else ("lab" if fixtures & LAB_FIXTURES else "yes"),
            }

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.tests[item.nodeid]["outcome"] = "running"  # what a hang leaves behind
        self._write()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        self.loop_errors.simulator_crashes = []
        try:
            return (yield)
        finally:
            item.stash[_CRASHES] = list(self.loop_errors.simulator_crashes)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        entry = self.tests.setdefault(item.nodeid, {"hardware": "yes"})
        if report.when == "call":
            entry["outcome"] = report.outcome
            entry["verdict"], entry["why"] = self._verdict(item, call, report)
        elif report.failed and entry.get("verdict") in (None, "not run", "passed"):
            entry["outcome"], entry["verdict"] = "error", "error"
            entry["why"] = f"{report.when} failed: {_first_line(report)}"
        elif report.skipped and report.when == "setup":
            entry["outcome"] = entry["verdict"] = "skipped"
        if report.when == "teardown":
            self._write()  # as the run goes: a run cut short still tells what it saw
        return report

    def _verdict(
        self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
    ) -> tuple[str, str]:
        crashes = item.stash.get(_CRASHES, [])
        if report.passed:
            return "passed", ""
        if report.skipped:
            return "skipped", ""
        if crashes:
            return "crashed", f"the simulator raised: {crashes[0]}"
        excinfo = call.excinfo
        if excinfo is not None:
            text = str(excinfo.value)
            if excinfo.typename == "Failed" and text.startswith("Timeout"):
                return "hung", text.splitlines()[0]
            for exc in exceptions_of(excinfo.value):
                if raised_in_simulator(exc.__traceback__):
                    return "crashed", f"the simulator raised {type(exc).__name__}: {exc}"
        return "caught", _first_line(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._write()

    def _write(self) -> None:
        self.path.write_text(json.dumps(self.tests, indent=1, sort_keys=True), encoding="utf-8")


_CRASHES = pytest.StashKey["list[str]"]()


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text.strip().splitlines()[0][:200] if text.strip() else ""

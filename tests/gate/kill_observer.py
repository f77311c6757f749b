"""A pytest plugin for the kill-table runner (kill_table.py): which tests a firmware bug
made fail honestly, and which ones only crashed.

Loaded with ``-p tests.gate.kill_observer --kill-observations PATH``; writes one JSON
object: for every test, its outcome and verdict:

* ``caught``: the test's call failed, and not because of the two things below;
* ``crashed``: an exception went through the simulator's code (a frame of a
  ``smartball_sim`` module anywhere in its traceback, also when the innermost frame is
  code the simulator called, such as the client's codec), or the event loop logged one
  that did: the simulated device broke, it did not misbehave. Frames are told by their
  module's import name, not by a file path, so the rule holds however the package is
  installed. The simulated stack's own errors (``BleakError``: a lost link, a refused
  connect) are its deliberate answers, not crashes;
* ``hung``: the test ran longer than ``--kill-test-timeout`` seconds (30 by default: the
  suite's slowest test takes a few, so only a loop without a bound gets there).
  pytest-timeout then ends the whole process (its thread method: an exception raised
  into an event loop's callback would be swallowed by the loop), leaving the test marked
  ``running``; kill_table.py records it as hung and runs the tests after it again;
* ``error``: the set-up or tear-down failed (the harness, not the test's verdict);
* ``passed`` / ``skipped``.

And whether the test also runs on real hardware: no ``sim_only`` or ``faults`` marker, no
``sim_device`` fixture, no fault plan armed on a simulated device while it ran (a
simulator-only fault) and no setting changed on a running simulated board (progressive
erase switched on): such a test skips or does something else on a board. A bug that only
such tests catch is caught on a bench too. And ``fired``: whether a catalogued bug's
deviation ran during the test (``smartball_sim.gate_probe``), so that a test the bug
reached without failing it is told from one it never reached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from bleak.exc import BleakError

from smartball_sim import gate_probe

#: The simulator's import name: its frames are those of this package's modules.
SIMULATOR = "smartball_sim"
#: Fixtures and markers that tie a test to the simulator.
SIM_ONLY_FIXTURES = frozenset({"sim_device"})
SIM_ONLY_MARKERS = ("sim_only", "faults")
#: Fixtures that need a lab's hook on hardware.
LAB_FIXTURES = frozenset({"power_cycle"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kill-observations", default=None, metavar="PATH")
    parser.addoption("--kill-test-timeout", type=float, default=30.0, metavar="SECONDS")
    parser.addoption(
        "--kill-first-catch",
        action="store_true",
        help="stop the run at the first test that caught (mutation runs: one catch kills)",
    )


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--kill-observations")
    if path:
        observer = Observer(
            Path(path),
            config.getoption("--kill-test-timeout"),
            stop_at_catch=config.getoption("--kill-first-catch"),
        )
        config.pluginmanager.register(observer, "kill-observer")


def is_simulator_frame(frame: FrameType) -> bool:
    module = str(frame.f_globals.get("__name__", ""))
    return module == SIMULATOR or module.startswith(SIMULATOR + ".")


def raised_in_simulator(exc: BaseException) -> bool:
    """Whether an exception went through simulator code: any frame of its traceback is a
    simulator module's (the innermost may be code the simulator called). A BleakError is
    the simulated stack answering as a real one would, not a crash."""
    if isinstance(exc, BleakError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if is_simulator_frame(tb.tb_frame):
            return True
        tb = tb.tb_next
    return False


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
            if any(raised_in_simulator(e) for e in exceptions_of(exc)):
                self.simulator_crashes.append(f"{type(exc).__name__}: {exc}")


class Observer:
    def __init__(self, path: Path, test_timeout_s: float, *, stop_at_catch: bool = False) -> None:
        self.path = path
        self.test_timeout_s = test_timeout_s
        self.stop_at_catch = stop_at_catch
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
        gate_probe.take()  # what earlier tests left is theirs
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
            if entry["verdict"] == "caught" and self.stop_at_catch:
                item.session.shouldstop = f"{item.nodeid} caught it (--kill-first-catch)"
        elif report.failed and entry.get("verdict") in (None, "not run", "passed"):
            entry["outcome"], entry["verdict"] = "error", "error"
            entry["why"] = f"{report.when} failed: {_first_line(report)}"
        elif report.skipped and report.when == "setup":
            entry["outcome"] = entry["verdict"] = "skipped"
        if report.when == "teardown":
            seen = gate_probe.take()
            entry["fired"] = bool(seen.fired)
            entry["sim_faults"] = seen.faults
            entry["sim_reconfigured"] = seen.reconfigured
            if (seen.faults or seen.reconfigured) and entry.get("hardware") != "no":
                entry["hardware"] = "no"  # a simulator-only set-up: not so on a board
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
                if raised_in_simulator(exc):
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

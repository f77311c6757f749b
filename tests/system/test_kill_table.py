"""The kill table's rules (tests/gate/kill_table.py, tests/gate/kill_observer.py, issue 20):
what counts as a crash rather than a catch, whatever the install; which catches count as
"on hardware too"; catching tests told from tests the bug reached without failing; and the
figures of docs/firmware-bugs.md checked against the run they came from."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from smartball_sim import gate_probe
from smartball_sim.firmware.bugs import FirmwareBug
from smartball_sim.firmware.model import SmartBallFirmware
from tests.gate import kill_observer, kill_table

pytest_plugins = ["pytester"]


def _raised(call: Any) -> BaseException:
    with pytest.raises(BaseException) as raised:
        call()
    return raised.value


# --- a crash is a crash -----------------------------------------------------------------


def test_a_crash_whose_innermost_frame_is_the_clients_codec_is_a_simulator_crash() -> None:
    """The firmware encodes a reply it should never build: the codec raises, called from
    the simulator. Its innermost frame is the client's codec; it is a crash all the same."""
    firmware = SmartBallFirmware(active_image=bytes(64))
    exc = _raised(lambda: firmware._reply(p.MsgOtaAck(-1)))
    assert isinstance(exc, p.ProtocolError)
    innermost = exc.__traceback__
    while innermost is not None and innermost.tb_next is not None:
        innermost = innermost.tb_next
    assert innermost is not None
    assert innermost.tb_frame.f_globals["__name__"] == "pytest_smartball.contract.codec"
    assert kill_observer.raised_in_simulator(exc)
    # The same codec error raised by the client's own call is the client's.
    assert not kill_observer.raised_in_simulator(_raised(lambda: p.encode(p.MsgOtaAck(-1))))


def test_a_crash_the_event_loop_logged_from_the_simulator_is_recorded() -> None:
    """A firmware callback that raised on the loop (the host then times out): the loop
    logs it; the observer's handler must see it, innermost frame in the codec or not."""
    firmware = SmartBallFirmware(active_image=bytes(64))
    exc = _raised(lambda: firmware._reply(p.MsgOtaAck(-1)))
    handler = kill_observer._LoopErrors()
    logger = logging.getLogger("test_kill_table.loop")
    logger.addHandler(handler)
    try:
        logger.error("Exception in callback", exc_info=(type(exc), exc, exc.__traceback__))
    finally:
        logger.removeHandler(handler)
    assert handler.simulator_crashes == [f"ProtocolError: {exc}"]


def test_the_simulated_stacks_own_errors_are_not_crashes() -> None:
    """A write on a lost link: the simulated bleak backend raises BleakError, as bleak
    does on a real stack. The simulator answered; it did not crash."""
    from bleak.exc import BleakError

    from smartball_sim.fronts.in_process import SimClient

    client = SimClient.__new__(SimClient)
    client._link = None
    exc = _raised(client._live_link)
    assert isinstance(exc, BleakError)
    assert not kill_observer.raised_in_simulator(exc)


def test_simulator_frames_are_told_by_module_name_wherever_the_file_lives(
    tmp_path: Path,
) -> None:
    """Installed as a wheel (site-packages), copied into a mutation run's tree, or in the
    repository: a smartball_sim module's frame is the simulator's. And a file under the
    repository's sim/ that is not imported as smartball_sim is not."""
    elsewhere = tmp_path / "site-packages" / "smartball_sim" / "installed.py"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_text("def crash():\n    raise RuntimeError('boom')\n")
    spec = importlib.util.spec_from_file_location("smartball_sim._installed_copy", elsewhere)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        assert kill_observer.raised_in_simulator(_raised(module.crash))
    finally:
        sys.modules.pop("smartball_sim._installed_copy", None)

    namespace: dict[str, Any] = {"__name__": "not_the_simulator"}
    code = compile("def crash():\n    raise RuntimeError('boom')\n", str(elsewhere), "exec")
    exec(code, namespace)
    assert not kill_observer.raised_in_simulator(_raised(namespace["crash"]))


# --- on hardware too, fired without catching: through the observer -----------------------

OBSERVED_TESTS = """
from smartball_sim.device import SimDevice
from smartball_sim.firmware.model import SmartBallFirmware
from smartball_sim.firmware.bugs import FirmwareBug


def test_fails_after_arming_a_simulator_only_fault():
    SimDevice().set_faults("no-reset")  # as the conformance COMPLETE cells do
    assert False, "caught"


def test_fails_after_switching_progressive_erase_on_the_board():
    SimDevice().firmware.progressive_erase = True  # as the start_progressive cells do
    assert False, "caught"


def test_fails_on_its_own():
    SimDevice()
    assert False, "caught"


def test_the_bug_runs_and_the_test_passes():
    firmware = SmartBallFirmware(active_image=bytes(64), bugs={FirmwareBug.LAST_PAGE_NOT_ERASED})
    assert firmware._pages_to_erase(9000) == 2  # the partial page: the deviation runs


def test_the_bug_is_on_but_never_runs():
    firmware = SmartBallFirmware(active_image=bytes(64), bugs={FirmwareBug.LAST_PAGE_NOT_ERASED})
    assert firmware._pages_to_erase(8192) == 2  # whole pages: nothing to round away
"""


def _observe(pytester: pytest.Pytester, *args: str) -> dict[str, dict[str, Any]]:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_observed=OBSERVED_TESTS)
    path = pytester.path / "observations.json"
    pytester.runpytest_inprocess(
        "-p", "tests.gate.kill_observer", f"--kill-observations={path}", "-p", "no:randomly", *args
    )
    seen: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return {name.partition("::")[2]: v for name, v in seen.items()}


def test_a_test_that_arms_a_simulator_only_fault_is_not_on_hardware(
    pytester: pytest.Pytester,
) -> None:
    seen = _observe(pytester)
    armed = seen["test_fails_after_arming_a_simulator_only_fault"]
    assert (armed["verdict"], armed["hardware"], armed["sim_faults"]) == (
        "caught",
        "no",
        ["no-reset"],
    )
    switched = seen["test_fails_after_switching_progressive_erase_on_the_board"]
    assert (switched["verdict"], switched["hardware"], switched["sim_reconfigured"]) == (
        "caught",
        "no",
        ["progressive_erase=True"],
    )
    plain = seen["test_fails_on_its_own"]
    assert (plain["verdict"], plain["hardware"], plain["sim_faults"]) == ("caught", "yes", [])


def test_catching_and_fired_without_catching_are_counted_apart(pytester: pytest.Pytester) -> None:
    seen = _observe(pytester)
    assert seen["test_the_bug_runs_and_the_test_passes"]["fired"] is True
    assert seen["test_the_bug_is_on_but_never_runs"]["fired"] is False
    run = kill_table.BugRun("last-page-not-erased", tests=seen)
    assert run.killers == [
        "test_fails_after_arming_a_simulator_only_fault",
        "test_fails_after_switching_progressive_erase_on_the_board",
        "test_fails_on_its_own",
    ]
    assert run.fired_not_caught == ["test_the_bug_runs_and_the_test_passes"]
    row = kill_table.table_lines({run.bug: run.as_record()})[2]
    # caught by 3, 1 of them on hardware, 1 fired without catching, none crashed
    assert row.startswith("| `last-page-not-erased` | 3 | 1 | 1 | 0 |"), row


def test_the_first_catch_can_end_a_run(pytester: pytest.Pytester) -> None:
    seen = _observe(pytester, "--kill-first-catch")
    outcomes = [v["outcome"] for v in seen.values()]
    assert outcomes[0] == "failed" and set(outcomes[1:]) == {"not run"}


def test_a_catch_the_control_run_marked_simulator_only_is_not_on_hardware() -> None:
    """A test may arm its fault only on the path the reference takes (a COMPLETE cell the
    bug never reaches): the control run's mark counts as well."""
    caught = {"verdict": "caught", "hardware": "yes", "fired": True}
    run = kill_table.BugRun("late-reset", tests={"t": dict(caught)})
    control = kill_table.BugRun(
        kill_table.CONTROL, tests={"t": {"verdict": "passed", "hardware": "no"}}
    )
    assert run.killers_on_hardware() == ["t"]
    assert run.killers_on_hardware(control) == []


def test_the_probe_records_nothing_without_bugs_or_faults() -> None:
    gate_probe.take()
    firmware = SmartBallFirmware(active_image=bytes(64))
    assert firmware._pages_to_erase(9000) == 3
    record = gate_probe.take()
    assert (record.fired, record.faults) == (set(), [])


# --- the doc's figures are a recorded run's ---------------------------------------------


def test_the_docs_kill_table_is_the_recorded_runs() -> None:
    """docs/firmware-bugs.md's table and summary are what `python -m tests.gate.kill_table
    --write-doc` rendered from docs/kill-table.json, the run it recorded beside them."""
    record = json.loads(kill_table.RECORDED.read_text(encoding="utf-8"))
    doc = kill_table.doc_table(kill_table.DOC.read_text(encoding="utf-8"))
    assert doc == kill_table.doc_block(record), (
        "docs/firmware-bugs.md's kill table is not the recorded run's: run "
        "`python -m tests.gate.kill_table --write-doc`"
    )
    catalogue = {bug.name for bug in contract.firmware_bugs()}
    assert set(record["bugs"]) <= catalogue, "the recorded run has bugs the catalogue lost"
    for bug, row in record["bugs"].items():
        assert set(row["caught_on_hardware_too"]) <= set(row["caught_by"]), bug
        assert row["killed"] == bool(row["caught_by"]), bug
        assert FirmwareBug(bug)

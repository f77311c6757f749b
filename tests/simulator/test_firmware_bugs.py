"""The catalogue of firmware bugs (issue 16): the data, the switches the simulator has, the
document, and the kill table's bookkeeping. Whether the suite catches each bug is what
``python -m tests.gate.kill_table`` measures (a CI stage); here: that every switch changes
what the device does, and that what counts as caught is decided honestly."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from smartball_sim.firmware.bugs import FirmwareBug, UnknownFirmwareBug, parse_bugs
from smartball_sim.firmware.model import FlashTimings, SmartBallFirmware
from tests.gate import kill_observer, kill_table

DOC = (Path(__file__).parents[2] / "docs" / "firmware-bugs.md").read_text(encoding="utf-8")


def test_the_simulator_has_a_switch_for_every_bug_of_the_catalogue() -> None:
    assert [b.value for b in FirmwareBug] == [e.name for e in contract.firmware_bugs()]
    assert len(FirmwareBug) >= 12
    assert re.search(r"firmware/model\.py", DOC), "docs/firmware-bugs.md says where switches are"
    source = _firmware_source()
    for bug in FirmwareBug:
        assert bug.what, bug
        assert re.search(rf"\bBug\.{bug.name}\b", source), (
            f"{bug} is not consulted anywhere in the firmware model"
        )


def _firmware_source() -> str:
    """The firmware model: model.py and its parts in sim/smartball_sim/firmware/, not the
    catalogue, the flash or the C core's glue."""
    folder = Path(__file__).parents[2] / "sim" / "smartball_sim" / "firmware"
    not_the_model = {"__init__.py", "bugs.py", "flash.py", "c_core.py", "c_firmware.py"}
    parts = sorted(folder.glob("*.py"))
    return "".join(path.read_text() for path in parts if path.name not in not_the_model)


def test_every_entry_says_what_breaks_and_why() -> None:
    for entry in contract.firmware_bugs():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)+", entry.name), entry.name
        assert entry.what.endswith(".") and len(entry.what) > 60, entry.name
        assert entry.breaks, entry.name


def test_the_document_shows_the_catalogue_of_the_data() -> None:
    block = re.search(r"<!-- BEGIN catalogue[^>]*-->\n(.*?)<!-- END catalogue -->", DOC, re.S)
    assert block and block.group(1) == contract.render_firmware_bugs()


def test_the_documents_kill_table_has_every_bug_killed() -> None:
    """The table in docs/firmware-bugs.md is a real run's (python -m tests.gate.kill_table
    --write-doc); it must cover the whole catalogue, and CI re-measures it every run."""
    block = DOC.split(kill_table.BEGIN, 1)[1].split(kill_table.END, 1)[0]
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z-]+)` \| ([^|]+) \|", block, re.M)
    }
    awaiting = {b.value for b in NOT_YET_IN_THE_RECORDED_RUN} - set(rows)
    assert set(rows) | awaiting == {b.value for b in FirmwareBug}
    assert not [bug for bug, caught in rows.items() if "SURVIVED" in caught]


def test_unknown_names_are_refused_with_the_list() -> None:
    assert parse_bugs(["late-reset,no-crc-check", "late-reset"]) == {
        FirmwareBug.LATE_RESET,
        FirmwareBug.NO_CRC_CHECK,
    }
    with pytest.raises(UnknownFirmwareBug, match="no firmware bug 'late' in the catalogue"):
        parse_bugs(["late"])


# --- each switch changes what the firmware does ---------------------------------------------


def _replies(bugs: frozenset[FirmwareBug], script: list[bytes]) -> list[p.Message]:
    """The firmware model fed ``script`` (one write every 50 ms), what it sent."""
    from pytest_smartball.loops import virtual_event_loop

    loop = virtual_event_loop()
    decoder = p.FrameDecoder()
    sent: list[p.Message] = []

    def reset() -> None:
        fw.power_cycle()

    fw = SmartBallFirmware(
        active_image=b"\x01" * 4096,
        window=4,
        timings=FlashTimings(write_word_s=0.0),
        send=lambda frame: sent.extend(p.parse_message(f) for f in decoder.feed(frame)),
        request_reset=reset,
        bugs=bugs,
    )

    async def run() -> None:
        for data in script:
            fw.receive(data)
            await asyncio.sleep(0.05)
        await asyncio.sleep(3.0)

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return sent


IMAGE = bytes(range(256)) * 40  # 10240 bytes: 3 pages, the last partial
SCRIPT = [
    p.encode(p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), 200)),
    p.encode(p.CmdInfo()),
    p.encode(p.CmdOtaStatus()),
    p.encode_frame(0x7F, b""),
    *(p.encode(p.CmdOtaData(o, IMAGE[o : o + 200])) for o in range(0, len(IMAGE), 200)),
    p.encode(p.CmdOtaStatus()),
    p.encode(p.CmdOtaData(len(IMAGE), b"\0" * 8)),
    p.encode(p.CmdOtaFinish()),
    p.encode(p.CmdOtaStatus()),
]


def test_the_session_script_exercises_the_reference() -> None:
    replies = _replies(frozenset(), SCRIPT)
    assert p.MsgOtaDone(p.crc32(IMAGE)) in replies


#: The bugs of a signed update: they act on a signed-only ball only (the script here runs
#: on a v1 ball); tests/simulator/test_firmware_signed_bugs.py shows each one changing what the
#: device does.
SIGNED_UPDATE_BUGS = {
    FirmwareBug.NO_SIGNATURE_CHECK,
    FirmwareBug.HASH_OF_STREAM,
    FirmwareBug.HASH_NOT_COMPARED,
    FirmwareBug.COUNTER_NOT_ENFORCED,
    FirmwareBug.COUNTER_NOT_PERSISTED,
    FirmwareBug.CONFIRM_NOT_PERSISTED,
    FirmwareBug.NO_REVERT,
    FirmwareBug.BOOTLOADER_TRUSTS_PENDING,
    FirmwareBug.ERASE_BEFORE_MANIFEST_CHECK,
}
#: Catalogue bugs added after the kill-table run docs/firmware-bugs.md records (and
#: docs/kill-table.json beside it): their rows come with the next recorded run, which needs
#: the gate's security tests (hil_tests/test_security_*.py). CI's kill-table stage measures
#: every bug of the catalogue on each run whatever this set says; empty it once the doc's
#: run has them.
NOT_YET_IN_THE_RECORDED_RUN: frozenset[FirmwareBug] = frozenset()


#: Bugs whose effect needs more than one link, a reset, a second session, a wrong CRC or a
#: write that fails to show: the kill table shows them (each makes hil_tests fail).
NEEDS_MORE = {
    FirmwareBug.NO_CRC_CHECK,
    FirmwareBug.SESSION_LOST_ON_DROP,
    FirmwareBug.OFFSET_AHEAD_AFTER_DROP,
    FirmwareBug.LAST_PAGE_NOT_ERASED,
    FirmwareBug.INFO_STALE_AFTER_SWITCH,
    FirmwareBug.SESSION_SURVIVES_RESET,
    FirmwareBug.RESUME_RESTARTS_ERASE,
    FirmwareBug.START_IGNORES_SESSION,
    FirmwareBug.ABORT_KEEPS_SESSION,
    FirmwareBug.ACK_BEFORE_WRITTEN,
    FirmwareBug.FINAL_ACK_LOST_TO_FINISH,
    FirmwareBug.STATUS_REPORTS_WRITTEN_OFFSET,
    FirmwareBug.WINDOW_EXCEEDS_BUFFER,
    FirmwareBug.PARTIAL_FRAME_KEPT,
    FirmwareBug.LATE_RESET,
    FirmwareBug.SPLIT_FRAME_LOST,
    FirmwareBug.MERGED_FRAMES_LOST,
    FirmwareBug.IDLE_FROM_FRAME_START,
    FirmwareBug.SLOW_VERIFY,
    FirmwareBug.BOOT_ERASES_STAGING,
    FirmwareBug.PENDING_PERSISTED_AT_RESET,
    FirmwareBug.ABORT_IN_COMPLETE_CANCELS_SWITCH,
    FirmwareBug.FLASH_ERROR_STICKY,
    FirmwareBug.LONG_FRAME_DROPPED,
    *SIGNED_UPDATE_BUGS,
}


@pytest.mark.parametrize("bug", sorted(set(FirmwareBug) - NEEDS_MORE))
def test_the_switch_changes_what_the_device_sends(bug: FirmwareBug) -> None:
    assert _replies(frozenset({bug}), SCRIPT) != _replies(frozenset(), SCRIPT)


# --- what the kill table counts ---------------------------------------------------------------


def _raise_in(module: str) -> BaseException:
    code = compile("raise RuntimeError('boom')", "<kill table>", "exec")
    try:
        exec(code, {"__name__": module})
    except RuntimeError as exc:
        return exc
    raise AssertionError("unreachable")


def test_an_exception_from_the_simulator_is_a_crash_not_a_catch() -> None:
    inside = _raise_in("smartball_sim.firmware.model")
    outside = _raise_in(__name__)
    assert kill_observer.raised_in_simulator(inside)
    assert not kill_observer.raised_in_simulator(outside)
    group = BaseExceptionGroup("several", [ValueError("x"), inside])
    assert [type(e) for e in kill_observer.exceptions_of(group)] == [ValueError, RuntimeError]


def test_a_bug_that_only_crashes_or_hangs_survives() -> None:
    hw = {"hardware": "yes", "why": ""}
    runs = [
        kill_table.BugRun("caught-one", tests={"t.py::a": {**hw, "verdict": "caught"}}),
        kill_table.BugRun("crashing-one", tests={"t.py::a": {**hw, "verdict": "crashed"}}),
        kill_table.BugRun("hanging-one", tests={"t.py::b": {**hw, "verdict": "hung"}}),
        kill_table.BugRun(
            "sim-only-one", tests={"t.py::c": {**hw, "verdict": "caught", "hardware": "no"}}
        ),
    ]
    lines = kill_table.table_lines({r.bug: r.as_record() for r in runs})
    assert "| `caught-one` | 1 | 1 | 0 | 0 | `t::a` |" in lines
    assert (
        "| `crashing-one` | **SURVIVED** (the simulator crashed or hung) | 0 | 0 | 1 | |" in lines
    )
    assert "| `hanging-one` | **SURVIVED** (the simulator crashed or hung) | 0 | 0 | 1 | |" in lines
    assert "| `sim-only-one` | 1 | 0 | 0 | 0 | `t::c` |" in lines
    assert [r.killed for r in runs] == [True, False, False, True]


def test_the_runner_refuses_an_unknown_bug(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        kill_table.main(["--bug", "no-such-bug"])
    assert "invalid choice" in capsys.readouterr().err
    assert sys.modules["tests.gate.kill_table"] is kill_table

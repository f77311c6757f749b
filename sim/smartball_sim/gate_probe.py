"""What a kill-table run (``tests/gate/kill_observer.py``) asks the simulator after each
test: which catalogued firmware bugs had their deviation run, and which simulator-only
faults were armed or settings changed on a running simulated board (a test that does
either cannot run the same way on a board: it skips there, or does something else).

Process-wide on purpose: the fuzz tests build simulated devices of their own, and a test
may use several; the observer takes (and clears) the record after every test. Nothing
here changes what the simulator does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .firmware.bugs import FirmwareBug


@dataclass(slots=True)
class GateRecord:
    #: Bugs whose deviation ran (their switch was asked where it applies, and was on).
    fired: set[str] = field(default_factory=set)
    #: Fault plans armed on a simulated device, in their text form.
    faults: list[str] = field(default_factory=list)
    #: Settings changed on a running simulated device (no board can be so changed).
    reconfigured: list[str] = field(default_factory=list)


_RECORD = GateRecord()


def bug_fired(bug: FirmwareBug) -> None:
    _RECORD.fired.add(bug.value)


def fault_armed(plan: str) -> None:
    _RECORD.faults.append(plan)


def sim_reconfigured(setting: str) -> None:
    _RECORD.reconfigured.append(setting)


def take() -> GateRecord:
    """What happened since the last call; the record starts empty again."""
    global _RECORD
    record, _RECORD = _RECORD, GateRecord()
    return record


class BugSwitches(frozenset[FirmwareBug]):
    """A firmware's bugs. The firmware model asks ``Bug.X in self.bugs`` only where the
    bug's deviation applies, so a yes means the deviation runs: it is recorded."""

    def __new__(cls, bugs: Iterable[FirmwareBug] = ()) -> BugSwitches:
        return super().__new__(cls, bugs)

    def __contains__(self, bug: object) -> bool:
        on = super().__contains__(bug)
        if on and isinstance(bug, FirmwareBug):
            bug_fired(bug)
        return on

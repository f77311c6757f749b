"""The OTA engine's decisions when the update does not go on: the budgets and the three
outcomes when the device cannot be reached, the device's errors (P13, P16), and the erase's
silence (timeouts.SilenceWatch).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_smartball.contract import codec as p
from pytest_smartball.ota import observations as o
from pytest_smartball.ota.decide import decide
from pytest_smartball.ota.record import Commit, Record, Said
from pytest_smartball.ota.states import EventKind, FailureKind, Outcome, State
from pytest_smartball.ota.timeouts import SilenceWatch

from .ota_decide_cases import LIMITS, OTHER_CRC, error, record, run, status

# --- the three outcomes when the device cannot be reached -----------------------------------


def give_up(r: Record) -> Record:
    """Fail every query until the engine gives up."""
    while not r.state.terminal:
        r = run(r, o.LinkFailed("no MSG_INFO reply to CMD_INFO within 4.5 s"), o.FailedLinkClosed())
        if not r.state.terminal:
            r = run(r, o.BackedOff(), o.Found(), o.Connected())
    return r


@pytest.mark.parametrize(
    ("commit", "outcome", "says"),
    [
        (Commit.NONE, Outcome.FAILED, "The device keeps its old image"),
        (Commit.FINISH_SENT, Outcome.UNCONFIRMED, "CMD_OTA_FINISH was sent, but no answer came"),
        (Commit.VERIFIED, Outcome.UNCONFIRMED, "verified the new image"),
    ],
)
def test_giving_up_tells_what_the_device_holds(commit: Commit, outcome: Outcome, says: str) -> None:
    """E1: the switch asked for (FINISH sent, or DONE) is never 'keeps its old image'."""
    r = give_up(record(State.QUERYING, seen=True, commit=commit))
    assert r.outcome is outcome and says in r.error
    if outcome is Outcome.UNCONFIRMED:
        assert r.failure is None and "keeps its old image" not in r.error


def test_the_give_up_sentence_names_the_limit_the_offset_said_and_the_last_error() -> None:
    """E4."""
    r = give_up(record(State.QUERYING, seen=True, said=Said(100_280, "MSG_OTA_STATUS")))
    assert "5 attempts in a row without progress (the limit is 5" in r.error
    assert "last reported offset 100280 of 20000 (MSG_OTA_STATUS)" in r.error
    assert "last error: no MSG_INFO reply to CMD_INFO within 4.5 s" in r.error
    capped = give_up(record(State.QUERYING, seen=True, recoveries=LIMITS.max_recoveries))
    assert "after 100 recoveries in this update, the cap" in capped.error
    assert "attempts in a row" not in capped.error


def test_progress_renews_the_budget_and_only_getting_further_counts() -> None:
    r = record(State.TRANSFERRING, seen=True, attempts=4, progress_mark=(2, 10_000))
    assert run(r, o.Acked(9_000)).attempts == 4  # not further than before
    assert run(r, o.Acked(10_232)).attempts == 0


def test_resyncs_without_progress_end_in_a_recovery_and_then_a_give_up() -> None:
    r = record(State.TRANSFERRING, seen=True, session_opened=True)
    for _ in range(LIMITS.max_attempts_without_progress):
        r = run(r, o.Desync(status(p.OtaState.IDLE)))
        assert r.state is State.QUERYING
        r = replace(r, state=State.TRANSFERRING)
    r = run(r, o.Desync(status(p.OtaState.IDLE)))
    assert r.state is State.RECOVERING
    assert run(r, o.FailedLinkClosed()).outcome is Outcome.FAILED


# --- device errors (P13, P16) -----------------------------------------------------------------

AWAITED = (p.MsgType.CMD_OTA_START, p.MsgType.CMD_OTA_DATA, p.MsgType.CMD_OTA_FINISH)
STATE_AWAITING = {
    p.MsgType.CMD_OTA_START: State.WAITING_READY,
    p.MsgType.CMD_OTA_DATA: State.TRANSFERRING,
    p.MsgType.CMD_OTA_FINISH: State.FINISHING,
}


@pytest.mark.parametrize(
    ("code", "awaiting"), list(itertools.product([*p.ErrorCode, 200], AWAITED))
)
def test_an_error_code_is_a_resync_or_a_refusal_of_the_command_it_names(
    code: int, awaiting: p.MsgType
) -> None:
    r = record(STATE_AWAITING[awaiting], seen=True, commit=Commit.NONE)
    for command in (0, awaiting):  # 0: an older device that does not say which
        new, kinds = decide(r, o.DeviceError(error(code, command, "x"), awaiting))
        if code in (p.ErrorCode.BAD_STATE, p.ErrorCode.BAD_OFFSET, p.ErrorCode.BAD_FRAME):
            assert new.state is State.QUERYING and kinds[0].kind is EventKind.DEVICE_ERROR
        else:
            own_kind = {
                p.ErrorCode.UNTRUSTED_KEY: FailureKind.UNTRUSTED_KEY,
                p.ErrorCode.DOWNGRADE: FailureKind.DOWNGRADE,
                p.ErrorCode.UNSIGNED: FailureKind.UNSIGNED,
            }.get(code, FailureKind.REFUSED)  # type: ignore[call-overload]
            assert new.outcome is Outcome.FAILED and new.failure is own_kind
            assert f"device refused {awaiting.name}" in new.error
            assert "keeps its old image" in new.error
            if code == 200:
                assert "UNKNOWN(200)" in new.error and "does not know" in new.error


def test_an_error_that_answers_another_command_is_stale_and_ignored() -> None:
    r = record(State.WAITING_READY, seen=True)
    late = error(p.ErrorCode.BAD_STATE, p.MsgType.CMD_OTA_DATA, "DATA in state erasing")
    new, kinds = decide(r, o.DeviceError(late, p.MsgType.CMD_OTA_START))
    assert new == r and [k.kind for k in kinds] == [EventKind.IGNORED]


def test_a_refused_finish_is_not_a_committed_switch() -> None:
    r = record(State.FINISHING, seen=True, commit=Commit.FINISH_SENT)
    bad_state = error(p.ErrorCode.BAD_STATE, p.MsgType.CMD_OTA_FINISH)
    assert run(r, o.DeviceError(bad_state, p.MsgType.CMD_OTA_FINISH)).commit is Commit.NONE


def test_done_with_another_crc_is_a_refusal() -> None:
    r = run(record(State.FINISHING, seen=True, commit=Commit.FINISH_SENT), o.Done(OTHER_CRC))
    assert r.failure is FailureKind.REFUSED and f"{OTHER_CRC:08x}" in r.error


# --- the erase's silence (timeouts.SilenceWatch) --------------------------------------------


def test_the_erase_silence_restarts_only_when_the_erase_gets_further() -> None:
    """MSG_OTA_PROGRESS is a sign of life only when it says more than before: a device that
    repeats itself (or goes back) is still silent about the erase."""
    watch = SilenceWatch(5.0, now=0.0)
    assert watch.deadline == 5.0
    for now, done, deadline in [
        (1.0, 0, 6.0),  # the first progress, even of nothing erased yet
        (2.0, 0, 6.0),  # the same again
        (3.0, 4096, 8.0),
        (4.0, 2048, 8.0),  # less than before
        (7.5, 4096, 8.0),
        (7.9, 8192, 12.9),
    ]:
        watch.progress(done, now)
        assert watch.deadline == deadline, (now, done)


@given(st.lists(st.tuples(st.floats(0, 3), st.integers(0, 8)), max_size=30))
def test_the_erase_silence_ends_a_timeout_after_the_furthest_progress(
    steps: list[tuple[float, int]],
) -> None:
    watch, now = SilenceWatch(5.0, now=0.0), 0.0
    furthest, since = -1, 0.0
    for dt, done in steps:
        now += dt
        watch.progress(done, now)
        if done > furthest:
            furthest, since = done, now
        assert watch.deadline == since + 5.0

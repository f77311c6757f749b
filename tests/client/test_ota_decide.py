"""The OTA engine's decisions on their own: a pure function, no link, no device, no clock.

Exhaustive over every state and every kind of observation for a set of records, then
hypothesis over whole sequences of observations: every decision follows an allowed
transition, budgets bound every run, and an outcome never says more than the record knows.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import Manifest
from pytest_smartball.ota import decide as d
from pytest_smartball.ota import observations as o
from pytest_smartball.ota import states
from pytest_smartball.ota.decide import decide
from pytest_smartball.ota.record import Commit, ImageId, Limits, Record, Said
from pytest_smartball.ota.states import (
    TRANSITIONS,
    EventKind,
    FailureKind,
    IllegalObservation,
    IllegalTransition,
    Outcome,
    State,
    check_transition,
)
from pytest_smartball.ota.timeouts import SilenceWatch

IMAGE = ImageId(20_000, 0x1234ABCD, "test.bin")
OTHER_CRC = 0xDEADBEEF
LIMITS = Limits()
OLD_INFO = p.MsgInfo(1, 1, 0, 0, 12_000, 0x0BAD0BAD, 480 * 1024)
NEW_INFO = p.MsgInfo(1, 1, 1, 0, IMAGE.size, IMAGE.crc32, 480 * 1024)
PROGRESSIVE_INFO = replace(OLD_INFO, capabilities=p.Capability.PROGRESSIVE_ERASE)
#: A signed-only device (section 16) that trusts the test key, counter 3, before and after.
TEST_KID = 0x5EC0DE01
SIGNED_OLD_INFO = replace(
    OLD_INFO, capabilities=p.Capability.SIGNED_IMAGES, security_counter=3, trusted_key_id=TEST_KID
)
SIGNED_NEW_INFO = replace(
    NEW_INFO, capabilities=p.Capability.SIGNED_IMAGES, security_counter=5, trusted_key_id=TEST_KID
)
#: The same image, signed (counter 5) by the key the device trusts.
SIGNED_IMAGE = replace(
    IMAGE,
    source="test.sbi",
    manifest=Manifest(1, 1, 0, 5, IMAGE.size, IMAGE.crc32, TEST_KID, bytes(32)),
)


def status(
    state: int, offset: int = 0, *, ours: bool = True, crc: int | None = None
) -> p.MsgOtaStatus:
    if state in (p.OtaState.IDLE, p.OtaState.ERROR):
        return p.MsgOtaStatus(state, 0, 0, 0)
    if ours:
        return p.MsgOtaStatus(state, offset, IMAGE.size, IMAGE.crc32)
    return p.MsgOtaStatus(state, offset, 30_000, crc if crc is not None else OTHER_CRC)


def error(code: int, command: int = 0, text: str = "") -> p.MsgError:
    return p.MsgError(code, command, text)


def record(state: State = State.SCANNING, **fields: object) -> Record:
    return replace(Record(IMAGE, LIMITS), state=state, **fields)  # type: ignore[arg-type]


def run(r: Record, *seen: o.Observation) -> Record:
    for observation in seen:
        r, _ = decide(r, observation)
    return r


def notes(r: Record, seen: o.Observation) -> list[EventKind]:
    return [n.kind for n in decide(r, seen)[1]]


# --- the table ------------------------------------------------------------------------------


def test_the_docstring_table_shows_exactly_the_allowed_transitions() -> None:
    shown = states.diagram_transitions(states.__doc__ or "")
    assert shown == {s: nexts for s, nexts in TRANSITIONS.items() if nexts}


def test_terminal_states_lead_nowhere_and_everything_else_can_give_up_or_go_on() -> None:
    for state, nexts in TRANSITIONS.items():
        assert state.terminal == (not nexts), state
    # Every state reaches a terminal one (no trap without an exit).
    reach = {s: set(n) for s, n in TRANSITIONS.items()}
    for _ in range(len(State)):
        for s in reach:
            reach[s] |= set().union(*(reach[n] for n in reach[s])) if reach[s] else set()
    for state in State:
        assert state.terminal or reach[state] & {State.FAILED, State.SUCCEEDED}, state


def test_check_transition_refuses_what_the_table_does_not_allow() -> None:
    check_transition(State.SCANNING, State.CONNECTING)
    check_transition(State.QUERYING, State.QUERYING)  # staying is not a transition
    with pytest.raises(IllegalTransition):
        check_transition(State.SCANNING, State.TRANSFERRING)
    with pytest.raises(IllegalTransition):
        check_transition(State.SUCCEEDED, State.SCANNING)


# --- every state x every kind of observation -------------------------------------------------

#: One or more examples of each kind of observation.
EXAMPLES: list[o.Observation] = [
    o.Found(),
    o.NotFound("no SmartBall"),
    o.Connected(),
    o.LinkFailed("device disconnected"),
    o.InfoReply(OLD_INFO),
    o.InfoReply(NEW_INFO),
    o.InfoReply(OLD_INFO, too_large="too large"),
    *(o.StatusReply(status(s, 4000)) for s in p.OtaState),
    *(o.StatusReply(status(s, 4000, ours=False)) for s in p.OtaState),
    o.StatusReply(p.MsgOtaStatus(9, 0, 0, 0)),  # a state this host does not know
    *(o.AbortReply(status(s)) for s in p.OtaState),
    o.ManifestAccepted(status(p.OtaState.IDLE)),
    o.HealthChecked(True),
    o.HealthChecked(False, "exited with 1"),
    o.ConfirmReply(SIGNED_NEW_INFO),
    o.ConfirmReply(replace(SIGNED_NEW_INFO, image_state=p.ImageState.TEST)),
    o.ConfirmReply(SIGNED_OLD_INFO),
    o.InfoReply(SIGNED_OLD_INFO),
    o.InfoReply(replace(SIGNED_NEW_INFO, image_state=p.ImageState.TEST)),
    o.InfoReply(replace(SIGNED_OLD_INFO, image_state=p.ImageState.REVERTED)),
    o.StartSent(0),
    o.EraseProgress(4096, 20_480),
    o.Ready(p.MsgOtaReady(232, 16)),
    o.Stabilised(),
    o.Acked(2320),
    o.AckTimeout(3712, 4.5),
    o.Rewound(2320, 1160, refused=True),
    o.Rewound(2320, 0, refused=False),
    o.Desync(status(p.OtaState.IDLE)),
    o.AllAcked(),
    o.FinishSent(),
    o.Done(IMAGE.crc32),
    o.Done(OTHER_CRC),
    *(
        o.DeviceError(error(code, command), awaiting)
        for code in (*p.ErrorCode, 99)
        for awaiting in (
            p.MsgType.CMD_OTA_MANIFEST,
            p.MsgType.CMD_OTA_START,
            p.MsgType.CMD_OTA_DATA,
            p.MsgType.CMD_OTA_FINISH,
        )
        for command in (0, awaiting, p.MsgType.CMD_INFO)
    ),
    o.DeviceReset(),
    o.ResetNotSeen(5.0),
    o.FailedLinkClosed(),
    o.BackedOff(),
]

#: Records that differ in what the update has done so far.
RECORDS = [
    record(state, **extra)
    for state in State
    if not state.terminal
    for extra in (
        {},
        {"seen": True, "session_opened": True, "fits_checked": True},
        {"seen": True, "commit": Commit.FINISH_SENT, "said": Said(20_000, "MSG_OTA_ACK")},
        {"seen": True, "commit": Commit.VERIFIED, "reset_waits": 1},
        {"seen": True, "attempts": LIMITS.max_attempts_without_progress + 1},
        {"seen": True, "recoveries": LIMITS.max_recoveries + 1},
        {"seen": True, "other_commit": OTHER_CRC, "reset_waits": 1},
        {"seen": True, "commit": Commit.VERIFIED, "failed_activations": 1},
        {"seen": True, "link_closed": True, "info_answered": True},
        {"seen": True, "commit": Commit.VERIFIED, "capabilities": p.Capability.SIGNED_IMAGES},
        {"seen": True, "info": SIGNED_OLD_INFO, "first_info": SIGNED_OLD_INFO},
        {"image": SIGNED_IMAGE},
        {"image": SIGNED_IMAGE, "seen": True, "capabilities": p.Capability.SIGNED_IMAGES},
        {
            "image": SIGNED_IMAGE,
            "seen": True,
            "commit": Commit.VERIFIED,
            "capabilities": p.Capability.SIGNED_IMAGES,
            "info": SIGNED_OLD_INFO,
            "first_info": SIGNED_OLD_INFO,
        },
    )
]


@pytest.mark.parametrize("seen", EXAMPLES, ids=lambda s: type(s).__name__)
def test_every_observation_in_every_state_is_refused_or_follows_the_table(
    seen: o.Observation,
) -> None:
    for r in RECORDS:
        try:
            new, _ = decide(r, seen)
        except IllegalObservation:
            # Not this state's, or out of order (RECOVERING: FailedLinkClosed, then BackedOff;
            # QUERYING: INFO, then STATUS; a manifest only for a signed image; the health
            # check and the confirm only after the device took the new image).
            assert not isinstance(seen, d._ACCEPTS[r.state]) or r.state in (
                State.RECOVERING,
                State.QUERYING,
                State.SENDING_MANIFEST,
                State.HEALTH_CHECKING,
                State.CONFIRMING,
            )
            continue
        assert isinstance(seen, d._ACCEPTS[r.state])
        assert new.state is r.state or new.state in TRANSITIONS[r.state]
        assert (new.outcome is not None) == new.state.terminal
        _check_honest(new)


def test_every_state_accepts_something_and_terminal_states_nothing() -> None:
    for state in State:
        accepted = [s for s in EXAMPLES if isinstance(s, d._ACCEPTS.get(state, ()))]
        assert bool(accepted) != state.terminal, state
    with pytest.raises(IllegalObservation):
        decide(record(State.SUCCEEDED, outcome=Outcome.SUCCEEDED), o.Found())


def _check_honest(r: Record) -> None:
    """An outcome says no more than the record knows."""
    if r.outcome is Outcome.SUCCEEDED:
        assert r.commit is not Commit.NONE and r.info is not None
        assert r.info.runs(IMAGE.size, IMAGE.crc32)
    elif r.outcome is Outcome.UNCONFIRMED:
        assert r.commit is not Commit.NONE and r.failure is None
        # Never that it runs its old image (it may run the new one); a signed-only device's
        # trial ending at its next reset is a fact of the protocol, not a guess.
        said = r.error.replace("still run its old one", "")
        assert "old image" not in said.replace("returns to its old image at its next reset", "")
    elif r.outcome is Outcome.REVERTED:
        # Only after the device verified the new image, reset, and said what it runs.
        assert r.commit is Commit.VERIFIED and r.info is not None and r.failure is None
        assert r.signed_only and "runs its old image" in r.error
    elif r.outcome is Outcome.FAILED:
        assert r.failure is not None and r.error
        if "keeps its old image" in r.error:
            assert r.commit is Commit.NONE
        if r.failure is FailureKind.LINK:
            assert "keeps its old image" in r.error


# --- QUERYING: what the device's INFO and STATUS lead to ------------------------------------


def query(r: Record, info: p.MsgInfo, st_: p.MsgOtaStatus) -> tuple[Record, list[EventKind]]:
    r, n1 = decide(r, o.InfoReply(info))
    if r.state is not State.QUERYING:
        return r, [n.kind for n in n1]
    r, n2 = decide(r, o.StatusReply(st_))
    return r, [n.kind for n in (*n1, *n2)]


QUERY = record(State.QUERYING, seen=True, fresh_link=True)


@pytest.mark.parametrize(
    ("device", "ours", "expected"),
    [
        (p.OtaState.IDLE, False, State.STARTING),
        (p.OtaState.ERROR, False, State.ABORTING),
        (p.OtaState.ERASING, True, State.WAITING_READY),
        (p.OtaState.RECEIVING, True, State.STARTING),
        (p.OtaState.VERIFYING, True, State.FINISHING),
        (p.OtaState.COMPLETE, True, State.REBOOTING),
        (p.OtaState.ERASING, False, State.ABORTING),
        (p.OtaState.RECEIVING, False, State.ABORTING),
        (p.OtaState.VERIFYING, False, State.ABORTING),
        (p.OtaState.COMPLETE, False, State.REBOOTING),  # P11: wait for that reset, no START
    ],
)
def test_status_decides_the_way_on(device: p.OtaState, ours: bool, expected: State) -> None:
    r, _ = query(QUERY, OLD_INFO, status(device, 4640, ours=ours))
    assert r.state is expected


def test_a_state_this_host_does_not_know_is_not_its_session() -> None:
    """P13: unknown state → ABORT, START again."""
    r, kinds = query(
        replace(QUERY, session_opened=True),
        OLD_INFO,
        p.MsgOtaStatus(7, 100, IMAGE.size, IMAGE.crc32),
    )
    assert r.state is State.ABORTING and r.restarts == 1 and EventKind.RESTART in kinds


def test_a_session_with_every_byte_goes_straight_to_finish() -> None:
    """No resume START when nothing is left to send (issue 10: a reset on that START)."""
    r, kinds = query(QUERY, OLD_INFO, status(p.OtaState.RECEIVING, IMAGE.size))
    assert r.state is State.FINISHING and r.commit is Commit.NONE  # FINISH not sent yet
    assert EventKind.RESUME in kinds


def test_a_resume_counts_only_on_a_new_connection() -> None:
    receiving = status(p.OtaState.RECEIVING, 4640)
    r, kinds = query(QUERY, OLD_INFO, receiving)
    assert (r.resumes, r.resume_offset, r.said) == (1, 4640, Said(4640, "MSG_OTA_STATUS"))
    assert EventKind.RESUME in kinds
    # The same answer after a re-sync on a live link is not a resume.
    again, kinds = query(replace(r, state=State.QUERYING), OLD_INFO, receiving)
    assert again.resumes == 1 and EventKind.RESUME not in kinds


def test_a_lost_session_after_start_is_a_restart_and_before_it_is_not() -> None:
    idle = status(p.OtaState.IDLE)
    assert query(QUERY, OLD_INFO, idle)[0].restarts == 0
    r, kinds = query(replace(QUERY, session_opened=True), OLD_INFO, idle)
    assert r.restarts == 1 and EventKind.RESTART in kinds and r.state is State.STARTING


def test_a_device_that_already_runs_the_image_and_holds_no_session_is_said_so() -> None:
    """A rerun after the switch (the host died after FINISH): nothing to resume, and the
    update says why it sends the whole image again, to a device that runs it already."""
    r, raw = decide(decide(QUERY, o.InfoReply(NEW_INFO))[0], o.StatusReply(status(p.OtaState.IDLE)))
    assert r.state is State.STARTING and r.restarts == 0 and r.resumes == 0
    said = [n.detail for n in raw if n.kind is EventKind.WARNING]
    assert said and "already runs this image" in said[0] and "no session to resume" in said[0]
    assert EventKind.WARNING not in query(QUERY, OLD_INFO, status(p.OtaState.IDLE))[1]


def test_success_only_when_the_device_runs_the_image_after_finish() -> None:
    # Before FINISH a device that already runs the image is updated anyway: nothing was asked.
    assert query(QUERY, NEW_INFO, status(p.OtaState.IDLE))[0].state is State.STARTING
    for commit in (Commit.FINISH_SENT, Commit.VERIFIED):
        r, kinds = query(replace(QUERY, commit=commit), NEW_INFO, status(p.OtaState.IDLE))
        assert r.state is State.SUCCEEDED and r.outcome is Outcome.SUCCEEDED
        assert EventKind.VERIFIED in kinds


def test_too_large_fails_before_anything_is_started() -> None:
    r, _ = decide(QUERY, o.InfoReply(OLD_INFO, too_large="test.bin: image is too large"))
    assert r.outcome is Outcome.FAILED and r.failure is FailureKind.BAD_INPUT
    assert r.error == "test.bin: image is too large"


def test_start_asks_for_progressive_erase_only_when_offered_and_allowed() -> None:
    """P2, P3: only bits whose capability the device advertised."""
    plain = run(QUERY, o.InfoReply(OLD_INFO))
    assert plain.start_flags == 0
    offered = run(QUERY, o.InfoReply(PROGRESSIVE_INFO))
    assert offered.start_flags == p.StartFlag.PROGRESSIVE_ERASE
    refused = run(
        replace(QUERY, limits=replace(LIMITS, progressive_erase=False)),
        o.InfoReply(PROGRESSIVE_INFO),
    )
    assert refused.start_flags == 0
    unknown_bits = run(QUERY, o.InfoReply(replace(OLD_INFO, capabilities=0xFFFF_FFFE)))
    assert unknown_bits.start_flags == 0


@pytest.mark.parametrize(
    ("commit", "together"),
    [(Commit.NONE, True), (Commit.FINISH_SENT, False), (Commit.VERIFIED, False)],
)
def test_info_and_status_go_together_only_before_a_switch_is_asked_for(
    commit: Commit, together: bool
) -> None:
    """One round trip for both while STATUS is sure to be wanted; after FINISH, INFO alone
    may end the update (the device runs the new image), so STATUS waits for its answer."""
    r = replace(QUERY, commit=commit)
    assert r.status_with_info is together
    after_info, _ = decide(r, o.InfoReply(NEW_INFO))
    assert (after_info.state is State.QUERYING) is together  # STATUS still wanted, or not


def test_finish_is_sent_unless_the_device_is_verifying_already() -> None:
    all_there = run(record(State.TRANSFERRING, seen=True), o.AllAcked())
    assert all_there.state is State.FINISHING and all_there.finish_owed
    verifying, _ = query(QUERY, OLD_INFO, status(p.OtaState.VERIFYING, IMAGE.size))
    assert verifying.state is State.FINISHING and not verifying.finish_owed
    every_byte, _ = query(QUERY, OLD_INFO, status(p.OtaState.RECEIVING, IMAGE.size))
    assert every_byte.state is State.FINISHING and every_byte.finish_owed


# --- P11: a committed switch -----------------------------------------------------------------


def test_complete_for_this_image_waits_for_the_reset_and_then_checks() -> None:
    r, _ = query(QUERY, OLD_INFO, status(p.OtaState.COMPLETE))
    assert (r.state, r.commit) == (State.REBOOTING, Commit.VERIFIED)
    r = run(r, o.DeviceReset(), o.Found(), o.Connected())
    r, _ = query(r, NEW_INFO, status(p.OtaState.IDLE))
    assert r.outcome is Outcome.SUCCEEDED


def test_complete_for_another_image_waits_for_that_reset_then_starts() -> None:
    r, _ = query(QUERY, OLD_INFO, status(p.OtaState.COMPLETE, ours=False))
    assert (r.state, r.other_commit, r.commit) == (State.REBOOTING, OTHER_CRC, Commit.NONE)
    r = run(r, o.DeviceReset(), o.Found(), o.Connected())
    r, _ = query(r, replace(OLD_INFO, active_image_crc32=OTHER_CRC), status(p.OtaState.IDLE))
    assert r.state is State.STARTING


def test_abort_under_a_committed_switch_waits_for_the_reset() -> None:
    """P11: ABORT in COMPLETE is answered with STATUS COMPLETE; nothing is cancelled."""
    r = run(
        record(State.ABORTING, seen=True), o.AbortReply(status(p.OtaState.COMPLETE, ours=False))
    )
    assert r.state is State.REBOOTING and r.other_commit == OTHER_CRC


@pytest.mark.parametrize("ours", [True, False])
def test_a_device_that_never_resets_is_given_up_on_after_the_budget(ours: bool) -> None:
    """E2: bounded, with a sentence that says what the device holds."""
    r, _ = query(QUERY, OLD_INFO, status(p.OtaState.COMPLETE, ours=ours))
    cycles = 0
    while not r.state.terminal:
        assert r.state is State.REBOOTING
        r = run(r, o.ResetNotSeen(5.0))
        if r.state.terminal:
            break
        cycles += 1
        r = run(r, o.Found(), o.Connected())
        r, _ = query(r, OLD_INFO, status(p.OtaState.COMPLETE, ours=ours))
    assert cycles == LIMITS.max_reset_waits - 1
    assert "did not reset within 2 waits of 5 s" in r.error
    if ours:
        assert r.outcome is Outcome.UNCONFIRMED and r.failure is None
        assert "verified the new image" in r.error and "next reset" in r.error
        assert "keeps its old image" not in r.error
    else:
        assert r.outcome is Outcome.FAILED and r.failure is FailureKind.NO_RESET
        assert f"{OTHER_CRC:08x}" in r.error


def test_a_bootloader_that_refuses_the_image_is_given_up_on() -> None:
    """DONE, a reset, and the old image again: send it again once, then say so."""
    r = record(State.FINISHING, seen=True, session_opened=True, commit=Commit.FINISH_SENT)
    for _ in range(LIMITS.max_failed_activations):
        r = run(r, o.Done(IMAGE.crc32), o.DeviceReset(), o.Found(), o.Connected())
        r, _ = query(r, OLD_INFO, status(p.OtaState.IDLE))
        if r.state.terminal:
            break
        r = replace(r, state=State.FINISHING, commit=Commit.FINISH_SENT)
    assert r.outcome is Outcome.FAILED and r.failure is FailureKind.REFUSED
    assert "bootloader" in r.error and "keeps its old image" in r.error


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


# --- whole sequences (hypothesis) --------------------------------------------------------------


#: Observations of each kind, with values near the interesting ones.
_BY_KIND: dict[type, list[o.Observation]] = {}
for _seen in [
    *EXAMPLES,
    *(o.Acked(n) for n in (232, 4640, IMAGE.size - 1)),
    *(o.StatusReply(status(p.OtaState.RECEIVING, n)) for n in (0, IMAGE.size)),
    o.EraseProgress(20_480, 20_480),
    o.InfoReply(PROGRESSIVE_INFO),
]:
    _BY_KIND.setdefault(type(_seen), []).append(_seen)
#: Kinds that show the device getting further.
_PROGRESS = (o.Acked, o.EraseProgress, o.Done)


def pick(r: Record, choice: int, *, progress: bool = True) -> o.Observation:
    """The observation ``choice`` selects among those the record's state can make."""
    kinds = [k for k in d._ACCEPTS[r.state] if progress or not issubclass(k, _PROGRESS)]
    if r.state is State.RECOVERING:  # the link is closed first, then the backoff
        kinds = [o.BackedOff if r.link_closed else o.FailedLinkClosed]
    if r.state is State.QUERYING:  # INFO first, then STATUS
        kinds = [o.StatusReply if r.info_answered else o.InfoReply, o.LinkFailed]
    options = _BY_KIND[kinds[choice % len(kinds)]]
    return options[(choice // len(kinds)) % len(options)]


CHOICES = st.lists(st.integers(0, 2**16), min_size=1, max_size=200)


@settings(max_examples=1000)
@given(choices=CHOICES)
def test_any_sequence_follows_the_table_and_ends_honestly(choices: list[int]) -> None:
    r = Record(IMAGE, LIMITS)
    for choice in choices:
        if r.state.terminal:
            break
        before = r
        r, _ = decide(r, pick(r, choice))  # raises on a transition the table does not allow
        assert r.attempts <= LIMITS.max_attempts_without_progress + 1
        assert r.reset_waits <= LIMITS.max_reset_waits
        assert r.failed_activations < LIMITS.max_failed_activations
        assert r.progress_mark >= before.progress_mark
    _check_honest(r)


@settings(max_examples=1000)
@given(choices=CHOICES)
def test_without_progress_every_run_ends_within_its_budgets(choices: list[int]) -> None:
    """Liveness of the budgets: a device that never gets further is given up on after a
    bounded number of observations that change anything, whatever it says (the choices
    repeat as needed). Observations that change nothing (a repeated INFO, a stale error)
    are bounded by the engine's clock, not here."""
    r = Record(IMAGE, LIMITS)
    # Each fruitless attempt is a cycle of at most a few dozen observations.
    bound = 60 * (LIMITS.max_attempts_without_progress + LIMITS.max_reset_waits + 2)
    changes = 0
    for choice in itertools.islice(itertools.cycle(choices), 100 * bound):
        if r.state.terminal:
            return
        new, _ = decide(r, pick(r, choice, progress=False))
        if new.progress_mark > (0, 0):
            return  # a STATUS showed progress; the test above covers that
        changes += new != r
        assert changes <= bound, f"still {r.state.name} after {changes} changes"
        r = new


def test_a_device_on_trial_whose_done_was_lost_is_confirmed_after_the_switch() -> None:
    """A reset as MSG_OTA_DONE left the device (reboot@msg:MSG_OTA_DONE; over Bumble DONE
    never reached the host): FINISH was sent, no answer, and after the reconnect INFO shows
    the new image on trial. It took the image, so the confirm that follows is after the
    switch (it was an IllegalObservation before), and the update succeeds confirmed."""
    r = record(
        State.QUERYING,
        seen=True,
        session_opened=True,
        commit=Commit.FINISH_SENT,
        image=SIGNED_IMAGE,
    )
    trial = replace(SIGNED_NEW_INFO, image_state=p.ImageState.TEST, security_counter=3)
    r, _ = decide(r, o.InfoReply(trial))
    assert r.state is State.CONFIRMING and r.commit is Commit.VERIFIED
    r, _ = decide(r, o.ConfirmReply(SIGNED_NEW_INFO))
    assert r.outcome is Outcome.SUCCEEDED, r.error
    _check_honest(r)

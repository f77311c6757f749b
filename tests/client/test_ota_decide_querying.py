"""The OTA engine's decisions on what the device says it holds: its INFO and STATUS while
querying, a committed switch waiting for the reset (P11), and a device on trial after one.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.ota import observations as o
from pytest_smartball.ota.decide import decide
from pytest_smartball.ota.record import Commit, Record, Said
from pytest_smartball.ota.states import EventKind, FailureKind, Outcome, State

from .ota_decide_cases import (
    IMAGE,
    LIMITS,
    NEW_INFO,
    OLD_INFO,
    OTHER_CRC,
    PROGRESSIVE_INFO,
    SIGNED_IMAGE,
    SIGNED_NEW_INFO,
    check_honest,
    record,
    run,
    status,
)

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
    check_honest(r)

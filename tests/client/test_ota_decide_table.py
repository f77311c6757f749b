"""The OTA engine's decisions against the transition table: a pure function, no link, no device.

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
from pytest_smartball.ota import decide as d
from pytest_smartball.ota import observations as o
from pytest_smartball.ota import states
from pytest_smartball.ota.decide import decide
from pytest_smartball.ota.record import Commit, Record, Said
from pytest_smartball.ota.states import (
    TRANSITIONS,
    IllegalObservation,
    IllegalTransition,
    Outcome,
    State,
    check_transition,
)

from .ota_decide_cases import (
    IMAGE,
    LIMITS,
    NEW_INFO,
    OLD_INFO,
    OTHER_CRC,
    PROGRESSIVE_INFO,
    SIGNED_IMAGE,
    SIGNED_NEW_INFO,
    SIGNED_OLD_INFO,
    check_honest,
    error,
    record,
    status,
)

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
        check_honest(new)


def test_every_state_accepts_something_and_terminal_states_nothing() -> None:
    for state in State:
        accepted = [s for s in EXAMPLES if isinstance(s, d._ACCEPTS.get(state, ()))]
        assert bool(accepted) != state.terminal, state
    with pytest.raises(IllegalObservation):
        decide(record(State.SUCCEEDED, outcome=Outcome.SUCCEEDED), o.Found())


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
    check_honest(r)


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

"""The transfer's credit on its own (P6, P8, E3): what may be sent, given what the device said.

A model device checks the rule from the other side: it never holds more than ``window``
chunks beyond its last ACK, whatever order ACKs, STATUS replies and refusals come in. Then
the transfer's waits (:class:`Transfer`): until when the engine waits and what that time
means, given the time, with no link and no event loop.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball.ota.window import (
    CreditWindow,
    StatusSeen,
    Transfer,
    TransferWaits,
    Wake,
    host_chunk,
)

SIZE, CHUNK, WINDOW = 20_000, 232, 16


def fill(w: CreditWindow) -> list[tuple[int, int]]:
    """Send everything the credit allows."""
    sent = []
    while (span := w.next_span()) is not None:
        w.sent_span(span[1])
        sent.append(span)
    return sent


@pytest.mark.parametrize(
    ("limit", "chunk"), [(234, 232), (232, 232), (10, 8), (500, 500), (5, 4), (1, 4)]
)
def test_chunks_are_whole_words(limit: int, chunk: int) -> None:
    """P8: MTU 247 → 234 → 232, MTU 23 → 10 → 8."""
    assert host_chunk(limit) == chunk


def test_ready_starts_the_count_at_the_devices_offset() -> None:
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=4640)
    sent = fill(w)
    assert sent[0] == (4640, 4872) and len(sent) == WINDOW
    assert w.in_flight == WINDOW * CHUNK


def test_only_an_ack_grants_credit() -> None:
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=0)
    fill(w)
    assert w.next_span() is None
    # STATUS (asked for): the device has 10 chunks, maybe not written: it rewinds, no credit.
    back = w.on_status(10 * CHUNK, asked=True)
    assert back == 6 * CHUNK and w.sent == 10 * CHUNK
    assert len(fill(w)) == 6  # back to a full window beyond the last ACK (0), not beyond 10
    assert w.next_span() is None
    assert w.on_ack(8 * CHUNK)
    assert len(fill(w)) == 8  # eight chunks acknowledged, eight more allowed


def test_a_stale_or_repeated_ack_changes_nothing() -> None:
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=0)
    fill(w)
    assert w.on_ack(8 * CHUNK)
    assert not w.on_ack(8 * CHUNK) and not w.on_ack(4 * CHUNK)
    assert w.acked == 8 * CHUNK


def test_a_refusal_halves_the_window_down_to_one_and_a_half_ack_intervals() -> None:
    """E3: paced rewinds. The device ACKs every 8 chunks (window // 2): with 12 in flight
    the next chunks are queued while an ACK travels."""
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=0)
    fill(w)
    w.on_status(2 * CHUNK, asked=False)  # the device had room for two
    assert w.window == 12
    w.on_status(2 * CHUNK, asked=False)
    assert w.window == 12  # never below one and a half ACK intervals
    assert len(fill(w)) == 10  # 2 held + 10 new = the window of 12
    w.on_ack(8 * CHUNK)
    assert w.window == 13  # each ACK that moves forward widens it by one again


@pytest.mark.parametrize(("window", "floor"), [(1, 1), (2, 1), (3, 1), (4, 3), (16, 12), (17, 12)])
def test_the_pacing_floor_follows_the_ack_interval(window: int, floor: int) -> None:
    assert CreditWindow(SIZE, CHUNK, window, start=0).floor == floor


def test_a_refusal_at_the_same_offset_pauses_the_sending() -> None:
    """The device's flash is behind: wait (20 ms, doubling per repeat, at most 0.5 s)
    instead of re-sending at once; an ACK, or a refusal further on, ends the doubling."""
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=0)
    fill(w)
    w.on_status(2 * CHUNK, asked=False, now=10.0)
    assert w.paused_until == 0.0 and w.next_span(10.0) is not None  # a first refusal
    fill(w)
    w.on_status(2 * CHUNK, asked=False, now=10.0)  # again, nothing taken since
    assert w.paused_until == pytest.approx(10.02)
    assert w.next_span(10.01) is None and w.next_span(10.02) is not None
    for pause in (0.04, 0.08, 0.16, 0.32, 0.5, 0.5):
        w.on_status(2 * CHUNK, asked=False, now=11.0)
        assert w.paused_until == pytest.approx(11.0 + pause)
    w.on_status(3 * CHUNK, asked=False, now=12.0)  # it took one more: no pause
    assert w.paused_until <= 12.0
    w.on_status(3 * CHUNK, asked=False, now=12.0)
    assert w.paused_until == pytest.approx(12.02)  # the doubling starts again
    w.on_ack(3 * CHUNK)
    assert w.paused_until == 0.0 and w.next_span(12.0) is not None


def test_an_asked_status_never_pauses() -> None:
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=0)
    fill(w)
    for _ in range(3):
        w.on_status(2 * CHUNK, asked=True, now=1.0)
    assert w.paused_until == 0.0


def test_a_device_before_p6_gets_credit_from_a_repeated_status() -> None:
    """Such a device sends no ACK after a STATUS: two answers with the same offset and no
    ACK between them are taken as one."""
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=0)
    fill(w)
    w.on_status(WINDOW * CHUNK, asked=True)
    assert w.acked == 0 and w.next_span() is None
    w.on_status(WINDOW * CHUNK, asked=True)
    assert w.acked == WINDOW * CHUNK and w.next_span() is not None


def test_an_unasked_status_is_never_taken_as_credit() -> None:
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=0)
    fill(w)
    w.on_status(WINDOW * CHUNK, asked=False)
    w.on_status(WINDOW * CHUNK, asked=False)
    assert w.acked == 0


def test_the_transfer_is_complete_when_the_device_has_every_byte() -> None:
    w = CreditWindow(1000, CHUNK, WINDOW, start=0)
    fill(w)
    assert not w.complete
    w.on_status(1000, asked=True)  # the last ACK lost; STATUS says everything arrived
    assert w.complete
    w2 = CreditWindow(1000, CHUNK, WINDOW, start=0)
    fill(w2)
    w2.on_ack(1000)
    assert w2.complete
    assert CreditWindow(1000, CHUNK, WINDOW, start=1000).complete  # a resume at the end


def test_less_than_acknowledged_is_believed() -> None:
    w = CreditWindow(SIZE, CHUNK, WINDOW, start=0)
    fill(w)
    w.on_ack(8 * CHUNK)
    w.on_status(4 * CHUNK, asked=True)
    assert (w.acked, w.sent) == (4 * CHUNK, 4 * CHUNK)


# --- the rule, from the device's side (hypothesis) ------------------------------------------


@settings(max_examples=500)
@given(
    window=st.integers(1, 24),
    chunk=st.sampled_from([4, 8, 232, 500]),
    start_chunks=st.integers(0, 5),
    steps=st.lists(
        st.sampled_from(["send", "arrive", "lose", "ack", "refuse", "status"]), max_size=300
    ),
)
def test_a_device_never_holds_more_than_a_window_beyond_its_last_ack(
    window: int, chunk: int, start_chunks: int, steps: list[str]
) -> None:
    """A model device on a FIFO link: it takes chunks in order, drops others, ACKs what it
    has (P7), refuses a chunk it has no room for (STATUS), and after a STATUS the host
    asked for sends an ACK (P6). Whatever the order, the host has at most ``window``
    chunks beyond the last ACK, so the device holds no more than that."""
    size = 40 * chunk + 3
    start = start_chunks * chunk
    w = CreditWindow(size, chunk, window, start)
    link: list[tuple[int, int]] = []  # host writes on their way, in order
    received = acked = start  # the device: bytes in order, and its last ACK
    for step in steps:
        if step == "send" and (span := w.next_span()) is not None:
            w.sent_span(span[1])
            link.append(span)
        elif step == "arrive" and link:
            begin, end = link.pop(0)
            if begin == received:
                received = end
        elif step == "lose" and link:
            link.pop(0)
        elif step == "ack" and received > acked:
            acked = received
            w.on_ack(acked)
        elif step == "refuse" and link:
            link.pop(0)  # no room for it
            w.on_status(received, asked=False)
        elif step == "status":
            for begin, end in link:  # the STATUS request goes behind the writes in flight
                if begin == received:
                    received = end
            link.clear()
            w.on_status(received, asked=True)
            acked = received  # P6: the STATUS makes the device ACK what it has
            w.on_ack(acked)
        assert w.acked == acked
        assert w.chunks_held <= w.window <= window
        assert -(-(received - acked) // chunk) <= window
        assert acked <= received <= w.sent


# --- the transfer's waits (Transfer) --------------------------------------------------------

WAITS = TransferWaits(ack_s=4.5, refusal_probe_s=0.5, reply_s=3.0)


def transfer(now: float = 0.0, waits: TransferWaits = WAITS) -> Transfer:
    t = Transfer(CreditWindow(SIZE, CHUNK, WINDOW, start=0), waits, now)
    send_all(t, now)
    return t


def send_all(t: Transfer, now: float) -> int:
    sent = 0
    while (span := t.next_span(now)) is not None:
        t.sent_span(span[1], now)
        sent += 1
    return sent


def test_the_ack_wait_runs_from_the_last_data_or_the_last_ack_that_moved_forward() -> None:
    t = transfer(now=1.0)
    assert t.wake(1.0) == (5.5, Wake.ACK_OVERDUE)
    assert not t.on_ack(0, now=2.0)  # a stale ACK renews nothing
    assert t.wake(2.0) == (5.5, Wake.ACK_OVERDUE)
    assert t.on_ack(8 * CHUNK, now=3.0)
    assert t.wake(3.0) == (7.5, Wake.ACK_OVERDUE)
    assert send_all(t, now=3.5) == 8
    assert t.wake(3.5) == (8.0, Wake.ACK_OVERDUE)


def test_the_status_asked_for_is_owed_within_the_reply_wait_and_is_no_refusal() -> None:
    """P6: no ACK in time, the engine asks STATUS; its answer is owed (a silence then is a
    failed link, not another ACK wait) and it is the answer, not a refusal."""
    t = transfer(now=0.0)
    until, why = t.wake(0.0)
    assert (until, t.woke(why)) == (4.5, Wake.ACK_OVERDUE)
    t.status_asked(now=4.6)
    assert t.wake(4.6) == (7.6, Wake.STATUS_OVERDUE)
    seen = t.on_status(10 * CHUNK, now=5.0)
    assert seen == StatusSeen(back=6 * CHUNK, refused=False, credited=None)
    assert t.ack_wait_s == WAITS.ack_s  # an answer does not shorten the ACK wait
    assert t.wake(5.0)[1] is Wake.ACK_OVERDUE  # nothing owed any more
    # The same answer with nothing asked is a refusal.
    assert t.on_status(10 * CHUNK, now=5.1).refused


@pytest.mark.parametrize(
    ("refused_at", "probe", "deadline"),
    [
        (1.0, 0.5, 1.5),  # the shorter wait, from the refusal
        (4.3, 0.5, 4.5),  # never later than the wait already running
        (1.0, 9.0, 4.5),  # a probe longer than the ACK wait changes nothing
    ],
)
def test_after_a_refusal_the_ack_wait_is_the_refusal_probe(
    refused_at: float, probe: float, deadline: float
) -> None:
    """A device that refused may refuse the rest of a burst without a word (P12): ask
    STATUS after the ACK latency obligation itself, for the rest of the transfer."""
    t = transfer(now=0.0, waits=replace(WAITS, refusal_probe_s=probe))
    assert t.on_status(2 * CHUNK, now=refused_at).refused
    assert t.wake(refused_at) == (pytest.approx(deadline), Wake.ACK_OVERDUE)
    shorter = min(probe, WAITS.ack_s)
    assert t.ack_wait_s == shorter
    send_all(t, now=6.0)
    assert t.wake(6.0) == (pytest.approx(6.0 + shorter), Wake.ACK_OVERDUE)
    t.on_ack(4 * CHUNK, now=7.0)
    assert t.wake(7.0) == (pytest.approx(7.0 + shorter), Wake.ACK_OVERDUE)


def test_the_pause_after_a_repeated_refusal_wakes_the_sender_when_it_is_over() -> None:
    t = transfer(now=0.0)
    t.on_status(2 * CHUNK, now=1.0)
    send_all(t, now=1.0)
    t.on_status(2 * CHUNK, now=1.0)  # again at the same offset: the flash is behind
    assert t.next_span(1.0) is None
    until, why = t.wake(1.0)
    assert (until, why) == (pytest.approx(1.02), Wake.PAUSE_OVER)
    assert t.woke(why) is Wake.PAUSE_OVER
    # Ended by the wake, not the clock: a virtual clock may read a microsecond early.
    assert t.next_span(1.0199) is not None


def test_a_pause_that_outlasts_the_wait_gives_way_to_the_wait() -> None:
    t = transfer(now=0.0, waits=replace(WAITS, refusal_probe_s=0.01))
    t.on_status(2 * CHUNK, now=1.0)
    send_all(t, now=1.0)
    t.on_status(2 * CHUNK, now=1.0)  # paused until 1.02; the ACK wait ends at 1.01
    assert t.wake(1.0) == (pytest.approx(1.01), Wake.ACK_OVERDUE)
    t.status_asked(now=1.0)
    assert t.wake(1.0) == (pytest.approx(1.02), Wake.PAUSE_OVER)  # the owed reply is later


def test_a_device_before_p6_has_its_repeated_status_told_as_an_ack() -> None:
    """Two answers with the same offset and no ACK between: the engine reports the offset
    as acknowledged (decide counts it as progress); a P6 device's ACK comes first."""
    t = transfer(now=0.0)
    t.status_asked(now=4.5)
    assert t.on_status(WINDOW * CHUNK, now=4.6).credited is None
    t.status_asked(now=9.1)
    assert t.on_status(WINDOW * CHUNK, now=9.2).credited == WINDOW * CHUNK
    p6 = transfer(now=0.0)
    p6.status_asked(now=4.5)
    p6.on_status(WINDOW * CHUNK, now=4.6)
    assert p6.on_ack(WINDOW * CHUNK, now=4.7)
    p6.status_asked(now=9.1)
    assert p6.on_status(WINDOW * CHUNK, now=9.2).credited is None
    # Refusals are never taken as credit.
    refusals = transfer(now=0.0)
    assert refusals.on_status(WINDOW * CHUNK, now=1.0).credited is None
    assert refusals.on_status(WINDOW * CHUNK, now=2.0).credited is None


@settings(max_examples=300)
@given(
    probe=st.sampled_from([0.01, 0.5, 9.0]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["send", "ack", "status", "ask", "wake"]),
            st.floats(0.0, 2.0),
        ),
        max_size=80,
    ),
)
def test_the_waits_of_any_transfer(probe: float, steps: list[tuple[str, float]]) -> None:
    """Whatever happens: a STATUS is owed exactly from the ask to the next STATUS, and while
    it is owed the wake is its deadline (or an earlier end of a pause); the ACK wait never
    grows and is the probe's from the first refusal on; the wake is never later than the
    deadline in force."""
    waits = replace(WAITS, refusal_probe_s=probe)
    t = Transfer(CreditWindow(SIZE, CHUNK, WINDOW, start=0), waits, now=0.0)
    now, owed, refused, acked, asked_at = 0.0, False, False, 0, 0.0
    for step, dt in steps:
        now += dt
        if step == "send":
            send_all(t, now)
        elif step == "ack" and t.window.sent > acked:
            acked = t.window.sent
            t.on_ack(acked, now)
        elif step == "status":  # the answer when one is owed, else a refusal
            seen = t.on_status(t.window.acked, now)
            assert seen.refused is not owed
            refused, owed = refused or seen.refused, False
        elif step == "ask":
            t.status_asked(now)
            owed, asked_at = True, now
        elif step == "wake":
            until, why = t.wake(now)
            if why is Wake.PAUSE_OVER:
                assert now < until == t.window.paused_until
                t.woke(why)
                assert t.window.paused_until == 0.0  # the sender may go on
        until, why = t.wake(now)
        deadline = t.status_deadline if owed else t.ack_deadline
        assert t.status_deadline == (asked_at + waits.reply_s if owed else None)
        assert until <= deadline  # type: ignore[operator]
        assert why in (Wake.PAUSE_OVER, Wake.STATUS_OVERDUE if owed else Wake.ACK_OVERDUE)
        assert t.ack_wait_s == (min(probe, WAITS.ack_s) if refused else WAITS.ack_s)

"""The transfer's credit on its own (P6, P8, E3): what may be sent, given what the device said.

A model device checks the rule from the other side: it never holds more than ``window``
chunks beyond its last ACK, whatever order ACKs, STATUS replies and refusals come in.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball.ota.window import CreditWindow, host_chunk

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

"""Which DATA chunk to send next: the transfer's credit, by the protocol's rules (pure).

docs/protocol.md, P6: the window counts chunks, and only MSG_OTA_ACK grants credit. The
host may have at most ``window`` chunks sent beyond the offset of the last ACK it received;
READY starts the count at the session's next expected offset. A MSG_OTA_STATUS moves the
send position to the offset the device expects (a rewind) but grants nothing: the chunks
below that offset are with the device, maybe not yet written, and still take their place
in its receive buffer.

Pacing (engine decision E3): a STATUS the host did not ask for is a refusal (a gap, or no
room in the device's buffer). After one the host's own window halves, but not below one and
a half ACK intervals (the device ACKs every ``max(1, window // 2)`` chunks, P7): with only an
interval in flight the host would wait for each ACK before sending more, and the flash would
idle for a round trip per interval; half an interval more keeps chunks queued while the ACK
travels. Each ACK that moves forward widens the window by one chunk again, up to the
device's. So a device whose buffer is smaller than the window it announced gets fewer chunks
in flight instead of a storm of rewinds. (Measured on the model, a 131 KB image over a
7.5 ms radio into a 2/4/8-chunk buffer: re-sent bytes 522/192/37 KB without the pacing,
344/115/5 KB with it, and the transfer no slower; halving down to one interval instead cut
re-sends further but made the 8-chunk case 29 % slower.)

A refusal at the same offset as the one before it, with no ACK between, means the device's
flash is behind (its buffer is still full): re-sending at once would only be refused again,
and on a link without airtime (an in-process stack) the clock would never move on. The host
then pauses before it sends again: 20 ms (a few chunk writes, a couple of connection events),
doubling per repeat at the same offset up to 0.5 s (the device's ACK latency obligation, by
which it has written what it holds); an ACK that moves forward ends the pause.

Devices that predate P6 send no ACK after a STATUS: when a second STATUS the host asked for
says the same offset with no ACK in between, the host takes that offset as acknowledged
(safe: a device without room refuses the chunk and the host rewinds).

The waits of a transfer (:class:`Transfer`, around the credit): the host waits for an ACK
``ack_s`` after its last DATA or the last ACK that moved forward; when none came it asks
STATUS (P6), and the answer is owed within ``reply_s``. A STATUS arriving while one is owed
is that answer; any other is a refusal, after which the ACK wait shrinks to
``refusal_probe_s`` for the rest of the transfer (a device that refused may refuse the rest
of a burst without a word: its STATUS replies to refused DATA are rate-limited, P12). A pause
after a repeated refusal that ends before the wait does wakes the host to send again.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from ..contract import codec as p

#: The first pause after a repeated refusal, and the longest (see the module's text).
REFUSAL_PAUSE_S = 0.02
REFUSAL_PAUSE_MAX_S = 0.5


def host_chunk(limit: int) -> int:
    """Image bytes per DATA chunk within ``limit`` (what one write and READY allow): whole
    words, so offsets stay word aligned (P8), at least one word. A device that announces a
    max_chunk that is not a multiple of 4 (one before P8) gets whole words too."""
    return max(p.MIN_CHUNK_SIZE, p.whole_words(limit))


class CreditWindow:
    """One transfer's send position and credit. Feed it what the device says; ask it what
    to send."""

    def __init__(self, size: int, chunk: int, window: int, start: int) -> None:
        if chunk < 1:
            raise ValueError(f"chunk of {chunk} bytes")
        self.size = size
        self.chunk = chunk
        self.device_window = max(1, window)
        self.ack_interval = max(1, self.device_window // 2)
        #: The smallest the pacing makes the window (see the module's text).
        self.floor = min(self.device_window, self.ack_interval + self.ack_interval // 2)
        #: Chunks the host lets itself have beyond the last ACK (AIMD within the device's).
        self.window = self.device_window
        self.acked = start  # every byte below it is in the device's flash
        self.sent = start  # the next byte to send
        self._held: deque[int] = deque()  # end offsets of chunks beyond `acked` in the device
        self._asked_status_offset: int | None = None
        self._all_received = start >= size
        self._refused_at: int | None = None  # offset of the last refusal, until an ACK
        self._repeats = 0
        #: No DATA before this time (loop seconds): a paced repeat refusal.
        self.paused_until = 0.0

    @property
    def complete(self) -> bool:
        """The device has every byte: its ACK said so, or its STATUS (FINISH may follow,
        P7: the device sends the last ACK before it answers FINISH)."""
        return self.acked >= self.size or self._all_received

    @property
    def in_flight(self) -> int:
        """Bytes sent and not acknowledged."""
        return max(0, self.sent - self.acked)

    @property
    def chunks_held(self) -> int:
        return len(self._held)

    def next_span(self, now: float = float("inf")) -> tuple[int, int] | None:
        """The next chunk to send at time ``now``, if the credit (and the pacing) allows."""
        if self.sent >= self.size or len(self._held) >= self.window or now < self.paused_until:
            return None
        return self.sent, min(self.sent + self.chunk, self.size)

    def sent_span(self, end: int) -> None:
        self._held.append(end)
        self.sent = end

    def on_ack(self, offset: int) -> bool:
        """MSG_OTA_ACK(offset); True when it moved the acknowledged offset forward."""
        if offset <= self.acked:
            return False  # stale, or a repeat
        self.acked = offset
        self.sent = max(self.sent, offset)
        while self._held and self._held[0] <= offset:
            self._held.popleft()
        if self.window < self.device_window:
            self.window += 1
        self._asked_status_offset = None
        self._refused_at, self._repeats, self.paused_until = None, 0, 0.0
        if offset >= self.size:
            self._all_received = True
        return True

    def on_status(self, offset: int, *, asked: bool, now: float = 0.0) -> int:
        """MSG_OTA_STATUS in RECEIVING at time ``now``: the device expects ``offset`` next.
        Returns how many bytes the send position moved back."""
        back = max(0, self.sent - offset)
        if offset < self.acked:
            # Less than it acknowledged: the device is the only truth about what it holds.
            self.acked = offset
        self.sent = offset
        while self._held and self._held[-1] > offset:
            self._held.pop()  # beyond what the device received: gone
        if offset >= self.size:
            self._all_received = True
        if not asked:
            self.window = max(self.floor, self.window // 2)
            if offset == self._refused_at:  # nothing taken since the last refusal
                self._repeats += 1
                pause = REFUSAL_PAUSE_S * 2 ** (self._repeats - 1)
                self.paused_until = now + min(REFUSAL_PAUSE_MAX_S, pause)
            else:
                self._repeats = 0
            self._refused_at = offset
        elif self._asked_status_offset == offset and offset > self.acked:
            self.on_ack(offset)  # a device before P6: no ACK follows a STATUS
        else:
            self._asked_status_offset = offset
        return back


class Wake(enum.Enum):
    """What the time a transfer waits until means when it comes with nothing received."""

    #: The pause after a repeated refusal is over: send again.
    PAUSE_OVER = "pause over"
    #: No ACK moved forward within the ACK wait: ask STATUS (P6).
    ACK_OVERDUE = "ACK overdue"
    #: The STATUS asked for was not answered within the reply wait: the link failed.
    STATUS_OVERDUE = "STATUS overdue"


@dataclass(frozen=True, slots=True)
class TransferWaits:
    """The transfer's waits, in seconds (from ``OtaSettings``)."""

    ack_s: float
    refusal_probe_s: float
    reply_s: float


@dataclass(frozen=True, slots=True)
class StatusSeen:
    """What a MSG_OTA_STATUS in RECEIVING did to the transfer."""

    #: How far the send position moved back.
    back: int
    #: Not asked for: the device refused DATA.
    refused: bool
    #: A device before P6 answered the same offset twice: the offset now acknowledged
    #: (tell it as an ACK), else None.
    credited: int | None


class Transfer:
    """One transfer's credit and waits, given the time ``now`` with every call: what to send
    (:meth:`next_span`), until when to wait and what that time means (:meth:`wake`)."""

    def __init__(self, window: CreditWindow, waits: TransferWaits, now: float) -> None:
        self.window = window
        self.waits = waits
        #: The wait for an ACK now (shorter once the device refused DATA).
        self.ack_wait_s = waits.ack_s
        self.ack_deadline = now + self.ack_wait_s
        #: When the answer to the STATUS asked for is owed; None: none is owed.
        self.status_deadline: float | None = None

    def next_span(self, now: float) -> tuple[int, int] | None:
        return self.window.next_span(now)

    def sent_span(self, end: int, now: float) -> None:
        self.window.sent_span(end)
        self.ack_deadline = now + self.ack_wait_s

    def status_asked(self, now: float) -> None:
        """CMD_OTA_STATUS went out: its answer is owed (and is not a refusal)."""
        self.status_deadline = now + self.waits.reply_s

    def on_ack(self, offset: int, now: float) -> bool:
        """MSG_OTA_ACK(offset); True when it moved the acknowledged offset forward (only
        such an ACK renews the ACK wait)."""
        if not self.window.on_ack(offset):
            return False
        self.ack_deadline = now + self.ack_wait_s
        return True

    def on_status(self, offset: int, now: float) -> StatusSeen:
        """MSG_OTA_STATUS in RECEIVING: the device expects ``offset`` next."""
        asked, self.status_deadline = self.status_deadline is not None, None
        acked = self.window.acked
        back = self.window.on_status(offset, asked=asked, now=now)
        if not asked:
            self.ack_wait_s = min(self.ack_wait_s, self.waits.refusal_probe_s)
            self.ack_deadline = min(self.ack_deadline, now + self.ack_wait_s)
        credited = self.window.acked if self.window.acked > acked else None
        return StatusSeen(back, refused=not asked, credited=credited)

    def wake(self, now: float) -> tuple[float, Wake]:
        """Until when to wait for the device at time ``now``, and what that time means."""
        if self.status_deadline is not None:
            deadline, why = self.status_deadline, Wake.STATUS_OVERDUE
        else:
            deadline, why = self.ack_deadline, Wake.ACK_OVERDUE
        if now < self.window.paused_until < deadline:
            return self.window.paused_until, Wake.PAUSE_OVER
        return deadline, why

    def woke(self, why: Wake) -> Wake:
        """The wait :meth:`wake` gave ended with nothing received; returns ``why``. A pause
        is ended here, not by comparing clocks (a virtual clock rounds to microseconds, so
        ``now`` may still read just before ``paused_until``)."""
        if why is Wake.PAUSE_OVER:
            self.window.paused_until = 0.0
        return why

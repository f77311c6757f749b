"""The contract monitor: every frame both ways checked against protocol v1, as data.

A pure state machine in the contract layer (no I/O, no clock, no simulator): it is told
what the host wrote (``observe_host_bytes``), what the device notified
(``observe_device_bytes``), when the link came and went, and what the test knows happened
to the device (a reset, a fault a simulated link injected), each with a time in seconds.
From that alone it follows the device's side of the contract (docs/protocol.md): the
device's command decoder (section 4), its session state, image, offsets, window, ACK
interval, rate limits and erase progress (section 7), the timing obligations
(``contract/timing.json``) and the activation (section 9), and records a
:class:`Violation` for the first frame, or the first silence, that breaks a rule. The rules
and where in the contract each comes from are listed in docs/protocol.md, section 15, and
in :data:`RULES`.

Replies are judged in the order the device handles commands (section 7.2: one at a time, in
order): a command the device received is *pending* until the device's output shows it was
handled (its reply, or a later command's), or until its reply is overdue. Messages that
follow no command (PROGRESS, READY, ACK, DONE) are checked against the work under way.

Where the monitor cannot know what the device received (the link dropped, a simulated
fault lost or damaged a frame, the host sent a frame in the decoder's idle band, or
exceeded its credit), it says so to itself: the model is *unsure* until a MSG_OTA_STATUS
shows the device's state again, and nothing that depends on the unknown is judged. What
survives a link drop is still judged: the session (section 7.7), the ACKed bytes.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import Manifest, ManifestError

from . import contract

PAGE_SIZE = 4096
#: Radio delivery on top of the device's obligations: a few connection events each way
#: (hil_tests/conformance.py's RADIO_MARGIN_S). Real-time stages pass a larger one.
DEFAULT_MARGIN_S = 0.25
#: How many frames a violation shows from the trace before it.
TRACE_FRAMES = 20
#: Host-side gaps this close to the decoder's idle time (1 s, a 5 % clock error, and the
#: radio's delivery on either side) leave open whether the device discarded a partial frame.
IDLE_BAND_S = 0.25

#: Every rule the monitor checks: its id and where in docs/protocol.md it comes from.
RULES: dict[str, str] = {
    "frame.crc": "§2, §1: a device frame with a bad CRC (a device sends only whole, valid frames)",
    "frame.length": "§2: a device frame announcing more than 512 payload bytes",
    "frame.garbage": "§1: device bytes outside any frame, or a frame abandoned halfway",
    "frame.type": "§5: a device message of a type protocol v1 does not have (or a command)",
    "frame.fields": "§5: a payload shorter than its fields, or a field out of its range",
    "reply.unexpected": "§7.2: a message no command asked for and no work under way explains",
    "reply.wrong": "§7.2 (command_state.json): a reply other than the table's for the state",
    "reply.missing": "§7.2, §10 reply_max_s: a command's reply did not come in time",
    "error.command": "§5 MSG_ERROR: the command byte must name the refused frame's type",
    "status.fields": "§7.1: MSG_OTA_STATUS fields differ from the device's state",
    "info.fields": "§5 MSG_INFO, §9: protocol version, staging capacity, the running image",
    "ready.fields": "§5, §7.3, §7.6: max_chunk from START's chunk_size, window >= 1",
    "ready.early": "§7.3: MSG_OTA_READY before every staging page's erase was reported",
    "ready.late": "§10 ready_after_erase_max_s: READY after the last PROGRESS",
    "progress.fields": "§5 MSG_OTA_PROGRESS: phase, done <= total, total = pages x 4096, +1 page",
    "progress.gap": "§10 progress_gap_max_s: no PROGRESS for longer during an erase",
    "ack.offset": "§7.4: an ACK backwards, past the bytes received in order, or mid-chunk",
    "ack.interval": "§7.4: an ACK owed (every window // 2 chunks, image end, STATUS) skipped",
    "ack.late": "§10 ack_latency_max_s: an owed ACK did not come in time",
    "ratelimit.rejected": "§7.4 rule 3: STATUS for the 1st, window+1st... rejected chunk only",
    "ratelimit.erasing": "§7.4 rule 1: BAD_STATE for the 1st, window+1st... DATA in ERASING only",
    "buffer.overflow": "§7.4: a chunk within the ACK credit refused as if the buffer were full",
    "verify.outcome": "§7.5: DONE only for the bytes whose CRC-32 is START's; else CRC_MISMATCH",
    "verify.late": "§10 verify_max_s: no DONE or CRC_MISMATCH in time after FINISH",
    "done.crc": "§5 MSG_OTA_DONE: the CRC equals the session's image_crc32",
    "done.disconnect": "§9, §10 done_to_disconnect_max_s: the device ends the link after DONE",
    "session.kept": "§7.1, §7.7: a link drop keeps the session (state, image, ACKed bytes)",
    "session.reset": "§7.7: a reset ends the session (STATUS shows IDLE)",
    "activation.info": "§9: after DONE and the reset INFO shows the new image; else the old",
}


@dataclass(frozen=True, slots=True)
class Violation:
    """The first frame (or silence) that broke a rule."""

    rule: str
    what: str
    t: float
    frame: str
    trace: tuple[str, ...]

    def __str__(self) -> str:
        lines = [
            f"contract violation [{self.rule}] at {self.t:.3f}s: {self.what}",
            f"  rule: {RULES.get(self.rule, '?')}",
            f"  frame: {self.frame}",
            "  trace (host >, device <, link *):",
        ]
        lines += [f"    {line}" for line in self.trace]
        return "\n".join(lines)


@dataclass(slots=True)
class _Pending:
    """A command the device received and has not visibly handled yet."""

    t: float
    type: int
    msg: p.Command | None  # None: unknown type or too short (an ERROR answers it)
    error: p.ErrorCode | None = None
    #: DATA the host sent beyond its ACK credit: the device may find its buffer full.
    beyond_credit: bool = False


@dataclass(slots=True)
class _Reply:
    """What the device must answer to a command in the state it is handled in."""

    #: Message tokens (contract.message_token) any one of which is the reply; () none.
    tokens: tuple[str, ...]
    #: The reply may be left out (a rate limit whose count the monitor cannot know).
    optional: bool = False


@dataclass(slots=True)
class _Session:
    size: int
    crc: int
    chunk_size: int
    #: The erase mode (None: asked for, and no INFO said whether the device can).
    progressive: bool | None


@dataclass(slots=True)
class _Model:
    state: p.OtaState | None = p.OtaState.IDLE
    session: _Session | None = None
    max_chunk: int | None = None
    window: int | None = None
    #: Bytes the device accepted (next_expected_offset), and the last ACK's offset.
    next_offset: int = 0
    acked: int = 0
    #: Ends of the chunks accepted since the last ACK (the ACK interval's count).
    chunk_ends: list[float] = field(default_factory=list)
    #: When each accepted chunk was sent (the ACK latency counts from it).
    chunk_times: list[float] = field(default_factory=list)
    #: Offset a STATUS in RECEIVING obliges an ACK for, and since when.
    status_acks: list[tuple[int, float]] = field(default_factory=list)
    #: A STATUS's ACK that fell together with another: it may still come on its own.
    merged_acks: set[int] = field(default_factory=set)
    #: After a resynchronisation the device's count since its last ACK is unknown.
    interval_unknown: bool = False
    rejected: int = 0
    erasing_data: int = 0
    pages_reported: int = 0
    last_progress_t: float | None = None
    #: A READY is owed (a resume START, a progressive START), since when.
    ready_owed: float | None = None
    #: The bytes accepted, for the CRC the verify must find (sections 7.4, 7.5).
    staged: bytearray = field(default_factory=bytearray)
    verify_start_t: float | None = None
    done_t: float | None = None


class ContractMonitor:
    """Follows one device through its NUS traffic and collects contract violations."""

    def __init__(self, name: str = "device", margin_s: float = DEFAULT_MARGIN_S) -> None:
        self.name = name
        self.margin_s = margin_s
        self.timing = contract.timing()
        self.violations: list[Violation] = []
        self._trace: collections.deque[str] = collections.deque(maxlen=TRACE_FRAMES)
        self._m = _Model()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._rx = p.FrameDecoder()  # the device's decoder, fed what the host wrote
        self._rx_last: float | None = None
        self._tx = p.FrameDecoder()  # the host's decoder, fed what the device notified
        self._tx_last: float | None = None
        self._connected = True
        #: The model does not know the device's state until a STATUS shows it.
        self._unsure = False
        #: The session the device held when the model became unsure (it must keep it).
        self._kept: _Session | None = None
        self._kept_state: p.OtaState | None = None
        self._kept_acked = 0
        self._kept_sent = 0
        #: Commands that may change the state, handled since the model became unsure.
        self._changed_since_unsure = False
        self._reset_since_unsure = False
        #: Highest in-order byte the host sent in this session (what an offset can reach).
        self._sent_end = 0
        #: Ends of the chunks the host sent beyond the last ACK it saw (its credit's count).
        self._inflight: list[int] = []
        self._reset_seen = False
        #: Images the device may run after a reset the monitor could not see happen.
        self._may_run: set[tuple[int, int]] = set()
        self.active: tuple[int, int] | None = None
        self._capacity: int | None = None
        #: The image the device must run after its next reset (DONE was sent).
        self._activation: tuple[int, int] | None = None
        self._no_reset = False
        self._slow_erase = False
        #: Damaged device frames the injected faults account for.
        self._damage_excused = 0
        #: The host sent a FINISH since its last START.
        self._finish_sent = False
        #: The image of the last START the host sent.
        self._last_start: tuple[int, int] | None = None
        #: The host went beyond its ACK credit: what the device took stays unknowable
        #: until a READY restarts the credit (a host that keeps to it is never refused).
        self._credit_blind = False
        #: A fault took frames of this connection: no resynchronisation until the next.
        self._fault_blind = False
        #: A reset happened on this link: what still arrives on it is the old life's.
        self._old_life = False
        #: The window of the last READY.
        self._window: int | None = None
        #: Whether the device advertises SIGNED_IMAGES (None: no INFO seen yet), and the
        #: image its last INFO showed in TEST state: a reset may revert from it (16.6).
        self._signed: bool | None = None
        self._in_test: tuple[int, int] | None = None
        self._before_test: tuple[int, int] | None = None
        #: The image the last activation replaced.
        self._replaced: tuple[int, int] | None = None
        #: The image the next INFO may still show: the bootloader refused PENDING (16.4).
        self._may_refuse: tuple[int, int] | None = None
        self._now = 0.0

    # --- what the test tells the monitor --------------------------------------------------

    def observe_connect(self, t: float) -> None:
        self._advance(t)
        self._connected = True
        self._old_life = False
        self._fault_blind = False
        self._credit_blind = False
        self._rx_last = self._tx_last = None
        self._log(t, "*", "connected")

    def observe_disconnect(self, t: float, by_host: bool = False) -> None:
        self._advance(t)
        self._log(t, "*", "link closed by the host" if by_host else "link lost")
        self._connected = False
        self._rx.reset()
        self._tx.reset()
        m = self._m
        if (m.done_t is not None or self._activation is not None) and not self._no_reset:
            # The device ends the link after DONE to reset (section 9): the activation.
            self._reset(t, activation=True)
            return
        self._become_unsure()

    def observe_reset(self, t: float) -> None:
        """The device was reset (a power cut, a watchdog): its RAM is gone (section 7.7)."""
        self._advance(t)
        self._log(t, "*", "device reset")
        self._reset(t, activation=self._m.state is p.OtaState.COMPLETE)

    def observe_fault(self, t: float, fault: str) -> None:
        """A fault a simulated link or device injected on purpose (smartball_sim's fault
        log names): the monitor forgets what it cannot know rather than cry wolf."""
        self._log(t, "*", f"fault injected: {fault}")
        if fault in ("lose", "corrupt", "write-drop"):
            if fault != "write-drop":
                self._damage_excused += 1  # what reaches the host may be cut or damaged
            # Which frames of this connection the fault took is unknowable from here: the
            # model waits for the next connection's STATUS.
            self._fault_blind = True
            self._become_unsure()
        elif fault == "reboot":
            self._reset(t, activation=self._m.state is p.OtaState.COMPLETE)
        elif fault == "no-reset":
            self._no_reset = True
            self._activation = None
        elif fault == "slow-erase":
            self._slow_erase = True  # a slowed flash stays slow, across resets too

    def observe_host_bytes(self, t: float, data: bytes) -> None:
        self._advance(t)
        if not data:
            return
        last, self._rx_last = self._rx_last, t
        if self._rx.buffered and last is not None:
            gap = t - last
            idle = self.timing.decoder_idle_s
            if gap >= idle + IDLE_BAND_S:
                self._rx.reset()
            elif gap > idle - IDLE_BAND_S:
                self._rx.reset()  # the device may or may not have kept it: unknowable
                self._log(t, "*", f"host bytes {gap:.3f}s after a partial frame: unsure")
                self._become_unsure()
        for frame in self._rx.feed(data):
            self._on_command(t, frame)

    def observe_device_bytes(self, t: float, data: bytes) -> None:
        self._advance(t)
        if not data or self._old_life:
            return
        last, self._tx_last = self._tx_last, t
        if self._tx.buffered and last is not None and t - last >= self.timing.decoder_idle_s:
            self._damaged(t, "frame.garbage", "the device abandoned a frame halfway", "")
            self._tx.reset()
        before = (self._tx.stats.dropped_bytes, self._tx.stats.bad_crc, self._tx.stats.bad_length)
        frames = self._tx.feed(data)
        stats = self._tx.stats
        if stats.bad_length > before[2]:
            self._damaged(t, "frame.length", "a device frame announced > 512 bytes", data.hex(" "))
        elif stats.bad_crc > before[1]:
            self._damaged(t, "frame.crc", "a device frame with a bad CRC", data.hex(" "))
        elif stats.dropped_bytes > before[0]:
            self._damaged(t, "frame.garbage", "device bytes outside any frame", data.hex(" "))
        for frame in frames:
            self._on_device_frame(t, frame)

    def finish(self, t: float) -> list[Violation]:
        """The end of the observation: obligations due by ``t`` are judged."""
        self._advance(t)
        return self.violations

    @property
    def now(self) -> float:
        """The time of the last thing observed."""
        return self._now

    @property
    def first(self) -> Violation | None:
        return self.violations[0] if self.violations else None

    # --- bookkeeping --------------------------------------------------------------------

    def _log(self, t: float, who: str, text: str) -> None:
        self._trace.append(f"{t:10.3f}s {who} {text}")

    def _violate(self, t: float, rule: str, what: str, frame: str) -> None:
        self.violations.append(
            Violation(
                rule, f"{self.name}: {what}", t, frame or "(none: a silence)", tuple(self._trace)
            )
        )

    def _damaged(self, t: float, rule: str, what: str, frame: str) -> None:
        if self._damage_excused:
            self._damage_excused -= 1
            self._log(t, "*", f"{what}: an injected fault's doing")
            return
        self._violate(t, rule, what, frame)

    def _become_unsure(self) -> None:
        m = self._m
        if not self._unsure:
            self._unsure = True
            self._kept = (
                m.session if m.state not in (None, p.OtaState.IDLE, p.OtaState.ERROR) else None
            )
            self._kept_state = m.state
            self._kept_acked = m.acked
            self._kept_sent = self._sent_end
            self._changed_since_unsure = any(
                not isinstance(c.msg, p.CmdInfo | p.CmdOtaStatus) for c in self._pending
            )
            self._reset_since_unsure = self._reset_seen
            self._reset_seen = False
        if self._finish_sent and self._last_start is not None:
            # A FINISH may have been handled and the image activated unseen.
            self._may_run.add(self._last_start)
        m.status_acks.clear()
        m.ready_owed = None
        m.chunk_ends.clear()
        m.chunk_times.clear()
        m.last_progress_t = None
        m.verify_start_t = None

    def _reset(self, t: float, activation: bool) -> None:
        m = self._m
        if self._signed and self._in_test is not None and self._before_test is not None:
            # An image in TEST reverts at a reset unless it was confirmed (section 16.6):
            # the device must run the previous image again.
            self.active = self._before_test
            self._in_test = self._before_test = None
        self._may_refuse = None
        if activation and self._activation is not None and self._signed and self.active:
            # The bootloader verifies PENDING again and may refuse it (section 16.4): the
            # next INFO may show the old image (only the next).
            self._may_refuse = self.active
        if activation and self._activation is not None:
            self._replaced = self.active
            self.active = self._activation
        self._activation = None
        self._pending.clear()
        self._m = _Model(window=m.window)
        self._sent_end = 0
        self._no_reset = False
        self._inflight = []
        self._reset_seen = True
        self._old_life = True
        if self._unsure:
            self._reset_since_unsure = True

    # --- timing ---------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Judge what was due by ``now``: overdue replies, ACKs, PROGRESS, READY, DONE."""
        self._now = now
        margin = self.margin_s
        tm = self.timing
        while self._pending and now > self._pending[0].t + tm.reply_max_s + margin:
            head = self._pending[0]
            reply = self._reply_to(head)
            if reply.tokens and not reply.optional and not self._unsure:
                self._violate(
                    now,
                    "reply.missing",
                    f"no {' or '.join(reply.tokens)} for {_name(head)} sent at {head.t:.3f}s "
                    f"within {tm.reply_max_s:g} s (+{margin:g} s radio)",
                    _describe(head.msg, head.type),
                )
            self._pending.popleft()
            self._apply(head)
        m = self._m
        if self._unsure or m.state is None:
            return
        if m.chunk_times and m.window and not m.interval_unknown and self._ack_owed_at():
            owed_t = self._ack_owed_at()
            assert owed_t is not None
            if now > owed_t + tm.ack_latency_max_s + margin:
                self._violate(
                    now,
                    "ack.late",
                    f"no MSG_OTA_ACK for {len(m.chunk_ends)} chunks accepted since the last ACK "
                    f"(interval {self._interval()}) within {tm.ack_latency_max_s:g} s",
                    "",
                )
                m.chunk_ends.clear()
                m.chunk_times.clear()
        if m.status_acks and now > m.status_acks[0][1] + tm.ack_latency_max_s + margin:
            self._violate(now, "ack.late", "no MSG_OTA_ACK after a CMD_OTA_STATUS in RECEIVING", "")
            m.status_acks.clear()
        if m.state is p.OtaState.ERASING and m.last_progress_t is not None and not self._slow_erase:
            if m.session is not None and m.pages_reported < _pages(m.session.size):
                if now > m.last_progress_t + tm.progress_gap_max_s + margin:
                    self._violate(
                        now,
                        "progress.gap",
                        f"no MSG_OTA_PROGRESS for {now - m.last_progress_t:.3f} s during the "
                        f"erase (at most {tm.progress_gap_max_s:g} s)",
                        "",
                    )
                    m.last_progress_t = None
            elif now > m.last_progress_t + tm.ready_after_erase_max_s + margin:
                self._violate(
                    now,
                    "ready.late",
                    f"no MSG_OTA_READY within {tm.ready_after_erase_max_s:g} s of the last "
                    "erase PROGRESS",
                    "",
                )
                m.last_progress_t = None
        if m.verify_start_t is not None and m.session is not None:
            limit = tm.verify_max_s(m.session.size)
            if now > m.verify_start_t + limit + margin:
                self._violate(
                    now, "verify.late", f"no DONE or CRC_MISMATCH within {limit:g} s of FINISH", ""
                )
                m.verify_start_t = None
        if m.done_t is not None and self._connected and not self._no_reset:
            if now > m.done_t + tm.done_to_disconnect_max_s + margin:
                self._violate(
                    now,
                    "done.disconnect",
                    f"the device did not end the link within {tm.done_to_disconnect_max_s:g} s "
                    "of MSG_OTA_DONE",
                    "",
                )
                m.done_t = None

    def _interval(self) -> int:
        return max(1, (self._m.window or 1) // 2)

    def _ack_owed_at(self) -> float | None:
        """When the chunk that makes an ACK owed was sent (None: none is owed)."""
        m = self._m
        if not m.chunk_ends:
            return None
        interval = self._interval()
        if len(m.chunk_ends) >= interval:
            return m.chunk_times[interval - 1]
        if m.session is not None and m.chunk_ends[-1] == m.session.size:
            return m.chunk_times[-1]
        return None

    # --- host -> device ---------------------------------------------------------------------

    def _on_command(self, t: float, frame: p.Frame) -> None:
        msg: p.Command | None = None
        error: p.ErrorCode | None = None
        if frame.type not in p.COMMAND_TYPES:
            error = p.ErrorCode.UNKNOWN_COMMAND
        else:
            try:
                parsed = p.parse_message(frame)
            except p.ProtocolError:
                error = p.ErrorCode.BAD_FRAME
            else:
                assert not isinstance(parsed, _DEVICE_CLASSES)
                msg = parsed
        if isinstance(msg, p.CmdOtaStart):
            self._last_start = (msg.image_size, msg.image_crc32)
            self._finish_sent = False
        elif isinstance(msg, p.CmdOtaFinish):
            self._finish_sent = True
            if self._unsure and self._last_start is not None:
                self._may_run.add(self._last_start)
        pending = _Pending(t, frame.type, msg, error)
        self._log(t, ">", _describe(msg, frame.type))
        if isinstance(msg, p.CmdOtaData) and self._m.session is not None:
            end = msg.offset + len(msg.data)
            if msg.offset <= self._sent_end < end:
                self._sent_end = end
            window = self._m.window
            if window is not None and msg.offset >= self._m.acked:
                self._inflight = [e for e in self._inflight if e > self._m.acked] + [end]
                pending.beyond_credit = len(self._inflight) > window
        self._pending.append(pending)

    # --- the device's replies, by the table ---------------------------------------------------

    def _reply_to(self, cmd: _Pending) -> _Reply:
        """What the device must answer ``cmd`` with in the model's state now."""
        m = self._m
        state = m.state
        if cmd.error is not None:
            if cmd.type in _SIGNED_COMMANDS and self._signed is not True:
                # a device without SIGNED_IMAGES does not know the type (section 6)
                unknown = f"MSG_ERROR:{p.ErrorCode.UNKNOWN_COMMAND.name}"
                if self._signed is False:
                    return _Reply((unknown,))
                return _Reply((f"MSG_ERROR:{cmd.error.name}", unknown))
            return _Reply((f"MSG_ERROR:{cmd.error.name}",))
        msg = cmd.msg
        if isinstance(msg, p.CmdOtaManifest | p.CmdOtaConfirm):
            return self._signed_reply(msg, state)
        if self._unsure or state is None:
            return _loose_reply(msg)
        if isinstance(msg, p.CmdInfo):
            return _Reply(("MSG_INFO",))
        if isinstance(msg, p.CmdOtaStatus | p.CmdOtaAbort):
            return _Reply(("MSG_OTA_STATUS",))
        if isinstance(msg, p.CmdOtaStart):
            tokens = self._start_reply(msg)
            if not tokens and state in (p.OtaState.IDLE, p.OtaState.ERROR) and self._signed:
                # A signed-only device refuses a new session without an accepted manifest
                # for its image, or while its image is in TEST (section 16.2).
                return _Reply(_START_SIGNED_REFUSALS, optional=True)
            return _Reply(tokens)
        if isinstance(msg, p.CmdOtaFinish):
            if state is p.OtaState.RECEIVING and m.session and m.next_offset == m.session.size:
                return _Reply(())
            return _Reply(("MSG_ERROR:BAD_STATE",))
        assert isinstance(msg, p.CmdOtaData)
        if state is p.OtaState.ERASING:
            n = m.erasing_data + 1
            if m.window is None:
                return _Reply(("MSG_ERROR:BAD_STATE",), optional=n > 1)
            return _Reply(("MSG_ERROR:BAD_STATE",) if (n - 1) % m.window == 0 else ())
        if state is not p.OtaState.RECEIVING or m.session is None:
            return _Reply(("MSG_ERROR:BAD_STATE",))
        tokens = self._data_reply(msg)
        if cmd.beyond_credit and tokens in ((), ("MSG_OTA_STATUS",)):
            # Its buffer may be full, and whether a refusal is answered then depends on
            # what the device wrote meanwhile: either way is the contract's.
            return _Reply(("MSG_OTA_STATUS",), optional=True)
        return _Reply(tokens)

    def _signed_reply(self, msg: p.Command, state: p.OtaState | None) -> _Reply:
        """MANIFEST and CONFIRM (section 16): UNKNOWN_COMMAND on a v1 device; on a signed-
        only one CONFIRM is answered with INFO in every state, MANIFEST with STATUS or the
        refusal of its first failing check (the ones the monitor can judge without the
        device's keys are judged), BAD_STATE with a session."""
        unknown = f"MSG_ERROR:{p.ErrorCode.UNKNOWN_COMMAND.name}"
        if self._signed is False:
            return _Reply((unknown,))
        maybe_v1 = (unknown,) if self._signed is None else ()
        if isinstance(msg, p.CmdOtaConfirm):
            return _Reply(("MSG_INFO", *maybe_v1))
        assert isinstance(msg, p.CmdOtaManifest)
        if self._unsure or state is None:
            return _Reply(("MSG_OTA_STATUS", *_MANIFEST_REFUSALS, *maybe_v1))
        if state not in (p.OtaState.IDLE, p.OtaState.ERROR):
            return _Reply(("MSG_ERROR:BAD_STATE", *maybe_v1))
        try:
            manifest = Manifest.decode(msg.manifest)
        except ManifestError:
            return _Reply(("MSG_ERROR:BAD_MANIFEST", *maybe_v1))
        if manifest.image_size == 0:
            return _Reply(("MSG_ERROR:BAD_PARAM", *maybe_v1))
        if self._capacity is not None and manifest.image_size > self._capacity:
            return _Reply(("MSG_ERROR:TOO_LARGE", *maybe_v1))
        # the key, the signature, the counter and the image state are the device's to judge
        return _Reply(("MSG_OTA_STATUS", *_MANIFEST_REFUSALS, *maybe_v1))

    def _start_reply(self, msg: p.CmdOtaStart) -> tuple[str, ...]:
        m = self._m
        state = m.state
        if msg.image_size == 0 or msg.chunk_size < p.MIN_CHUNK_SIZE:
            return ("MSG_ERROR:BAD_PARAM",)
        if self._capacity is not None and msg.image_size > self._capacity:
            return ("MSG_ERROR:TOO_LARGE",)
        if state is p.OtaState.COMPLETE:
            return ("MSG_ERROR:BAD_STATE",)
        if state in (p.OtaState.ERASING, p.OtaState.RECEIVING, p.OtaState.VERIFYING):
            s = m.session
            if s is None or (s.size, s.crc) != (msg.image_size, msg.image_crc32):
                return ("MSG_ERROR:BAD_STATE",)
            return ("MSG_OTA_READY",) if state is p.OtaState.RECEIVING else ()
        return ()  # a new session (its READY, at once when progressive, is work under way)

    def _data_reply(self, msg: p.CmdOtaData) -> tuple[str, ...]:
        m = self._m
        s = m.session
        assert s is not None
        size = len(msg.data)
        if size == 0 or (m.max_chunk is not None and size > m.max_chunk):
            return ("MSG_ERROR:BAD_PARAM",)
        if msg.offset != m.next_offset:
            return self._rejected_reply()
        if msg.offset + size > s.size:
            return ("MSG_ERROR:BAD_OFFSET",)
        if size % p.WORD_SIZE and msg.offset + size != s.size:
            return ("MSG_ERROR:BAD_PARAM",)
        return ()

    def _rejected_reply(self) -> tuple[str, ...]:
        m = self._m
        n = m.rejected + 1
        window = m.window or 1
        return ("MSG_OTA_STATUS",) if (n - 1) % window == 0 else ()

    # --- applying a handled command to the model --------------------------------------------------

    def _apply(self, cmd: _Pending, replied: p.DeviceMessage | None = None) -> None:
        """The command's effect on the device's state (section 7); ``replied``: its reply."""
        m = self._m
        msg = cmd.msg
        if cmd.error is not None or msg is None or isinstance(msg, p.CmdInfo):
            return
        if self._unsure or m.state is None:
            if not isinstance(msg, p.CmdOtaStatus):
                self._changed_since_unsure = True
            return
        if isinstance(msg, p.CmdOtaStatus):
            if m.state is p.OtaState.RECEIVING:
                m.status_acks.append((m.next_offset, cmd.t))
            return
        if isinstance(msg, p.CmdOtaAbort):
            if m.state is not p.OtaState.COMPLETE:
                self._m = _Model(window=m.window)
                self._sent_end = 0
            return
        if isinstance(msg, p.CmdOtaManifest | p.CmdOtaConfirm):
            return  # nothing in the OTA state changes (section 16.1, 16.5)
        if isinstance(msg, p.CmdOtaStart):
            if isinstance(replied, p.MsgError):
                return  # refused (section 16.2: UNSIGNED, or BAD_STATE in TEST)
            self._apply_start(cmd.t, msg)
            return
        if isinstance(msg, p.CmdOtaFinish):
            if self._start_finish_ok():
                m.state = p.OtaState.VERIFYING
                m.verify_start_t = cmd.t
            return
        assert isinstance(msg, p.CmdOtaData)
        if cmd.beyond_credit and m.state is p.OtaState.RECEIVING:
            # Beyond its credit the host may find the buffer full or not, as the flash
            # drains it: what the device took is unknowable until a STATUS says.
            if not self._credit_blind:
                self._log(cmd.t, "*", "host beyond its ACK credit: unsure until its next READY")
            self._credit_blind = True
            self._become_unsure()
            self._changed_since_unsure = True
            return
        if isinstance(replied, p.MsgOtaStatus) and m.state is p.OtaState.RECEIVING:
            m.rejected += 1  # refused (a full buffer, or not the expected offset)
            return
        self._apply_data(cmd.t, msg)

    def _start_finish_ok(self) -> bool:
        m = self._m
        return (
            m.state is p.OtaState.RECEIVING
            and m.session is not None
            and m.next_offset == m.session.size
        )

    def _apply_start(self, t: float, msg: p.CmdOtaStart) -> None:
        self._reset_seen = False  # a reset before this START is history
        m = self._m
        if self._start_reply(msg) and self._start_reply(msg) != ("MSG_OTA_READY",):
            return  # refused
        if m.state in (p.OtaState.ERASING, p.OtaState.RECEIVING, p.OtaState.VERIFYING):
            assert m.session is not None
            m.session.chunk_size = msg.chunk_size
            m.erasing_data = 0  # "the first DATA since the START": a resume's too (7.4)
            if m.state is p.OtaState.RECEIVING:
                m.rejected = 0
                m.chunk_ends.clear()
                m.chunk_times.clear()
            return
        # A new session. Progressive only if asked for; whether the device advertises the
        # capability the monitor knows only from INFO, so the READY decides below.
        asked = bool(msg.flags & p.StartFlag.PROGRESSIVE_ERASE)
        progressive: bool | None = False
        if asked:  # the device's first message tells (a capability may be switched on late)
            progressive = None
        window = m.window
        self._m = m = _Model(window=window)
        m.session = _Session(msg.image_size, msg.image_crc32, msg.chunk_size, progressive)
        m.state = p.OtaState.ERASING
        m.last_progress_t = t
        self._sent_end = 0
        if progressive is not False:
            m.ready_owed = t

    def _apply_data(self, t: float, msg: p.CmdOtaData) -> None:
        m = self._m
        if m.state is p.OtaState.ERASING:
            m.erasing_data += 1
            return
        if m.state is not p.OtaState.RECEIVING or m.session is None:
            return
        reply = self._data_reply(msg)
        if reply == ("MSG_OTA_STATUS",) or (not reply and msg.offset != m.next_offset):
            m.rejected += 1
            return
        if reply:
            return
        end = msg.offset + len(msg.data)
        m.staged[msg.offset : end] = msg.data
        m.next_offset = end
        m.rejected = 0
        m.chunk_ends.append(end)
        m.chunk_times.append(t)

    # --- device -> host ------------------------------------------------------------------------

    def _on_device_frame(self, t: float, frame: p.Frame) -> None:
        try:
            msg = p.parse_message(frame)
        except p.ProtocolError as exc:
            self._log(t, "<", f"type 0x{frame.type:02X} {frame.payload.hex(' ')}")
            rule = "frame.type" if "unknown" in str(exc) else "frame.fields"
            self._violate(t, rule, str(exc), f"type 0x{frame.type:02X} {frame.payload.hex(' ')}")
            return
        self._log(t, "<", repr(msg))
        if frame.type in p.COMMAND_TYPES:
            self._violate(t, "frame.type", "the device sent a host command", repr(msg))
            return
        problem = _field_problem(msg)
        if problem:
            self._violate(t, "frame.fields", problem, repr(msg))
            return
        assert not isinstance(msg, _COMMAND_CLASSES)
        self._on_device_message(t, msg)

    def _on_device_message(self, t: float, msg: p.DeviceMessage) -> None:
        if self._unsure:
            self._on_message_unsure(t, msg)
            return
        changes_state = self._changes_state(msg)
        for _ in range(len(self._pending) + 1):
            if self._unsure:  # a command just handled made the state unknowable
                self._on_message_unsure(t, msg)
                return
            if self._explains_async(t, msg):
                if changes_state and any(
                    not isinstance(c.msg, p.CmdInfo | p.CmdOtaStatus) for c in self._pending
                ):
                    # Work under way ended while commands were on their way: whether the
                    # device handled them before or after is unknowable from here.
                    self._log(t, "*", "commands in flight as the state changed: unsure")
                    self._become_unsure()
                return
            if not self._pending:
                break
            head = self._pending[0]
            reply = self._reply_to(head)
            token = contract.message_token(msg)
            if self._refused_in_credit(head, reply, msg):
                self._pending.popleft()
                self._violate(
                    t,
                    "buffer.overflow",
                    f"{_describe(head.msg, head.type)} within the host's ACK credit was "
                    "refused: the receive buffer must hold the window READY granted",
                    repr(msg),
                )
                self._apply(head, msg)
                return
            if not reply.tokens or (reply.optional and not self._may_answer(head, msg, reply)):
                self._pending.popleft()
                self._apply(head)
                continue
            if token in reply.tokens or self._unsure:
                if self._unsure and token not in reply.tokens and not _loose_match(head, msg):
                    break
                self._pending.popleft()
                self._check_reply(t, head, msg)
                self._apply(head, msg)
                self._after_reply(t, head, msg)
                return
            if isinstance(msg, _ASYNC):
                break  # work under way cannot speak while this command waits: unexplained
            self._pending.popleft()
            self._violate(
                t,
                "reply.wrong",
                f"{_name(head)} in {self._state_name()} must be answered with "
                f"{' or '.join(reply.tokens)}, not {token}",
                repr(msg),
            )
            self._apply(head)
            return
        rule = "reply.unexpected"
        m = self._m
        if isinstance(msg, p.MsgOtaAck) and m.state in (p.OtaState.RECEIVING, p.OtaState.VERIFYING):
            rule = "ack.offset" if msg.next_expected_offset > m.next_offset else "ack.interval"
        elif isinstance(msg, p.MsgOtaStatus) and m.state is p.OtaState.RECEIVING and m.rejected > 1:
            rule = "ratelimit.rejected"
        elif (
            isinstance(msg, p.MsgError)
            and msg.command == p.MsgType.CMD_OTA_DATA
            and m.state is p.OtaState.ERASING
            and m.erasing_data > 1
        ):
            rule = "ratelimit.erasing"
        self._violate(
            t,
            rule,
            f"{contract.message_token(msg)} in {self._state_name()} answers no command and "
            "no work under way explains it",
            repr(msg),
        )

    def _on_message_unsure(self, t: float, msg: p.DeviceMessage) -> None:
        """While the state is unknown: pair replies with their commands by kind only, and
        take the state from the first STATUS."""
        if self._explains_async(t, msg):
            return
        for i, cmd in enumerate(self._pending):
            if _loose_match(cmd, msg):
                for _ in range(i):
                    self._apply(self._pending.popleft())
                head = self._pending.popleft()
                self._check_reply(t, head, msg)
                self._apply(head, msg)
                self._after_reply(t, head, msg)
                return
        if isinstance(msg, p.MsgOtaStatus):
            self._resync(t, msg, None)

    @staticmethod
    def _may_answer(head: _Pending, msg: p.DeviceMessage, reply: _Reply) -> bool:
        """Whether ``msg`` is ``head``'s reply; a refused chunk's STATUS shows the offset
        the device still expects, so one showing more answers something later."""
        if contract.message_token(msg) not in reply.tokens:
            return False
        if isinstance(head.msg, p.CmdOtaData) and isinstance(msg, p.MsgOtaStatus):
            return msg.next_expected_offset <= head.msg.offset
        return True

    def _refused_in_credit(self, head: _Pending, reply: _Reply, msg: p.DeviceMessage) -> bool:
        """A STATUS showing that an in-order chunk the device had to accept was dropped."""
        return (
            not self._unsure
            and not reply.tokens
            and not head.beyond_credit
            and isinstance(head.msg, p.CmdOtaData)
            and isinstance(msg, p.MsgOtaStatus)
            and self._m.state is p.OtaState.RECEIVING
            and head.msg.offset == self._m.next_offset
            and msg.next_expected_offset == head.msg.offset
            and msg.state == p.OtaState.RECEIVING
        )

    def _changes_state(self, msg: p.DeviceMessage) -> bool:
        state = self._m.state
        if isinstance(msg, p.MsgOtaReady):
            return state is p.OtaState.ERASING
        if isinstance(msg, p.MsgOtaDone):
            return True
        return isinstance(msg, p.MsgError) and msg.code in _ASYNC_ERRORS

    def _state_name(self) -> str:
        return "an unknown state" if self._m.state is None or self._unsure else self._m.state.name

    def _check_reply(self, t: float, head: _Pending, msg: p.DeviceMessage) -> None:
        if isinstance(msg, p.MsgError) and msg.command != head.type:
            self._violate(
                t,
                "error.command",
                f"MSG_ERROR answering {_name(head)} names command 0x{msg.command:02X}",
                repr(msg),
            )
        if isinstance(msg, p.MsgInfo):
            self._check_info(t, msg)
        if isinstance(msg, p.MsgOtaReady) and isinstance(head.msg, p.CmdOtaStart):
            self._on_ready(t, msg, head.msg.chunk_size)
            self._m.ready_owed = None

    def _after_reply(self, t: float, head: _Pending, msg: p.DeviceMessage) -> None:
        """A reply whose content depends on the state after the command: STATUS."""
        if not isinstance(msg, p.MsgOtaStatus):
            return
        if self._unsure:
            self._resync(t, msg, head)
            return
        self._check_status(t, msg)

    def _check_status(self, t: float, msg: p.MsgOtaStatus) -> None:
        m = self._m
        s = m.session
        state = m.state
        assert state is not None
        if s is None or state in (p.OtaState.IDLE, p.OtaState.ERROR):
            want = p.MsgOtaStatus(state, 0, 0, 0)
        else:
            offset = {p.OtaState.ERASING: 0, p.OtaState.RECEIVING: m.next_offset}.get(state, s.size)
            want = p.MsgOtaStatus(state, offset, s.size, s.crc)
        if msg != want:
            self._violate(
                t,
                "status.fields",
                f"MSG_OTA_STATUS says {_status(msg)}, the device holds {_status(want)}",
                repr(msg),
            )

    def _resync(self, t: float, msg: p.MsgOtaStatus, head: _Pending | None) -> None:
        """A STATUS shows the device's state again after the model lost it."""
        if self._fault_blind or self._credit_blind:
            return
        kept, kept_state = self._kept, self._kept_state
        judged = head is not None and isinstance(head.msg, p.CmdOtaStatus)
        if judged and not self._changed_since_unsure:
            if self._reset_since_unsure:
                if msg.state != p.OtaState.IDLE:
                    self._violate(
                        t, "session.reset", f"after a reset STATUS says {_status(msg)}", repr(msg)
                    )
            elif kept is not None and kept_state is not None:
                self._judge_kept(t, msg, kept, kept_state)
        self._unsure = False
        self._kept = None
        self._reset_seen = False
        m = self._m
        try:
            state = p.OtaState(msg.state)
        except ValueError:
            state = None
        same = m.session is not None and (m.session.size, m.session.crc) == (
            msg.image_size,
            msg.image_crc32,
        )
        session = m.session if same else None
        window = self._window
        max_chunk = m.max_chunk if same else None
        staged = m.staged if same else bytearray()
        self._m = m = _Model(state=state, window=window, max_chunk=max_chunk, staged=staged)
        if state in (
            p.OtaState.ERASING,
            p.OtaState.RECEIVING,
            p.OtaState.VERIFYING,
            p.OtaState.COMPLETE,
        ):
            m.session = session or _Session(msg.image_size, msg.image_crc32, 0, False)
            m.next_offset = msg.next_expected_offset if state is p.OtaState.RECEIVING else 0
            # Chunks still in the buffer may be ACKed yet: from the last ACK seen on.
            m.acked = min(self._kept_acked if same else 0, m.next_offset)
            m.interval_unknown = True
            if head is not None and isinstance(head.msg, p.CmdOtaData):
                m.rejected = 1  # the STATUS answered a rejected chunk: the rate limit runs
            if (
                state is p.OtaState.RECEIVING
                and head is not None
                and isinstance(head.msg, p.CmdOtaStatus)
            ):
                m.status_acks.append((m.next_offset, head.t))
            if state is p.OtaState.ERASING:
                m.last_progress_t = None  # pages done so far: unknown
                m.pages_reported = -1
            if state is p.OtaState.VERIFYING:
                m.verify_start_t = t
        if state is p.OtaState.RECEIVING and not same:
            m.max_chunk = None
        self._sent_end = max(m.next_offset, self._sent_end if same else 0)

    def _judge_kept(
        self, t: float, msg: p.MsgOtaStatus, kept: _Session, kept_state: p.OtaState
    ) -> None:
        reachable = {
            p.OtaState.ERASING: {p.OtaState.ERASING, p.OtaState.RECEIVING, p.OtaState.ERROR},
            p.OtaState.RECEIVING: {
                p.OtaState.RECEIVING,
                p.OtaState.VERIFYING,
                p.OtaState.COMPLETE,
                p.OtaState.ERROR,
            },
            p.OtaState.VERIFYING: {p.OtaState.VERIFYING, p.OtaState.COMPLETE, p.OtaState.ERROR},
            p.OtaState.COMPLETE: {p.OtaState.COMPLETE},
        }.get(kept_state, set())
        if (kept.size, kept.crc) in self._may_run:
            reachable |= {p.OtaState.IDLE, p.OtaState.COMPLETE}  # activated, reset unseen
        if msg.state not in reachable or (
            msg.state != p.OtaState.ERROR
            and (msg.image_size, msg.image_crc32) != (kept.size, kept.crc)
        ):
            self._violate(
                t,
                "session.kept",
                f"the device held a session in {kept_state.name} for a {kept.size}-byte image; "
                f"after the link's loss STATUS says {_status(msg)}",
                repr(msg),
            )
            return
        if msg.state == p.OtaState.RECEIVING:
            offset = msg.next_expected_offset
            if offset < self._kept_acked or offset > max(self._kept_sent, self._kept_acked):
                self._violate(
                    t,
                    "session.kept",
                    f"STATUS offset {offset} after the link's loss: the device had ACKed "
                    f"{self._kept_acked} and was sent bytes up to {self._kept_sent} in order",
                    repr(msg),
                )

    def _check_info(self, t: float, msg: p.MsgInfo) -> None:
        if msg.protocol_version != p.PROTOCOL_VERSION:
            self._violate(t, "info.fields", f"protocol_version {msg.protocol_version}", repr(msg))
        self._signed = msg.signed_only
        if self._signed and msg.image_state == p.ImageState.TEST:
            running_now = (msg.active_image_size, msg.active_image_crc32)
            if self._in_test != running_now:
                self._before_test = self._replaced
            self._in_test = running_now
        else:
            self._in_test = self._before_test = None
        if self._capacity is not None and msg.staging_capacity != self._capacity:
            self._violate(
                t, "info.fields", f"staging_capacity changed from {self._capacity}", repr(msg)
            )
        self._capacity = msg.staging_capacity
        running = (msg.active_image_size, msg.active_image_crc32)
        refused, self._may_refuse = self._may_refuse, None
        if refused is not None and running == refused:
            self._log(t, "*", "the bootloader refused the new image: the old one runs")
        elif self.active is not None and running != self.active and running not in self._may_run:
            self._violate(
                t,
                "activation.info",
                f"MSG_INFO reports a {running[0]}-byte image with CRC {running[1]:08x}; the "
                f"device must run the {self.active[0]}-byte image {self.active[1]:08x}",
                repr(msg),
            )
        self.active = running
        self._may_run.discard(running)

    # --- work under way -------------------------------------------------------------------------

    def _explains_async(self, t: float, msg: p.DeviceMessage) -> bool:
        m = self._m
        if self._unsure and isinstance(msg, (*_ASYNC, p.MsgError)):
            # An async message or a late error while unsure: take what it shows.
            if isinstance(msg, p.MsgOtaDone):
                if m.session is not None and m.session.crc == msg.crc32:
                    self._on_done(t, msg)
                elif self._last_start is not None and self._last_start[1] == msg.crc32:
                    self._activation = self._last_start  # the reset will switch to it
            return isinstance(msg, _ASYNC) or (
                isinstance(msg, p.MsgError) and msg.code in _ASYNC_ERRORS
            )
        state = m.state
        if isinstance(msg, p.MsgOtaProgress):
            if state is p.OtaState.ERASING and m.session is not None and not m.session.progressive:
                if m.session.progressive is None:
                    m.session.progressive = False  # the device erases first
                    m.ready_owed = None
                self._on_progress(t, msg)
                return True
            return False
        if isinstance(msg, p.MsgOtaReady):
            if state is p.OtaState.ERASING and m.session is not None and m.ready_owed is None:
                if m.session.progressive and m.pages_reported == 0:
                    self._on_ready(t, msg, m.session.chunk_size)
                    return True
                pages = _pages(m.session.size)
                if m.pages_reported >= 0 and m.pages_reported < pages:
                    self._violate(
                        t,
                        "ready.early",
                        f"MSG_OTA_READY after {m.pages_reported} of {pages} pages' PROGRESS",
                        repr(msg),
                    )
                self._on_ready(t, msg, m.session.chunk_size)
                return True
            if m.ready_owed is not None and state in (p.OtaState.ERASING, p.OtaState.RECEIVING):
                if state is p.OtaState.ERASING and m.session and m.session.progressive is False:
                    pages = _pages(m.session.size)
                    if 0 <= m.pages_reported < pages:
                        self._violate(
                            t,
                            "ready.early",
                            f"MSG_OTA_READY after {m.pages_reported} of {pages} pages' PROGRESS",
                            repr(msg),
                        )
                assert m.session is not None
                if m.session.progressive is None:
                    m.session.progressive = True  # READY at once: the device erases as it goes
                self._on_ready(t, msg, m.session.chunk_size)
                return True
            return False
        if isinstance(msg, p.MsgOtaAck):
            return self._on_ack(t, msg)
        if isinstance(msg, p.MsgOtaDone):
            if state is p.OtaState.VERIFYING:
                self._on_done(t, msg)
                return True
            return False
        if isinstance(msg, p.MsgError):
            if msg.code == p.ErrorCode.CRC_MISMATCH and state is p.OtaState.VERIFYING:
                self._on_verify_failed(t, msg)
                return True
            if msg.code == p.ErrorCode.DIGEST_MISMATCH and state is p.OtaState.VERIFYING:
                self._on_digest_mismatch(t, msg)
                return True
            if msg.code == p.ErrorCode.FLASH_ERROR and state in (
                p.OtaState.ERASING,
                p.OtaState.RECEIVING,
            ):
                want = (
                    p.MsgType.CMD_OTA_START
                    if state is p.OtaState.ERASING
                    else p.MsgType.CMD_OTA_DATA
                )
                if msg.command != want and not (m.session and m.session.progressive):
                    self._violate(
                        t,
                        "error.command",
                        f"FLASH_ERROR in {state.name} must name {want.name}",
                        repr(msg),
                    )
                self._m = _Model(state=p.OtaState.ERROR, window=m.window)
                self._pending.clear()  # queued work is dropped; replies may come either way
                self._become_unsure()
                return True
        return False

    def _on_progress(self, t: float, msg: p.MsgOtaProgress) -> None:
        m = self._m
        assert m.session is not None
        total = _pages(m.session.size) * PAGE_SIZE
        if m.pages_reported < 0:  # resynchronised mid-erase: take its count
            m.pages_reported = msg.done // PAGE_SIZE - 1
        want_done = (m.pages_reported + 1) * PAGE_SIZE
        if msg.phase != p.OtaPhase.ERASE or msg.total != total or msg.done != want_done:
            self._violate(
                t,
                "progress.fields",
                f"erase PROGRESS must be phase 1, done {want_done}, total {total} "
                f"(ceil({m.session.size} / 4096) pages)",
                repr(msg),
            )
        m.pages_reported += 1
        m.last_progress_t = t

    def _on_ready(self, t: float, msg: p.MsgOtaReady, chunk_size: int) -> None:
        m = self._m
        want = p.granted_max_chunk(chunk_size) if chunk_size >= p.MIN_CHUNK_SIZE else None
        if (want is not None and msg.max_chunk != want) or msg.window < 1:
            self._violate(
                t,
                "ready.fields",
                f"READY for chunk_size {chunk_size} must grant max_chunk {want} and a window >= 1",
                repr(msg),
            )
        self._credit_blind = False
        m.max_chunk = msg.max_chunk
        m.window = self._window = msg.window
        m.interval_unknown = False
        self._inflight = []
        m.state = p.OtaState.RECEIVING
        m.ready_owed = None
        m.last_progress_t = None
        m.acked = m.next_offset
        m.chunk_ends.clear()
        m.chunk_times.clear()
        m.rejected = 0

    def _on_ack(self, t: float, msg: p.MsgOtaAck) -> bool:
        m = self._m
        if m.state not in (p.OtaState.RECEIVING, p.OtaState.VERIFYING) or m.session is None:
            return False
        offset = msg.next_expected_offset
        owed = [x for x, _ in m.status_acks]
        if offset in m.merged_acks and offset <= m.acked and offset not in owed:
            m.merged_acks.discard(offset)  # a STATUS's ACK sent apart from its twin
            return True
        if not m.chunk_ends:
            if offset in owed or (m.interval_unknown and m.acked <= offset <= m.next_offset):
                if offset < m.acked:
                    self._violate(
                        t, "ack.offset", f"ACK {offset} goes back from {m.acked}", repr(msg)
                    )
                m.status_acks = [(x, since) for x, since in m.status_acks if x > offset]
                m.acked = max(m.acked, offset)
                self._inflight = [e for e in self._inflight if e > offset]
                return True
            return False  # not owed now: a pending command may make it owed
        if offset < m.acked:
            self._violate(t, "ack.offset", f"ACK {offset} goes back from {m.acked}", repr(msg))
            return True
        if offset not in m.chunk_ends:
            if offset > m.chunk_ends[-1]:
                return False  # past what was accepted: a pending DATA may explain it
            self._violate(
                t, "ack.offset", f"ACK {offset} is not the end of an accepted chunk", repr(msg)
            )
            return True
        k = m.chunk_ends.index(offset) + 1
        interval = self._interval()
        at_end = offset == m.session.size
        status_owed = any(x <= offset for x in owed)
        known = not m.interval_unknown and m.window is not None
        if k != interval and not at_end and not status_owed and known:
            self._violate(
                t,
                "ack.interval",
                f"ACK after {k} chunks; the ACK interval is max(1, window // 2) = {interval} "
                f"chunks (window {m.window})",
                repr(msg),
            )
        if offset in owed or ((k == interval or at_end) and status_owed):
            m.merged_acks.add(offset)  # two ACKs fell together: the twin may still come
        m.status_acks = [(x, since) for x, since in m.status_acks if x > offset]
        m.interval_unknown = False
        m.acked = offset
        self._inflight = [e for e in self._inflight if e > offset]
        del m.chunk_ends[:k]
        del m.chunk_times[:k]
        return True

    def _on_done(self, t: float, msg: p.MsgOtaDone) -> None:
        m = self._m
        s = m.session
        assert s is not None
        if msg.crc32 != s.crc:
            self._violate(
                t, "done.crc", f"DONE says CRC {msg.crc32:08x}, START said {s.crc:08x}", repr(msg)
            )
        elif not self._unsure and len(m.staged) == s.size and p.crc32(bytes(m.staged)) != s.crc:
            self._violate(
                t,
                "verify.outcome",
                f"DONE for bytes whose CRC-32 is {p.crc32(bytes(m.staged)):08x}, not START's "
                f"{s.crc:08x}: the device activates an image it was not sent",
                repr(msg),
            )
        self._check_final_ack(t, msg)
        m.state = p.OtaState.COMPLETE
        m.verify_start_t = None
        m.done_t = t
        self._activation = (s.size, s.crc)

    def _on_digest_mismatch(self, t: float, msg: p.MsgError) -> None:
        """Section 16.3: the staged flash's SHA-256 is not the manifest's (its CRC-32 may
        well be START's: a tampering behind the CRC), state ERROR."""
        m = self._m
        if msg.command != p.MsgType.CMD_OTA_FINISH:
            self._violate(t, "error.command", "DIGEST_MISMATCH must name CMD_OTA_FINISH", repr(msg))
        if self._signed is False:
            self._violate(t, "frame.fields", "DIGEST_MISMATCH from a v1 device", repr(msg))
        self._check_final_ack(t, msg)
        self._m = _Model(state=p.OtaState.ERROR, window=m.window)
        self._sent_end = 0

    def _on_verify_failed(self, t: float, msg: p.MsgError) -> None:
        m = self._m
        s = m.session
        assert s is not None
        if msg.command != p.MsgType.CMD_OTA_FINISH:
            self._violate(t, "error.command", "CRC_MISMATCH must name CMD_OTA_FINISH", repr(msg))
        if len(m.staged) == s.size and p.crc32(bytes(m.staged)) == s.crc:
            self._violate(
                t,
                "verify.outcome",
                "CRC_MISMATCH for bytes whose CRC-32 is START's: the device lost or damaged "
                "what it ACKed",
                repr(msg),
            )
        self._check_final_ack(t, msg)
        self._m = _Model(state=p.OtaState.ERROR, window=m.window)
        self._sent_end = 0

    def _check_final_ack(self, t: float, msg: p.DeviceMessage) -> None:
        m = self._m
        if m.chunk_ends:
            self._violate(
                t,
                "ack.interval",
                f"the verify's outcome before the ACK of the image's last byte (ACKed {m.acked})",
                repr(msg),
            )
            m.chunk_ends.clear()
            m.chunk_times.clear()


# --- helpers ----------------------------------------------------------------------------

_DEVICE_CLASSES = (
    p.MsgInfo,
    p.MsgOtaReady,
    p.MsgOtaProgress,
    p.MsgOtaStatus,
    p.MsgOtaAck,
    p.MsgOtaDone,
    p.MsgError,
)
_COMMAND_CLASSES = (
    p.CmdInfo,
    p.CmdOtaStart,
    p.CmdOtaData,
    p.CmdOtaStatus,
    p.CmdOtaAbort,
    p.CmdOtaFinish,
    p.CmdOtaManifest,
    p.CmdOtaConfirm,
)
#: Messages that follow work under way rather than answer a command.
_ASYNC = (p.MsgOtaProgress, p.MsgOtaReady, p.MsgOtaAck, p.MsgOtaDone)
_ASYNC_ERRORS = frozenset(
    {p.ErrorCode.CRC_MISMATCH, p.ErrorCode.FLASH_ERROR, p.ErrorCode.DIGEST_MISMATCH}
)
#: Signed updates (section 16): the two commands a v1 device does not know; what a signed-
#: only device may refuse a well-formed MANIFEST with (the device holds the keys, the
#: counter and the image state); what it may refuse a new session's START with.
_SIGNED_COMMANDS = frozenset({p.MsgType.CMD_OTA_MANIFEST, p.MsgType.CMD_OTA_CONFIRM})
_MANIFEST_REFUSALS = tuple(
    f"MSG_ERROR:{code.name}"
    for code in (
        p.ErrorCode.UNTRUSTED_KEY,
        p.ErrorCode.BAD_SIGNATURE,
        p.ErrorCode.DOWNGRADE,
        p.ErrorCode.BAD_STATE,
    )
)
_START_SIGNED_REFUSALS = ("MSG_ERROR:UNSIGNED", "MSG_ERROR:BAD_STATE")


def _pages(size: int) -> int:
    return math.ceil(size / PAGE_SIZE)


def _name(cmd: _Pending) -> str:
    try:
        return p.MsgType(cmd.type).name
    except ValueError:
        return f"type 0x{cmd.type:02X}"


def _describe(msg: p.Command | None, msg_type: int) -> str:
    if msg is None:
        return f"frame of type 0x{msg_type:02X} (unknown or too short)"
    return repr(msg)


def _status(msg: p.MsgOtaStatus) -> str:
    return (
        f"{msg.state_name} offset {msg.next_expected_offset} size {msg.image_size} "
        f"crc {msg.image_crc32:08x}"
    )


def _loose_reply(msg: p.Command | None) -> _Reply:
    """The reply's kind when the state is unknown: INFO and STATUS are always answered."""
    if isinstance(msg, p.CmdInfo):
        return _Reply(("MSG_INFO",))
    if isinstance(msg, p.CmdOtaStatus | p.CmdOtaAbort):
        return _Reply(("MSG_OTA_STATUS",))
    return _Reply(("MSG_OTA_READY", "MSG_ERROR", "MSG_OTA_STATUS"), optional=True)


def _loose_match(head: _Pending, msg: p.DeviceMessage) -> bool:
    """Whether ``msg`` can be the reply to ``head`` in some state."""
    if head.msg is None:
        return isinstance(msg, p.MsgError)
    if isinstance(head.msg, p.CmdInfo):
        return isinstance(msg, p.MsgInfo)
    if isinstance(head.msg, p.CmdOtaConfirm):
        return isinstance(msg, p.MsgInfo | p.MsgError)
    if isinstance(head.msg, p.CmdOtaStatus | p.CmdOtaAbort):
        return isinstance(msg, p.MsgOtaStatus)
    if isinstance(head.msg, p.CmdOtaStart):
        return isinstance(msg, p.MsgError | p.MsgOtaReady)
    return isinstance(msg, p.MsgError | p.MsgOtaStatus)


def _field_problem(msg: p.Message) -> str | None:
    """A device message field out of the range section 5 gives it."""
    if isinstance(msg, p.MsgOtaProgress):
        if msg.phase not in (p.OtaPhase.ERASE, p.OtaPhase.VERIFY):
            return f"PROGRESS phase {msg.phase}"
        if msg.done > msg.total:
            return f"PROGRESS done {msg.done} exceeds its total {msg.total}"
    if isinstance(msg, p.MsgOtaStatus) and msg.state not in {s.value for s in p.OtaState}:
        return f"STATUS state {msg.state}"
    if isinstance(msg, p.MsgError):
        if msg.code not in {c.value for c in p.ErrorCode}:
            return f"ERROR code {msg.code}"
        if len(msg.text.encode("utf-8", errors="replace")) > p.MAX_ERROR_TEXT:
            return f"ERROR text of more than {p.MAX_ERROR_TEXT} bytes"
    if isinstance(msg, p.MsgOtaReady) and (msg.max_chunk % p.WORD_SIZE or msg.max_chunk == 0):
        return f"READY max_chunk {msg.max_chunk} is not whole words"
    return None


def rules_documented(text: str) -> list[str]:
    """The rule ids ``text`` (docs/protocol.md) does not list: a test keeps them in step."""
    return [rule for rule in RULES if f"`{rule}`" not in text]

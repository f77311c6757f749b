"""What the monitor knows of one device and its link: the model, the commands in flight,
the two decoders, what a resynchronisation must judge, the images it may run; and the
bookkeeping every rule shares (the trace, a violation, becoming unsure, a reset)."""

from __future__ import annotations

import collections

from .. import contract
from ..contract import codec as p
from .model import DeviceModel, HeldSession, PendingCommand
from .rules import Violation

#: Radio delivery on top of the device's obligations: a few connection events each way
#: (hil_tests/conformance.py's RADIO_MARGIN_S). Real-time stages pass a larger one.
DEFAULT_MARGIN_S = 0.25
#: How many frames a violation shows from the trace before it.
TRACE_FRAMES = 20


class MonitorState:
    """Everything the rules read and change. The functions of the modules beside this one
    act on it, each given it as ``mon``: they are the monitor's rules, this its memory."""

    def __init__(self, name: str = "device", margin_s: float = DEFAULT_MARGIN_S) -> None:
        self.name = name
        self.margin_s = margin_s
        self.timing = contract.timing()
        self.violations: list[Violation] = []
        self.trace: collections.deque[str] = collections.deque(maxlen=TRACE_FRAMES)
        self.m = DeviceModel()
        self.pending: collections.deque[PendingCommand] = collections.deque()
        self.rx = p.FrameDecoder()  # the device's decoder, fed what the host wrote
        self.rx_last: float | None = None
        self.tx = p.FrameDecoder()  # the host's decoder, fed what the device notified
        self.tx_last: float | None = None
        self.connected = True
        #: The model does not know the device's state until a STATUS shows it.
        self.unsure = False
        #: The session the device held when the model became unsure (it must keep it).
        self.kept: HeldSession | None = None
        self.kept_state: p.OtaState | None = None
        self.kept_acked = 0
        self.kept_sent = 0
        #: Commands that may change the state, handled since the model became unsure.
        self.changed_since_unsure = False
        self.reset_since_unsure = False
        #: Highest in-order byte the host sent in this session (what an offset can reach).
        self.sent_end = 0
        #: Ends of the chunks the host sent beyond the last ACK it saw (its credit's count).
        self.inflight: list[int] = []
        self.reset_seen = False
        #: Images the device may run after a reset the monitor could not see happen.
        self.may_run: set[tuple[int, int]] = set()
        self.active: tuple[int, int] | None = None
        self.capacity: int | None = None
        #: The image the device must run after its next reset (DONE was sent).
        self.activation: tuple[int, int] | None = None
        self.no_reset = False
        self.slow_erase = False
        #: Damaged device frames the injected faults account for.
        self.damage_excused = 0
        #: The host sent a FINISH since its last START.
        self.finish_sent = False
        #: The image of the last START the host sent.
        self.last_start: tuple[int, int] | None = None
        #: The host went beyond its ACK credit: what the device took stays unknowable
        #: until a READY restarts the credit (a host that keeps to it is never refused).
        self.credit_blind = False
        #: A fault took frames of this connection: no resynchronisation until the next.
        self.fault_blind = False
        #: A reset happened on this link: what still arrives on it is the old life's.
        self.old_life = False
        #: The window of the last READY.
        self.window: int | None = None
        #: Whether the device advertises SIGNED_IMAGES (None: no INFO seen yet), and the
        #: image its last INFO showed in TEST state: a reset may revert from it (16.6).
        self.signed: bool | None = None
        self.in_test: tuple[int, int] | None = None
        self.before_test: tuple[int, int] | None = None
        #: The image the last activation replaced.
        self.replaced: tuple[int, int] | None = None
        #: The image the next INFO may still show: the bootloader refused PENDING (16.4).
        self.may_refuse: tuple[int, int] | None = None
        self.now = 0.0

    def log(self, t: float, who: str, text: str) -> None:
        self.trace.append(f"{t:10.3f}s {who} {text}")

    def violate(self, t: float, rule: str, what: str, frame: str) -> None:
        self.violations.append(
            Violation(
                rule, f"{self.name}: {what}", t, frame or "(none: a silence)", tuple(self.trace)
            )
        )

    def damaged(self, t: float, rule: str, what: str, frame: str) -> None:
        if self.damage_excused:
            self.damage_excused -= 1
            self.log(t, "*", f"{what}: an injected fault's doing")
            return
        self.violate(t, rule, what, frame)

    def become_unsure(self) -> None:
        m = self.m
        if not self.unsure:
            self.unsure = True
            self.kept = (
                m.session if m.state not in (None, p.OtaState.IDLE, p.OtaState.ERROR) else None
            )
            self.kept_state = m.state
            self.kept_acked = m.acked
            self.kept_sent = self.sent_end
            self.changed_since_unsure = any(
                not isinstance(c.msg, p.CmdInfo | p.CmdOtaStatus) for c in self.pending
            )
            self.reset_since_unsure = self.reset_seen
            self.reset_seen = False
        if self.finish_sent and self.last_start is not None:
            # A FINISH may have been handled and the image activated unseen.
            self.may_run.add(self.last_start)
        m.status_acks.clear()
        m.ready_owed = None
        m.chunk_ends.clear()
        m.chunk_times.clear()
        m.last_progress_t = None
        m.verify_start_t = None

    def reset(self, activation: bool) -> None:
        m = self.m
        if self.signed and self.in_test is not None and self.before_test is not None:
            # An image in TEST reverts at a reset unless it was confirmed (section 16.6):
            # the device must run the previous image again.
            self.active = self.before_test
            self.in_test = self.before_test = None
        self.may_refuse = None
        if activation and self.activation is not None and self.signed and self.active:
            # The bootloader verifies PENDING again and may refuse it (section 16.4): the
            # next INFO may show the old image (only the next).
            self.may_refuse = self.active
        if activation and self.activation is not None:
            self.replaced = self.active
            self.active = self.activation
        self.activation = None
        self.pending.clear()
        self.m = DeviceModel(window=m.window)
        self.sent_end = 0
        self.no_reset = False
        self.inflight = []
        self.reset_seen = True
        self.old_life = True
        if self.unsure:
            self.reset_since_unsure = True

    def interval(self) -> int:
        return max(1, (self.m.window or 1) // 2)

    def ack_owed_at(self) -> float | None:
        """When the chunk that makes an ACK owed was sent (None: none is owed)."""
        m = self.m
        if not m.chunk_ends:
            return None
        interval = self.interval()
        if len(m.chunk_ends) >= interval:
            return m.chunk_times[interval - 1]
        if m.session is not None and m.chunk_ends[-1] == m.session.size:
            return m.chunk_times[-1]
        return None

    def state_name(self) -> str:
        return "an unknown state" if self.m.state is None or self.unsure else self.m.state.name

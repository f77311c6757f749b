"""The contract monitor's face: :class:`ContractMonitor`, told what happened on one link (the
bytes both ways, the link coming and going, a reset, an injected fault) with a time each, and
the violations it found. The rules live in the modules beside it; this one only hands each
observation to them."""

from __future__ import annotations

from pytest_smartball.contract import codec as p

from .commands import on_command
from .matching import on_device_frame
from .rules import Violation
from .state import DEFAULT_MARGIN_S, MonitorState
from .timing import advance

#: Host-side gaps this close to the decoder's idle time (1 s, a 5 % clock error, and the
#: radio's delivery on either side) leave open whether the device discarded a partial frame.
IDLE_BAND_S = 0.25


class ContractMonitor:
    """Follows one device through its NUS traffic and collects contract violations."""

    def __init__(self, name: str = "device", margin_s: float = DEFAULT_MARGIN_S) -> None:
        self._state = MonitorState(name, margin_s)

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def margin_s(self) -> float:
        return self._state.margin_s

    @property
    def violations(self) -> list[Violation]:
        return self._state.violations

    @property
    def active(self) -> tuple[int, int] | None:
        """The image the device runs, as far as the monitor knows (size, CRC-32)."""
        return self._state.active

    # --- what the test tells the monitor --------------------------------------------------

    def observe_connect(self, t: float) -> None:
        w = self._state
        advance(w, t)
        w.connected = True
        w.old_life = False
        w.fault_blind = False
        w.credit_blind = False
        w.rx_last = w.tx_last = None
        w.log(t, "*", "connected")

    def observe_disconnect(self, t: float, by_host: bool = False) -> None:
        w = self._state
        advance(w, t)
        w.log(t, "*", "link closed by the host" if by_host else "link lost")
        w.connected = False
        w.rx.reset()
        w.tx.reset()
        m = w.m
        if (m.done_t is not None or w.activation is not None) and not w.no_reset:
            # The device ends the link after DONE to reset (section 9): the activation.
            w.reset(t, activation=True)
            return
        w.become_unsure()

    def observe_reset(self, t: float) -> None:
        """The device was reset (a power cut, a watchdog): its RAM is gone (section 7.7)."""
        w = self._state
        advance(w, t)
        w.log(t, "*", "device reset")
        w.reset(t, activation=w.m.state is p.OtaState.COMPLETE)

    def observe_fault(self, t: float, fault: str) -> None:
        """A fault a simulated link or device injected on purpose (smartball_sim's fault
        log names): the monitor forgets what it cannot know rather than cry wolf."""
        w = self._state
        w.log(t, "*", f"fault injected: {fault}")
        if fault in ("lose", "corrupt", "write-drop"):
            if fault != "write-drop":
                w.damage_excused += 1  # what reaches the host may be cut or damaged
            # Which frames of this connection the fault took is unknowable from here: the
            # model waits for the next connection's STATUS.
            w.fault_blind = True
            w.become_unsure()
        elif fault == "reboot":
            w.reset(t, activation=w.m.state is p.OtaState.COMPLETE)
        elif fault == "no-reset":
            w.no_reset = True
            w.activation = None
        elif fault == "slow-erase":
            w.slow_erase = True  # a slowed flash stays slow, across resets too

    def observe_host_bytes(self, t: float, data: bytes) -> None:
        w = self._state
        advance(w, t)
        if not data:
            return
        last, w.rx_last = w.rx_last, t
        if w.rx.buffered and last is not None:
            gap = t - last
            idle = w.timing.decoder_idle_s
            if gap >= idle + IDLE_BAND_S:
                w.rx.reset()
            elif gap > idle - IDLE_BAND_S:
                w.rx.reset()  # the device may or may not have kept it: unknowable
                w.log(t, "*", f"host bytes {gap:.3f}s after a partial frame: unsure")
                w.become_unsure()
        for frame in w.rx.feed(data):
            on_command(w, t, frame)

    def observe_device_bytes(self, t: float, data: bytes) -> None:
        w = self._state
        advance(w, t)
        if not data or w.old_life:
            return
        last, w.tx_last = w.tx_last, t
        if w.tx.buffered and last is not None and t - last >= w.timing.decoder_idle_s:
            w.damaged(t, "frame.garbage", "the device abandoned a frame halfway", "")
            w.tx.reset()
        before = (w.tx.stats.dropped_bytes, w.tx.stats.bad_crc, w.tx.stats.bad_length)
        frames = w.tx.feed(data)
        stats = w.tx.stats
        if stats.bad_length > before[2]:
            w.damaged(t, "frame.length", "a device frame announced > 512 bytes", data.hex(" "))
        elif stats.bad_crc > before[1]:
            w.damaged(t, "frame.crc", "a device frame with a bad CRC", data.hex(" "))
        elif stats.dropped_bytes > before[0]:
            w.damaged(t, "frame.garbage", "device bytes outside any frame", data.hex(" "))
        for frame in frames:
            on_device_frame(w, t, frame)

    def finish(self, t: float) -> list[Violation]:
        """The end of the observation: obligations due by ``t`` are judged."""
        w = self._state
        advance(w, t)
        return w.violations

    @property
    def now(self) -> float:
        """The time of the last thing observed."""
        return self._state.now

    @property
    def first(self) -> Violation | None:
        violations = self._state.violations
        return violations[0] if violations else None

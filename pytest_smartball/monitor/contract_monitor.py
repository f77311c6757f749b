"""The contract monitor's face: :class:`ContractMonitor`, told what happened on one link (the
bytes both ways, the link coming and going, a reset, an injected fault) with a time each, and
the violations it found. The rules live in the modules beside it; this one only hands each
observation to them."""

from __future__ import annotations

from ..contract import codec as p
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
    def violations(self) -> list[Violation]:
        return self._state.violations

    # --- what the test tells the monitor --------------------------------------------------

    def observe_connect(self, t: float) -> None:
        mon = self._state
        advance(mon, t)
        mon.connected = True
        mon.old_life = False
        mon.fault_blind = False
        mon.credit_blind = False
        mon.rx_last = mon.tx_last = None
        mon.log(t, "*", "connected")

    def observe_disconnect(self, t: float, by_host: bool = False) -> None:
        mon = self._state
        advance(mon, t)
        mon.log(t, "*", "link closed by the host" if by_host else "link lost")
        mon.connected = False
        mon.rx.reset()
        mon.tx.reset()
        m = mon.m
        if (m.done_t is not None or mon.activation is not None) and not mon.no_reset:
            # The device ends the link after DONE to reset (section 9): the activation.
            mon.reset(activation=True)
            return
        mon.become_unsure()

    def observe_reset(self, t: float) -> None:
        """The device was reset (a power cut, a watchdog): its RAM is gone (section 7.7)."""
        mon = self._state
        advance(mon, t)
        mon.log(t, "*", "device reset")
        mon.reset(activation=mon.m.state is p.OtaState.COMPLETE)

    def observe_fault(self, t: float, fault: str) -> None:
        """A fault a simulated link or device injected on purpose (smartball_sim's fault
        log names): the monitor forgets what it cannot know rather than cry wolf."""
        mon = self._state
        mon.log(t, "*", f"fault injected: {fault}")
        if fault in ("lose", "corrupt", "write-drop"):
            if fault != "write-drop":
                mon.damage_excused += 1  # what reaches the host may be cut or damaged
            # Which frames of this connection the fault took is unknowable from here: the
            # model waits for the next connection's STATUS.
            mon.fault_blind = True
            mon.become_unsure()
        elif fault == "reboot":
            mon.reset(activation=mon.m.state is p.OtaState.COMPLETE)
        elif fault == "no-reset":
            mon.no_reset = True
            mon.activation = None
        elif fault == "slow-erase":
            mon.slow_erase = True  # a slowed flash stays slow, across resets too

    def observe_host_bytes(self, t: float, data: bytes) -> None:
        mon = self._state
        advance(mon, t)
        if not data:
            return
        last, mon.rx_last = mon.rx_last, t
        if mon.rx.buffered and last is not None:
            gap = t - last
            idle = mon.timing.decoder_idle_s
            if gap >= idle + IDLE_BAND_S:
                mon.rx.reset()
            elif gap > idle - IDLE_BAND_S:
                mon.rx.reset()  # the device may or may not have kept it: unknowable
                mon.log(t, "*", f"host bytes {gap:.3f}s after a partial frame: unsure")
                mon.become_unsure()
        for frame in mon.rx.feed(data):
            on_command(mon, t, frame)

    def observe_device_bytes(self, t: float, data: bytes) -> None:
        mon = self._state
        advance(mon, t)
        if not data or mon.old_life:
            return
        last, mon.tx_last = mon.tx_last, t
        if mon.tx.buffered and last is not None and t - last >= mon.timing.decoder_idle_s:
            mon.damaged(t, "frame.garbage", "the device abandoned a frame halfway", "")
            mon.tx.reset()
        before = (mon.tx.stats.dropped_bytes, mon.tx.stats.bad_crc, mon.tx.stats.bad_length)
        frames = mon.tx.feed(data)
        stats = mon.tx.stats
        if stats.bad_length > before[2]:
            mon.damaged(t, "frame.length", "a device frame announced > 512 bytes", data.hex(" "))
        elif stats.bad_crc > before[1]:
            mon.damaged(t, "frame.crc", "a device frame with a bad CRC", data.hex(" "))
        elif stats.dropped_bytes > before[0]:
            mon.damaged(t, "frame.garbage", "device bytes outside any frame", data.hex(" "))
        for frame in frames:
            on_device_frame(mon, t, frame)

    def finish(self, t: float) -> list[Violation]:
        """The end of the observation: obligations due by ``t`` are judged."""
        mon = self._state
        advance(mon, t)
        return mon.violations

    @property
    def now(self) -> float:
        """The time of the last thing observed."""
        return self._state.now

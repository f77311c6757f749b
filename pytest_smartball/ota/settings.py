"""How an update runs (:class:`OtaSettings`): the link's settings, the waits, and the
budgets and choices of :class:`~.record.Limits`, each held once. Plain data: importing it
loads neither bleak nor the link's I/O."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from ..contract import codec as p
from ..link.settings import LinkSettings
from .record import Limits
from .timeouts import DEFAULT as DEFAULT_TIMEOUTS

#: A health check of the new image running on trial (signed-only devices): called with the
#: device's INFO (it runs the new image, image state TEST) while the engine holds no link
#: to it, so the check may connect to the device itself. True: healthy, confirm it; False
#: or an exception (:class:`HealthCheckFailed` says why): leave it unconfirmed.
HealthCheck = Callable[[p.MsgInfo], Awaitable[bool]]


class HealthCheckFailed(Exception):
    """A health check's "no", with the reason (one phrase) the update's sentence quotes."""


@dataclass(frozen=True, slots=True)
class OtaSettings:
    """How an update runs. The timeouts' defaults follow the device's timing obligations
    with a stated margin (:mod:`.timeouts`); the budgets (recoveries, resets, ACK
    timeouts, rewinds, backoff) and the choices (progressive erase, confirm) are
    :attr:`limits`, the one place they are set."""

    link: LinkSettings = field(default_factory=LinkSettings)
    #: The budgets and choices; ``stabilise`` and ``health_check`` in it follow
    #: :attr:`stabilise_s` and :attr:`health_check` (see :meth:`record_limits`).
    limits: Limits = field(default_factory=Limits)
    #: A pause after READY before the first DATA. READY means "send at full rate now"
    #: (P17), so none by default; kept for firmware that breaks that promise.
    stabilise_s: float = 0.0
    #: Longest silence while waiting for READY; MSG_OTA_PROGRESS counts as a sign of life.
    erase_silence_timeout_s: float = DEFAULT_TIMEOUTS.erase_silence_s
    #: Longest wait for an ACK with chunks in flight before asking for STATUS.
    ack_timeout_s: float = DEFAULT_TIMEOUTS.ack_s
    #: The same wait after the device refused DATA (see ``Timeouts.refusal_probe_s``).
    refusal_probe_s: float = DEFAULT_TIMEOUTS.refusal_probe_s
    #: Reply to a command such as INFO, STATUS or ABORT.
    reply_timeout_s: float = DEFAULT_TIMEOUTS.reply_s
    #: From FINISH to DONE (the device reads the whole image back for its CRC).
    verify_timeout_s: float = DEFAULT_TIMEOUTS.verify_s
    #: From DONE to the link dropping for the reset.
    reset_timeout_s: float = DEFAULT_TIMEOUTS.reset_s
    #: How long a vanished device (reset, advertising pause) is waited for.
    reappear_timeout_s: float = DEFAULT_TIMEOUTS.reappear_s
    #: Forget the device in the Bluetooth stack first (BlueZ: Adapter1.RemoveDevice, what
    #: ``bluetoothctl remove`` does), so no stale GATT cache is used.
    clear_cache: bool = False
    #: Proposed in CMD_OTA_START; the link's write size caps it further.
    chunk_size: int = p.MAX_DATA_CHUNK
    #: Signed-only devices: checked before the confirm (see :data:`HealthCheck`).
    health_check: HealthCheck | None = None
    #: A health check still running after this long fails.
    health_check_timeout_s: float = 60.0

    def record_limits(self) -> Limits:
        """The limits the update's record runs with: :attr:`limits`, with its two choices
        that follow a setting here (a pause after READY, a health check) taken from it."""
        return replace(
            self.limits, stabilise=self.stabilise_s > 0, health_check=self.health_check is not None
        )

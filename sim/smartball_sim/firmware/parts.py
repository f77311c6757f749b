"""What the parts of :class:`~smartball_sim.firmware.model.SmartBallFirmware` share: its
state, and the steps one part calls in another, declared once for the type checker. The
parts are ``model.py`` (receiving, commands, the reset guard), ``erase.py`` (erasing),
``data.py`` (DATA) and ``activation.py`` (FINISH, verify, activation).
Nothing here runs: the declarations exist only for the type checker."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_smartball.contract import codec as p

from .bugs import FirmwareBug as Bug
from .erase import Eraser
from .flash import Flash
from .flash_controller import FlashController
from .types import FirmwareEvent, FlashTimings, OtaSession, _PendingRecord


class FirmwareParts:
    """The state every part of the firmware reads (set in ``SmartBallFirmware.__init__``)."""

    state: p.OtaState
    session: OtaSession | None
    timings: FlashTimings
    bugs: frozenset[Bug]
    flash: Flash
    data_rejected_behind: int
    data_rejected_ahead: int
    data_dropped_full: int
    _observe: Callable[[FirmwareEvent], None]
    _request_reset: Callable[[], None]
    _when_sent: Callable[[Callable[[], None]], None]
    _pending: _PendingRecord | None
    persist_fail_next: bool
    flash_controller: FlashController
    eraser: Eraser

    if TYPE_CHECKING:
        # model.py
        def status(self) -> p.MsgOtaStatus: ...
        def info(self) -> p.MsgInfo: ...
        def rx_buffer_chunks(self, s: OtaSession) -> int: ...
        def ack_interval(self, s: OtaSession) -> int: ...
        def _guarded(self, action: Callable[..., None], *args: Any) -> Callable[[], None]: ...
        def _call_out(self, callback: Callable[..., None], *args: Any) -> None: ...
        def _at(self, when_us: int, action: Callable[..., None], *args: Any) -> None: ...
        def _now_us(self) -> int: ...
        def _handle_inbox(self) -> None: ...
        def _end_session(self, state: p.OtaState) -> None: ...
        def _reply(self, msg: p.DeviceMessage) -> None: ...
        def _error(self, code: p.ErrorCode, command: int | None = None, **details: Any) -> None: ...

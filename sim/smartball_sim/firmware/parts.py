"""What the two parts of :class:`~smartball_sim.firmware.model.SmartBallFirmware` that are
still mixins (``data.py``'s DATA and ``signed.py``'s signed updates) read of the firmware,
declared once for the type checker (the eraser, the activation and the flash controller
are collaborators with owner protocols of their own). Nothing here runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_smartball.contract import codec as p

from .bugs import FirmwareBug as Bug
from .erase import Eraser
from .flash_controller import FlashController
from .types import FirmwareEvent, OtaSession


class FirmwareParts:
    """The state every part of the firmware reads (set in ``SmartBallFirmware.__init__``)."""

    state: p.OtaState
    session: OtaSession | None
    bugs: frozenset[Bug]
    data_rejected_behind: int
    data_rejected_ahead: int
    data_dropped_full: int
    _observe: Callable[[FirmwareEvent], None]
    flash_controller: FlashController
    eraser: Eraser

    if TYPE_CHECKING:
        # model.py
        def status(self) -> p.MsgOtaStatus: ...
        def info(self) -> p.MsgInfo: ...
        def rx_buffer_chunks(self, s: OtaSession) -> int: ...
        def ack_interval(self, s: OtaSession) -> int: ...
        def _call_out(self, callback: Callable[..., None], *args: Any) -> None: ...
        def _end_session(self, state: p.OtaState) -> None: ...
        def _reply(self, msg: p.DeviceMessage) -> None: ...
        def _error(self, code: p.ErrorCode, command: int | None = None, **details: Any) -> None: ...

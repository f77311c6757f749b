"""What the OTA engine can see: the observations :func:`~.decide.decide` takes.

Each is what the device said (a reply, an ACK, an error) or what happened to the link,
as plain data; the engine makes them, the decision function reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import codec as p


@dataclass(frozen=True, slots=True)
class Found:
    """The scan found the device (or it was given)."""


@dataclass(frozen=True, slots=True)
class NotFound:
    why: str


@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """The link dropped, a connect failed, or an awaited reply never came."""

    why: str


@dataclass(frozen=True, slots=True)
class InfoReply:
    info: p.MsgInfo
    #: Why the image does not fit the device's staging area (one sentence), or None.
    too_large: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReply:
    status: p.MsgOtaStatus


@dataclass(frozen=True, slots=True)
class AbortReply:
    status: p.MsgOtaStatus


@dataclass(frozen=True, slots=True)
class ManifestAccepted:
    """The device answered CMD_OTA_MANIFEST with MSG_OTA_STATUS: it holds the manifest."""

    status: p.MsgOtaStatus


@dataclass(frozen=True, slots=True)
class HealthChecked:
    """The health check's verdict on the new image running on trial."""

    healthy: bool
    #: Why it failed (one phrase), or what it said.
    why: str = ""


@dataclass(frozen=True, slots=True)
class ConfirmReply:
    """The device's MSG_INFO answer to CMD_OTA_CONFIRM."""

    info: p.MsgInfo


@dataclass(frozen=True, slots=True)
class StartSent:
    flags: int


@dataclass(frozen=True, slots=True)
class EraseProgress:
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class Ready:
    ready: p.MsgOtaReady


@dataclass(frozen=True, slots=True)
class Stabilised:
    pass


@dataclass(frozen=True, slots=True)
class Acked:
    """An ACK that moved the device's acknowledged offset forward."""

    offset: int


@dataclass(frozen=True, slots=True)
class AckTimeout:
    """No ACK moved forward for ``waited_s`` with chunks in flight."""

    in_flight: int  # bytes sent and not acknowledged
    waited_s: float


@dataclass(frozen=True, slots=True)
class Rewound:
    """STATUS during the transfer, state RECEIVING: the device expects ``offset`` next."""

    offset: int
    #: How far back the host's send position moved (0: it was there already).
    back: int
    #: Unsolicited: the device refused DATA (a gap, or no room); else asked for.
    refused: bool


@dataclass(frozen=True, slots=True)
class Desync:
    """STATUS during the transfer in a state other than RECEIVING."""

    status: p.MsgOtaStatus


@dataclass(frozen=True, slots=True)
class AllAcked:
    """The device has every byte (its ACK, or its STATUS, said so)."""


@dataclass(frozen=True, slots=True)
class FinishSent:
    pass


@dataclass(frozen=True, slots=True)
class Done:
    crc32: int


@dataclass(frozen=True, slots=True)
class DeviceError:
    """MSG_ERROR while ``awaiting`` a reply to that command (START, DATA or FINISH)."""

    error: p.MsgError
    awaiting: p.MsgType


@dataclass(frozen=True, slots=True)
class DeviceReset:
    """The link dropped while waiting for the promised reset."""


@dataclass(frozen=True, slots=True)
class ResetNotSeen:
    waited_s: float


@dataclass(frozen=True, slots=True)
class FailedLinkClosed:
    """RECOVERING: the failed link is closed; what next?"""


@dataclass(frozen=True, slots=True)
class BackedOff:
    pass


Observation = (
    Found
    | NotFound
    | Connected
    | LinkFailed
    | InfoReply
    | StatusReply
    | AbortReply
    | ManifestAccepted
    | HealthChecked
    | ConfirmReply
    | StartSent
    | EraseProgress
    | Ready
    | Stabilised
    | Acked
    | AckTimeout
    | Rewound
    | Desync
    | AllAcked
    | FinishSent
    | Done
    | DeviceError
    | DeviceReset
    | ResetNotSeen
    | FailedLinkClosed
    | BackedOff
)

"""The device as the monitor models it (section 7: its session, offsets, window, rate
limits, erase progress), the commands it received and has not visibly handled yet, what each
must be answered with; and the message vocabulary the rules speak in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import contract
from ..contract import codec as p

PAGE_SIZE = contract.flash_layout().page_size


@dataclass(slots=True)
class PendingCommand:
    """A command the device received and has not visibly handled yet."""

    t: float
    type: int
    msg: p.Command | None  # None: unknown type or too short (an ERROR answers it)
    error: p.ErrorCode | None = None
    #: DATA the host sent beyond its ACK credit: the device may find its buffer full.
    beyond_credit: bool = False


@dataclass(slots=True)
class ExpectedReply:
    """What the device must answer to a command in the state it is handled in."""

    #: Message tokens (contract.message_token) any one of which is the reply; () none.
    tokens: tuple[str, ...]
    #: The reply may be left out (a rate limit whose count the monitor cannot know).
    optional: bool = False


@dataclass(slots=True)
class HeldSession:
    size: int
    crc: int
    chunk_size: int
    #: The erase mode (None: asked for, and no INFO said whether the device can).
    progressive: bool | None


@dataclass(slots=True)
class DeviceModel:
    state: p.OtaState | None = p.OtaState.IDLE
    session: HeldSession | None = None
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


DEVICE_CLASSES = (
    p.MsgInfo,
    p.MsgOtaReady,
    p.MsgOtaProgress,
    p.MsgOtaStatus,
    p.MsgOtaAck,
    p.MsgOtaDone,
    p.MsgError,
)
COMMAND_CLASSES = (
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
ASYNC = (p.MsgOtaProgress, p.MsgOtaReady, p.MsgOtaAck, p.MsgOtaDone)
ASYNC_ERRORS = frozenset(
    {p.ErrorCode.CRC_MISMATCH, p.ErrorCode.FLASH_ERROR, p.ErrorCode.DIGEST_MISMATCH}
)


def page_count(size: int) -> int:
    return math.ceil(size / PAGE_SIZE)


def command_name(cmd: PendingCommand) -> str:
    try:
        return p.MsgType(cmd.type).name
    except ValueError:
        return f"type 0x{cmd.type:02X}"


def describe(msg: p.Command | None, msg_type: int) -> str:
    if msg is None:
        return f"frame of type 0x{msg_type:02X} (unknown or too short)"
    return repr(msg)


def status_text(msg: p.MsgOtaStatus) -> str:
    return (
        f"{msg.state_name} offset {msg.next_expected_offset} size {msg.image_size} "
        f"crc {msg.image_crc32:08x}"
    )

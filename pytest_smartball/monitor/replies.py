"""What the device must answer a command with in the state it handles it in
(command_state.json, sections 7.2, 7.4 and 16): the reply table as pure functions of the
monitor's state; and, while the state is unknown, the reply's kind only."""

from __future__ import annotations

from .. import contract
from ..contract import codec as p
from ..contract.manifest import Manifest, ManifestError
from .model import ExpectedReply, PendingCommand
from .state import MonitorState

#: Signed updates (section 16): the two commands a v1 device does not know; what a signed-
#: only device may refuse a well-formed MANIFEST with (the device holds the keys, the
#: counter and the image state); what it may refuse a new session's START with.
SIGNED_COMMANDS = frozenset({p.MsgType.CMD_OTA_MANIFEST, p.MsgType.CMD_OTA_CONFIRM})
MANIFEST_REFUSALS = tuple(
    f"MSG_ERROR:{code.name}"
    for code in (
        p.ErrorCode.UNTRUSTED_KEY,
        p.ErrorCode.BAD_SIGNATURE,
        p.ErrorCode.DOWNGRADE,
        p.ErrorCode.BAD_STATE,
    )
)
START_SIGNED_REFUSALS = ("MSG_ERROR:UNSIGNED", "MSG_ERROR:BAD_STATE")


def reply_to(mon: MonitorState, cmd: PendingCommand) -> ExpectedReply:
    """What the device must answer ``cmd`` with in the model's state now."""
    m = mon.m
    state = m.state
    if cmd.error is not None:
        if cmd.type in SIGNED_COMMANDS and mon.signed is not True:
            # a device without SIGNED_IMAGES does not know the type (section 6)
            unknown = f"MSG_ERROR:{p.ErrorCode.UNKNOWN_COMMAND.name}"
            if mon.signed is False:
                return ExpectedReply((unknown,))
            return ExpectedReply((f"MSG_ERROR:{cmd.error.name}", unknown))
        return ExpectedReply((f"MSG_ERROR:{cmd.error.name}",))
    msg = cmd.msg
    if isinstance(msg, p.CmdOtaManifest | p.CmdOtaConfirm):
        return signed_reply(mon, msg, state)
    if mon.unsure or state is None:
        return loose_reply(msg)
    if isinstance(msg, p.CmdInfo):
        return ExpectedReply(("MSG_INFO",))
    if isinstance(msg, p.CmdOtaStatus | p.CmdOtaAbort):
        return ExpectedReply(("MSG_OTA_STATUS",))
    if isinstance(msg, p.CmdOtaStart):
        tokens = start_reply(mon, msg)
        if not tokens and state in (p.OtaState.IDLE, p.OtaState.ERROR) and mon.signed:
            # A signed-only device refuses a new session without an accepted manifest
            # for its image, or while its image is in TEST (section 16.2).
            return ExpectedReply(START_SIGNED_REFUSALS, optional=True)
        return ExpectedReply(tokens)
    if isinstance(msg, p.CmdOtaFinish):
        if state is p.OtaState.RECEIVING and m.session and m.next_offset == m.session.size:
            return ExpectedReply(())
        return ExpectedReply(("MSG_ERROR:BAD_STATE",))
    assert isinstance(msg, p.CmdOtaData)
    if state is p.OtaState.ERASING:
        n = m.erasing_data + 1
        if m.window is None:
            return ExpectedReply(("MSG_ERROR:BAD_STATE",), optional=n > 1)
        return ExpectedReply(("MSG_ERROR:BAD_STATE",) if (n - 1) % m.window == 0 else ())
    if state is not p.OtaState.RECEIVING or m.session is None:
        return ExpectedReply(("MSG_ERROR:BAD_STATE",))
    tokens = data_reply(mon, msg)
    if cmd.beyond_credit and tokens in ((), ("MSG_OTA_STATUS",)):
        # Its buffer may be full, and whether a refusal is answered then depends on
        # what the device wrote meanwhile: either way is the contract's.
        return ExpectedReply(("MSG_OTA_STATUS",), optional=True)
    return ExpectedReply(tokens)


def signed_reply(mon: MonitorState, msg: p.Command, state: p.OtaState | None) -> ExpectedReply:
    """MANIFEST and CONFIRM (section 16): UNKNOWN_COMMAND on a v1 device; on a signed-
    only one CONFIRM is answered with INFO in every state, MANIFEST with STATUS or the
    refusal of its first failing check (the ones the monitor can judge without the
    device's keys are judged), BAD_STATE with a session."""
    unknown = f"MSG_ERROR:{p.ErrorCode.UNKNOWN_COMMAND.name}"
    if mon.signed is False:
        return ExpectedReply((unknown,))
    maybe_v1 = (unknown,) if mon.signed is None else ()
    if isinstance(msg, p.CmdOtaConfirm):
        return ExpectedReply(("MSG_INFO", *maybe_v1))
    assert isinstance(msg, p.CmdOtaManifest)
    if mon.unsure or state is None:
        return ExpectedReply(("MSG_OTA_STATUS", *MANIFEST_REFUSALS, *maybe_v1))
    if state not in (p.OtaState.IDLE, p.OtaState.ERROR):
        return ExpectedReply(("MSG_ERROR:BAD_STATE", *maybe_v1))
    try:
        manifest = Manifest.decode(msg.manifest)
    except ManifestError:
        return ExpectedReply(("MSG_ERROR:BAD_MANIFEST", *maybe_v1))
    if manifest.image_size == 0:
        return ExpectedReply(("MSG_ERROR:BAD_PARAM", *maybe_v1))
    if mon.capacity is not None and manifest.image_size > mon.capacity:
        return ExpectedReply(("MSG_ERROR:TOO_LARGE", *maybe_v1))
    # the key, the signature, the counter and the image state are the device's to judge
    return ExpectedReply(("MSG_OTA_STATUS", *MANIFEST_REFUSALS, *maybe_v1))


def start_reply(mon: MonitorState, msg: p.CmdOtaStart) -> tuple[str, ...]:
    m = mon.m
    state = m.state
    if msg.image_size == 0 or msg.chunk_size < p.MIN_CHUNK_SIZE:
        return ("MSG_ERROR:BAD_PARAM",)
    if mon.capacity is not None and msg.image_size > mon.capacity:
        return ("MSG_ERROR:TOO_LARGE",)
    if state is p.OtaState.COMPLETE:
        return ("MSG_ERROR:BAD_STATE",)
    if state in (p.OtaState.ERASING, p.OtaState.RECEIVING, p.OtaState.VERIFYING):
        s = m.session
        if s is None or (s.size, s.crc) != (msg.image_size, msg.image_crc32):
            return ("MSG_ERROR:BAD_STATE",)
        return ("MSG_OTA_READY",) if state is p.OtaState.RECEIVING else ()
    return ()  # a new session (its READY, at once when progressive, is work under way)


def data_reply(mon: MonitorState, msg: p.CmdOtaData) -> tuple[str, ...]:
    m = mon.m
    s = m.session
    assert s is not None
    size = len(msg.data)
    if size == 0 or (m.max_chunk is not None and size > m.max_chunk):
        return ("MSG_ERROR:BAD_PARAM",)
    if msg.offset != m.next_offset:
        return rejected_reply(mon)
    if msg.offset + size > s.size:
        return ("MSG_ERROR:BAD_OFFSET",)
    if size % p.WORD_SIZE and msg.offset + size != s.size:
        return ("MSG_ERROR:BAD_PARAM",)
    return ()


def rejected_reply(mon: MonitorState) -> tuple[str, ...]:
    m = mon.m
    n = m.rejected + 1
    window = m.window or 1
    return ("MSG_OTA_STATUS",) if (n - 1) % window == 0 else ()


def may_answer(head: PendingCommand, msg: p.DeviceMessage, reply: ExpectedReply) -> bool:
    """Whether ``msg`` is ``head``'s reply; a refused chunk's STATUS shows the offset
    the device still expects, so one showing more answers something later."""
    if contract.message_token(msg) not in reply.tokens:
        return False
    if isinstance(head.msg, p.CmdOtaData) and isinstance(msg, p.MsgOtaStatus):
        return msg.next_expected_offset <= head.msg.offset
    return True


def loose_reply(msg: p.Command | None) -> ExpectedReply:
    """The reply's kind when the state is unknown: INFO and STATUS are always answered."""
    if isinstance(msg, p.CmdInfo):
        return ExpectedReply(("MSG_INFO",))
    if isinstance(msg, p.CmdOtaStatus | p.CmdOtaAbort):
        return ExpectedReply(("MSG_OTA_STATUS",))
    return ExpectedReply(("MSG_OTA_READY", "MSG_ERROR", "MSG_OTA_STATUS"), optional=True)


def loose_match(head: PendingCommand, msg: p.DeviceMessage) -> bool:
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

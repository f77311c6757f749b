"""Device -> host: each frame decoded and checked, then matched with the command it
answers (in the order the device handles them, section 7.2) or the work under way it
follows; what neither explains is a violation."""

from __future__ import annotations

from .. import contract
from ..contract import codec as p
from .commands import apply
from .model import (
    ASYNC,
    ASYNC_ERRORS,
    COMMAND_CLASSES,
    ExpectedReply,
    PendingCommand,
    command_name,
    describe,
)
from .replies import loose_match, may_answer, reply_to
from .shown import after_reply, check_reply, resync
from .state import MonitorState
from .work import explains_async


def on_device_frame(mon: MonitorState, t: float, frame: p.Frame) -> None:
    try:
        msg = p.parse_message(frame)
    except p.ProtocolError as exc:
        mon.log(t, "<", f"type 0x{frame.type:02X} {frame.payload.hex(' ')}")
        rule = "frame.type" if "unknown" in str(exc) else "frame.fields"
        mon.violate(t, rule, str(exc), f"type 0x{frame.type:02X} {frame.payload.hex(' ')}")
        return
    mon.log(t, "<", repr(msg))
    if frame.type in p.COMMAND_TYPES:
        mon.violate(t, "frame.type", "the device sent a host command", repr(msg))
        return
    problem = field_problem(msg)
    if problem:
        mon.violate(t, "frame.fields", problem, repr(msg))
        return
    assert not isinstance(msg, COMMAND_CLASSES)
    on_device_message(mon, t, msg)


def on_device_message(mon: MonitorState, t: float, msg: p.DeviceMessage) -> None:
    if mon.unsure:
        on_message_unsure(mon, t, msg)
        return
    changes_state = message_changes_state(mon, msg)
    for _ in range(len(mon.pending) + 1):
        if mon.unsure:  # a command just handled made the state unknowable
            on_message_unsure(mon, t, msg)
            return
        if explains_async(mon, t, msg):
            if changes_state and any(
                not isinstance(c.msg, p.CmdInfo | p.CmdOtaStatus) for c in mon.pending
            ):
                # Work under way ended while commands were on their way: whether the
                # device handled them before or after is unknowable from here.
                mon.log(t, "*", "commands in flight as the state changed: unsure")
                mon.become_unsure()
            return
        if not mon.pending:
            break
        head = mon.pending[0]
        reply = reply_to(mon, head)
        token = contract.message_token(msg)
        if refused_in_credit(mon, head, reply, msg):
            mon.pending.popleft()
            mon.violate(
                t,
                "buffer.overflow",
                f"{describe(head.msg, head.type)} within the host's ACK credit was "
                "refused: the receive buffer must hold the window READY granted",
                repr(msg),
            )
            apply(mon, head, msg)
            return
        if not reply.tokens or (reply.optional and not may_answer(head, msg, reply)):
            mon.pending.popleft()
            apply(mon, head)
            continue
        if token in reply.tokens or mon.unsure:
            if mon.unsure and token not in reply.tokens and not loose_match(head, msg):
                break
            mon.pending.popleft()
            check_reply(mon, t, head, msg)
            apply(mon, head, msg)
            after_reply(mon, t, head, msg)
            return
        if isinstance(msg, ASYNC):
            break  # work under way cannot speak while this command waits: unexplained
        mon.pending.popleft()
        mon.violate(
            t,
            "reply.wrong",
            f"{command_name(head)} in {mon.state_name()} must be answered with "
            f"{' or '.join(reply.tokens)}, not {token}",
            repr(msg),
        )
        apply(mon, head)
        return
    rule = "reply.unexpected"
    m = mon.m
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
    mon.violate(
        t,
        rule,
        f"{contract.message_token(msg)} in {mon.state_name()} answers no command and "
        "no work under way explains it",
        repr(msg),
    )


def on_message_unsure(mon: MonitorState, t: float, msg: p.DeviceMessage) -> None:
    """While the state is unknown: pair replies with their commands by kind only, and
    take the state from the first STATUS."""
    if explains_async(mon, t, msg):
        return
    for i, cmd in enumerate(mon.pending):
        if loose_match(cmd, msg):
            for _ in range(i):
                apply(mon, mon.pending.popleft())
            head = mon.pending.popleft()
            check_reply(mon, t, head, msg)
            apply(mon, head, msg)
            after_reply(mon, t, head, msg)
            return
    if isinstance(msg, p.MsgOtaStatus):
        resync(mon, t, msg, None)


def refused_in_credit(
    mon: MonitorState, head: PendingCommand, reply: ExpectedReply, msg: p.DeviceMessage
) -> bool:
    """A STATUS showing that an in-order chunk the device had to accept was dropped."""
    return (
        not mon.unsure
        and not reply.tokens
        and not head.beyond_credit
        and isinstance(head.msg, p.CmdOtaData)
        and isinstance(msg, p.MsgOtaStatus)
        and mon.m.state is p.OtaState.RECEIVING
        and head.msg.offset == mon.m.next_offset
        and msg.next_expected_offset == head.msg.offset
        and msg.state == p.OtaState.RECEIVING
    )


def message_changes_state(mon: MonitorState, msg: p.DeviceMessage) -> bool:
    state = mon.m.state
    if isinstance(msg, p.MsgOtaReady):
        return state is p.OtaState.ERASING
    if isinstance(msg, p.MsgOtaDone):
        return True
    return isinstance(msg, p.MsgError) and msg.code in ASYNC_ERRORS


def field_problem(msg: p.Message) -> str | None:
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

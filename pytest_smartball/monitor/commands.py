"""Host -> device: each command the device received, queued until it is handled, and its
effect on the modelled state once it is (section 7)."""

from __future__ import annotations

from ..contract import codec as p
from .model import DEVICE_CLASSES, DeviceModel, HeldSession, PendingCommand, describe
from .replies import data_reply, start_reply
from .state import MonitorState


def on_command(mon: MonitorState, t: float, frame: p.Frame) -> None:
    msg: p.Command | None = None
    error: p.ErrorCode | None = None
    if frame.type not in p.COMMAND_TYPES:
        error = p.ErrorCode.UNKNOWN_COMMAND
    else:
        try:
            parsed = p.parse_message(frame)
        except p.ProtocolError:
            error = p.ErrorCode.BAD_FRAME
        else:
            assert not isinstance(parsed, DEVICE_CLASSES)
            msg = parsed
    if isinstance(msg, p.CmdOtaStart):
        mon.last_start = (msg.image_size, msg.image_crc32)
        mon.finish_sent = False
    elif isinstance(msg, p.CmdOtaFinish):
        mon.finish_sent = True
        if mon.unsure and mon.last_start is not None:
            mon.may_run.add(mon.last_start)
    pending = PendingCommand(t, frame.type, msg, error)
    mon.log(t, ">", describe(msg, frame.type))
    if isinstance(msg, p.CmdOtaData) and mon.m.session is not None:
        end = msg.offset + len(msg.data)
        if msg.offset <= mon.sent_end < end:
            mon.sent_end = end
        window = mon.m.window
        if window is not None and msg.offset >= mon.m.acked:
            mon.inflight = [e for e in mon.inflight if e > mon.m.acked] + [end]
            pending.beyond_credit = len(mon.inflight) > window
    mon.pending.append(pending)


def apply(mon: MonitorState, cmd: PendingCommand, replied: p.DeviceMessage | None = None) -> None:
    """The command's effect on the device's state (section 7); ``replied``: its reply."""
    m = mon.m
    msg = cmd.msg
    if cmd.error is not None or msg is None or isinstance(msg, p.CmdInfo):
        return
    if mon.unsure or m.state is None:
        if not isinstance(msg, p.CmdOtaStatus):
            mon.changed_since_unsure = True
        return
    if isinstance(msg, p.CmdOtaStatus):
        if m.state is p.OtaState.RECEIVING:
            m.status_acks.append((m.next_offset, cmd.t))
        return
    if isinstance(msg, p.CmdOtaAbort):
        if m.state is not p.OtaState.COMPLETE:
            mon.m = DeviceModel(window=m.window)
            mon.sent_end = 0
        return
    if isinstance(msg, p.CmdOtaManifest | p.CmdOtaConfirm):
        return  # nothing in the OTA state changes (section 16.1, 16.5)
    if isinstance(msg, p.CmdOtaStart):
        if isinstance(replied, p.MsgError):
            return  # refused (section 16.2: UNSIGNED, or BAD_STATE in TEST)
        apply_start(mon, cmd.t, msg)
        return
    if isinstance(msg, p.CmdOtaFinish):
        if start_finish_ok(mon):
            m.state = p.OtaState.VERIFYING
            m.verify_start_t = cmd.t
        return
    assert isinstance(msg, p.CmdOtaData)
    if cmd.beyond_credit and m.state is p.OtaState.RECEIVING:
        # Beyond its credit the host may find the buffer full or not, as the flash
        # drains it: what the device took is unknowable until a STATUS says.
        if not mon.credit_blind:
            mon.log(cmd.t, "*", "host beyond its ACK credit: unsure until its next READY")
        mon.credit_blind = True
        mon.become_unsure()
        mon.changed_since_unsure = True
        return
    if isinstance(replied, p.MsgOtaStatus) and m.state is p.OtaState.RECEIVING:
        m.rejected += 1  # refused (a full buffer, or not the expected offset)
        return
    apply_data(mon, cmd.t, msg)


def start_finish_ok(mon: MonitorState) -> bool:
    m = mon.m
    return (
        m.state is p.OtaState.RECEIVING
        and m.session is not None
        and m.next_offset == m.session.size
    )


def apply_start(mon: MonitorState, t: float, msg: p.CmdOtaStart) -> None:
    mon.reset_seen = False  # a reset before this START is history
    m = mon.m
    if start_reply(mon, msg) and start_reply(mon, msg) != ("MSG_OTA_READY",):
        return  # refused
    if m.state in (p.OtaState.ERASING, p.OtaState.RECEIVING, p.OtaState.VERIFYING):
        assert m.session is not None
        m.session.chunk_size = msg.chunk_size
        m.erasing_data = 0  # "the first DATA since the START": a resume's too (7.4)
        if m.state is p.OtaState.RECEIVING:
            m.rejected = 0
            m.chunk_ends.clear()
            m.chunk_times.clear()
        return
    # A new session. Progressive only if asked for; whether the device advertises the
    # capability the monitor knows only from INFO, so the READY decides below.
    asked = bool(msg.flags & p.StartFlag.PROGRESSIVE_ERASE)
    progressive: bool | None = False
    if asked:  # the device's first message tells (a capability may be switched on late)
        progressive = None
    window = m.window
    mon.m = m = DeviceModel(window=window)
    m.session = HeldSession(msg.image_size, msg.image_crc32, msg.chunk_size, progressive)
    m.state = p.OtaState.ERASING
    m.last_progress_t = t
    mon.sent_end = 0
    if progressive is not False:
        m.ready_owed = t


def apply_data(mon: MonitorState, t: float, msg: p.CmdOtaData) -> None:
    m = mon.m
    if m.state is p.OtaState.ERASING:
        m.erasing_data += 1
        return
    if m.state is not p.OtaState.RECEIVING or m.session is None:
        return
    reply = data_reply(mon, msg)
    if reply == ("MSG_OTA_STATUS",) or (not reply and msg.offset != m.next_offset):
        m.rejected += 1
        return
    if reply:
        return
    end = msg.offset + len(msg.data)
    m.staged[msg.offset : end] = msg.data
    m.next_offset = end
    m.rejected = 0
    m.chunk_ends.append(end)
    m.chunk_times.append(t)

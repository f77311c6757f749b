"""What a reply shows of the device: STATUS's fields against the model, the state it shows
again after the model lost it (what a link drop or a reset must have kept or ended), and
INFO's running image (the activation, section 9 and 16)."""

from __future__ import annotations

from ..contract import codec as p
from .model import DeviceModel, HeldSession, PendingCommand, command_name, status_text
from .state import MonitorState
from .work import on_ready


def check_reply(mon: MonitorState, t: float, head: PendingCommand, msg: p.DeviceMessage) -> None:
    if isinstance(msg, p.MsgError) and msg.command != head.type:
        mon.violate(
            t,
            "error.command",
            f"MSG_ERROR answering {command_name(head)} names command 0x{msg.command:02X}",
            repr(msg),
        )
    if isinstance(msg, p.MsgInfo):
        check_info(mon, t, msg)
    if isinstance(msg, p.MsgOtaReady) and isinstance(head.msg, p.CmdOtaStart):
        on_ready(mon, t, msg, head.msg.chunk_size)
        mon.m.ready_owed = None


def after_reply(mon: MonitorState, t: float, head: PendingCommand, msg: p.DeviceMessage) -> None:
    """A reply whose content depends on the state after the command: STATUS."""
    if not isinstance(msg, p.MsgOtaStatus):
        return
    if mon.unsure:
        resync(mon, t, msg, head)
        return
    check_status(mon, t, msg)


def check_status(mon: MonitorState, t: float, msg: p.MsgOtaStatus) -> None:
    m = mon.m
    s = m.session
    state = m.state
    assert state is not None
    if s is None or state in (p.OtaState.IDLE, p.OtaState.ERROR):
        want = p.MsgOtaStatus(state, 0, 0, 0)
    else:
        offset = {p.OtaState.ERASING: 0, p.OtaState.RECEIVING: m.next_offset}.get(state, s.size)
        want = p.MsgOtaStatus(state, offset, s.size, s.crc)
    if msg != want:
        mon.violate(
            t,
            "status.fields",
            f"MSG_OTA_STATUS says {status_text(msg)}, the device holds {status_text(want)}",
            repr(msg),
        )


def resync(mon: MonitorState, t: float, msg: p.MsgOtaStatus, head: PendingCommand | None) -> None:
    """A STATUS shows the device's state again after the model lost it."""
    if mon.fault_blind or mon.credit_blind:
        return
    kept, kept_state = mon.kept, mon.kept_state
    judged = head is not None and isinstance(head.msg, p.CmdOtaStatus)
    if judged and not mon.changed_since_unsure:
        if mon.reset_since_unsure:
            if msg.state != p.OtaState.IDLE:
                mon.violate(
                    t, "session.reset", f"after a reset STATUS says {status_text(msg)}", repr(msg)
                )
        elif kept is not None and kept_state is not None:
            judge_kept(mon, t, msg, kept, kept_state)
    mon.unsure = False
    mon.kept = None
    mon.reset_seen = False
    m = mon.m
    try:
        state = p.OtaState(msg.state)
    except ValueError:
        state = None
    same = m.session is not None and (m.session.size, m.session.crc) == (
        msg.image_size,
        msg.image_crc32,
    )
    session = m.session if same else None
    window = mon.window
    max_chunk = m.max_chunk if same else None
    staged = m.staged if same else bytearray()
    mon.m = m = DeviceModel(state=state, window=window, max_chunk=max_chunk, staged=staged)
    if state in (
        p.OtaState.ERASING,
        p.OtaState.RECEIVING,
        p.OtaState.VERIFYING,
        p.OtaState.COMPLETE,
    ):
        m.session = session or HeldSession(msg.image_size, msg.image_crc32, 0, False)
        m.next_offset = msg.next_expected_offset if state is p.OtaState.RECEIVING else 0
        # Chunks still in the buffer may be ACKed yet: from the last ACK seen on.
        m.acked = min(mon.kept_acked if same else 0, m.next_offset)
        m.interval_unknown = True
        if head is not None and isinstance(head.msg, p.CmdOtaData):
            m.rejected = 1  # the STATUS answered a rejected chunk: the rate limit runs
        if (
            state is p.OtaState.RECEIVING
            and head is not None
            and isinstance(head.msg, p.CmdOtaStatus)
        ):
            m.status_acks.append((m.next_offset, head.t))
        if state is p.OtaState.ERASING:
            m.last_progress_t = None  # pages done so far: unknown
            m.pages_reported = -1
        if state is p.OtaState.VERIFYING:
            m.verify_start_t = t
    if state is p.OtaState.RECEIVING and not same:
        m.max_chunk = None
    mon.sent_end = max(m.next_offset, mon.sent_end if same else 0)


def judge_kept(
    mon: MonitorState, t: float, msg: p.MsgOtaStatus, kept: HeldSession, kept_state: p.OtaState
) -> None:
    reachable = {
        p.OtaState.ERASING: {p.OtaState.ERASING, p.OtaState.RECEIVING, p.OtaState.ERROR},
        p.OtaState.RECEIVING: {
            p.OtaState.RECEIVING,
            p.OtaState.VERIFYING,
            p.OtaState.COMPLETE,
            p.OtaState.ERROR,
        },
        p.OtaState.VERIFYING: {p.OtaState.VERIFYING, p.OtaState.COMPLETE, p.OtaState.ERROR},
        p.OtaState.COMPLETE: {p.OtaState.COMPLETE},
    }.get(kept_state, set())
    if (kept.size, kept.crc) in mon.may_run:
        reachable |= {p.OtaState.IDLE, p.OtaState.COMPLETE}  # activated, reset unseen
    if msg.state not in reachable or (
        msg.state != p.OtaState.ERROR and (msg.image_size, msg.image_crc32) != (kept.size, kept.crc)
    ):
        mon.violate(
            t,
            "session.kept",
            f"the device held a session in {kept_state.name} for a {kept.size}-byte image; "
            f"after the link's loss STATUS says {status_text(msg)}",
            repr(msg),
        )
        return
    if msg.state == p.OtaState.RECEIVING:
        offset = msg.next_expected_offset
        if offset < mon.kept_acked or offset > max(mon.kept_sent, mon.kept_acked):
            mon.violate(
                t,
                "session.kept",
                f"STATUS offset {offset} after the link's loss: the device had ACKed "
                f"{mon.kept_acked} and was sent bytes up to {mon.kept_sent} in order",
                repr(msg),
            )


def check_info(mon: MonitorState, t: float, msg: p.MsgInfo) -> None:
    if msg.protocol_version != p.PROTOCOL_VERSION:
        mon.violate(t, "info.fields", f"protocol_version {msg.protocol_version}", repr(msg))
    mon.signed = msg.signed_only
    if mon.signed and msg.image_state == p.ImageState.TEST:
        running_now = (msg.active_image_size, msg.active_image_crc32)
        if mon.in_test != running_now:
            mon.before_test = mon.replaced
        mon.in_test = running_now
    else:
        mon.in_test = mon.before_test = None
    if mon.capacity is not None and msg.staging_capacity != mon.capacity:
        mon.violate(t, "info.fields", f"staging_capacity changed from {mon.capacity}", repr(msg))
    mon.capacity = msg.staging_capacity
    running = (msg.active_image_size, msg.active_image_crc32)
    refused, mon.may_refuse = mon.may_refuse, None
    if refused is not None and running == refused:
        mon.log(t, "*", "the bootloader refused the new image: the old one runs")
    elif mon.active is not None and running != mon.active and running not in mon.may_run:
        mon.violate(
            t,
            "activation.info",
            f"MSG_INFO reports a {running[0]}-byte image with CRC {running[1]:08x}; the "
            f"device must run the {mon.active[0]}-byte image {mon.active[1]:08x}",
            repr(msg),
        )
    mon.active = running
    mon.may_run.discard(running)

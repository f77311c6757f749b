"""The obligations due by a time (section 10, contract/timing.json): overdue replies, ACKs,
PROGRESS, READY, the verify's outcome, the disconnect after DONE."""

from __future__ import annotations

from ..contract import codec as p
from .commands import apply
from .model import command_name, describe, page_count
from .replies import reply_to
from .state import MonitorState


def advance(mon: MonitorState, now: float) -> None:
    """Judge what was due by ``now``: overdue replies, ACKs, PROGRESS, READY, DONE."""
    mon.now = now
    margin = mon.margin_s
    tm = mon.timing
    while mon.pending and now > mon.pending[0].t + tm.reply_max_s + margin:
        head = mon.pending[0]
        reply = reply_to(mon, head)
        if reply.tokens and not reply.optional and not mon.unsure:
            mon.violate(
                now,
                "reply.missing",
                f"no {' or '.join(reply.tokens)} for {command_name(head)} sent at {head.t:.3f}s "
                f"within {tm.reply_max_s:g} s (+{margin:g} s radio)",
                describe(head.msg, head.type),
            )
        mon.pending.popleft()
        apply(mon, head)
    m = mon.m
    if mon.unsure or m.state is None:
        return
    if m.chunk_times and m.window and not m.interval_unknown and mon.ack_owed_at():
        owed_t = mon.ack_owed_at()
        assert owed_t is not None
        if now > owed_t + tm.ack_latency_max_s + margin:
            mon.violate(
                now,
                "ack.late",
                f"no MSG_OTA_ACK for {len(m.chunk_ends)} chunks accepted since the last ACK "
                f"(interval {mon.interval()}) within {tm.ack_latency_max_s:g} s",
                "",
            )
            m.chunk_ends.clear()
            m.chunk_times.clear()
    if m.status_acks and now > m.status_acks[0][1] + tm.ack_latency_max_s + margin:
        mon.violate(now, "ack.late", "no MSG_OTA_ACK after a CMD_OTA_STATUS in RECEIVING", "")
        m.status_acks.clear()
    if m.state is p.OtaState.ERASING and m.last_progress_t is not None and not mon.slow_erase:
        if m.session is not None and m.pages_reported < page_count(m.session.size):
            if now > m.last_progress_t + tm.progress_gap_max_s + margin:
                mon.violate(
                    now,
                    "progress.gap",
                    f"no MSG_OTA_PROGRESS for {now - m.last_progress_t:.3f} s during the "
                    f"erase (at most {tm.progress_gap_max_s:g} s)",
                    "",
                )
                m.last_progress_t = None
        elif now > m.last_progress_t + tm.ready_after_erase_max_s + margin:
            mon.violate(
                now,
                "ready.late",
                f"no MSG_OTA_READY within {tm.ready_after_erase_max_s:g} s of the last "
                "erase PROGRESS",
                "",
            )
            m.last_progress_t = None
    if m.verify_start_t is not None and m.session is not None:
        limit = tm.verify_max_s(m.session.size)
        if now > m.verify_start_t + limit + margin:
            mon.violate(
                now, "verify.late", f"no DONE or CRC_MISMATCH within {limit:g} s of FINISH", ""
            )
            m.verify_start_t = None
    if m.done_t is not None and mon.connected and not mon.no_reset:
        if now > m.done_t + tm.done_to_disconnect_max_s + margin:
            mon.violate(
                now,
                "done.disconnect",
                f"the device did not end the link within {tm.done_to_disconnect_max_s:g} s "
                "of MSG_OTA_DONE",
                "",
            )
            m.done_t = None

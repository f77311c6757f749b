"""Messages that follow work under way rather than answer a command (PROGRESS, READY, ACK,
DONE, the verify's and the flash's errors): the erase, the ACK interval, the verify."""

from __future__ import annotations

from ..contract import codec as p
from .model import ASYNC, ASYNC_ERRORS, PAGE_SIZE, DeviceModel, page_count
from .state import MonitorState


def explains_async(mon: MonitorState, t: float, msg: p.DeviceMessage) -> bool:
    m = mon.m
    if mon.unsure and isinstance(msg, (*ASYNC, p.MsgError)):
        # An async message or a late error while unsure: take what it shows.
        if isinstance(msg, p.MsgOtaDone):
            if m.session is not None and m.session.crc == msg.crc32:
                on_done(mon, t, msg)
            elif mon.last_start is not None and mon.last_start[1] == msg.crc32:
                mon.activation = mon.last_start  # the reset will switch to it
        return isinstance(msg, ASYNC) or (isinstance(msg, p.MsgError) and msg.code in ASYNC_ERRORS)
    state = m.state
    if isinstance(msg, p.MsgOtaProgress):
        if state is p.OtaState.ERASING and m.session is not None and not m.session.progressive:
            if m.session.progressive is None:
                m.session.progressive = False  # the device erases first
                m.ready_owed = None
            on_progress(mon, t, msg)
            return True
        return False
    if isinstance(msg, p.MsgOtaReady):
        if state is p.OtaState.ERASING and m.session is not None and m.ready_owed is None:
            if m.session.progressive and m.pages_reported == 0:
                on_ready(mon, t, msg, m.session.chunk_size)
                return True
            pages = page_count(m.session.size)
            if m.pages_reported >= 0 and m.pages_reported < pages:
                mon.violate(
                    t,
                    "ready.early",
                    f"MSG_OTA_READY after {m.pages_reported} of {pages} pages' PROGRESS",
                    repr(msg),
                )
            on_ready(mon, t, msg, m.session.chunk_size)
            return True
        if m.ready_owed is not None and state in (p.OtaState.ERASING, p.OtaState.RECEIVING):
            if state is p.OtaState.ERASING and m.session and m.session.progressive is False:
                pages = page_count(m.session.size)
                if 0 <= m.pages_reported < pages:
                    mon.violate(
                        t,
                        "ready.early",
                        f"MSG_OTA_READY after {m.pages_reported} of {pages} pages' PROGRESS",
                        repr(msg),
                    )
            assert m.session is not None
            if m.session.progressive is None:
                m.session.progressive = True  # READY at once: the device erases as it goes
            on_ready(mon, t, msg, m.session.chunk_size)
            return True
        return False
    if isinstance(msg, p.MsgOtaAck):
        return on_ack(mon, t, msg)
    if isinstance(msg, p.MsgOtaDone):
        if state is p.OtaState.VERIFYING:
            on_done(mon, t, msg)
            return True
        return False
    if isinstance(msg, p.MsgError):
        if msg.code == p.ErrorCode.CRC_MISMATCH and state is p.OtaState.VERIFYING:
            on_verify_failed(mon, t, msg)
            return True
        if msg.code == p.ErrorCode.DIGEST_MISMATCH and state is p.OtaState.VERIFYING:
            on_digest_mismatch(mon, t, msg)
            return True
        if msg.code == p.ErrorCode.FLASH_ERROR and state in (
            p.OtaState.ERASING,
            p.OtaState.RECEIVING,
        ):
            want = (
                p.MsgType.CMD_OTA_START if state is p.OtaState.ERASING else p.MsgType.CMD_OTA_DATA
            )
            if msg.command != want and not (m.session and m.session.progressive):
                mon.violate(
                    t,
                    "error.command",
                    f"FLASH_ERROR in {state.name} must name {want.name}",
                    repr(msg),
                )
            mon.m = DeviceModel(state=p.OtaState.ERROR, window=m.window)
            mon.pending.clear()  # queued work is dropped; replies may come either way
            mon.become_unsure()
            return True
    return False


def on_progress(mon: MonitorState, t: float, msg: p.MsgOtaProgress) -> None:
    m = mon.m
    assert m.session is not None
    total = page_count(m.session.size) * PAGE_SIZE
    if m.pages_reported < 0:  # resynchronised mid-erase: take its count
        m.pages_reported = msg.done // PAGE_SIZE - 1
    want_done = (m.pages_reported + 1) * PAGE_SIZE
    if msg.phase != p.OtaPhase.ERASE or msg.total != total or msg.done != want_done:
        mon.violate(
            t,
            "progress.fields",
            f"erase PROGRESS must be phase 1, done {want_done}, total {total} "
            f"(ceil({m.session.size} / 4096) pages)",
            repr(msg),
        )
    m.pages_reported += 1
    m.last_progress_t = t


def on_ready(mon: MonitorState, t: float, msg: p.MsgOtaReady, chunk_size: int) -> None:
    m = mon.m
    want = p.granted_max_chunk(chunk_size) if chunk_size >= p.MIN_CHUNK_SIZE else None
    if (want is not None and msg.max_chunk != want) or msg.window < 1:
        mon.violate(
            t,
            "ready.fields",
            f"READY for chunk_size {chunk_size} must grant max_chunk {want} and a window >= 1",
            repr(msg),
        )
    mon.credit_blind = False
    m.max_chunk = msg.max_chunk
    m.window = mon.window = msg.window
    m.interval_unknown = False
    mon.inflight = []
    m.state = p.OtaState.RECEIVING
    m.ready_owed = None
    m.last_progress_t = None
    m.acked = m.next_offset
    m.chunk_ends.clear()
    m.chunk_times.clear()
    m.rejected = 0


def on_ack(mon: MonitorState, t: float, msg: p.MsgOtaAck) -> bool:
    m = mon.m
    if m.state not in (p.OtaState.RECEIVING, p.OtaState.VERIFYING) or m.session is None:
        return False
    offset = msg.next_expected_offset
    owed = [x for x, _ in m.status_acks]
    if offset in m.merged_acks and offset <= m.acked and offset not in owed:
        m.merged_acks.discard(offset)  # a STATUS's ACK sent apart from its twin
        return True
    if not m.chunk_ends:
        if offset in owed or (m.interval_unknown and m.acked <= offset <= m.next_offset):
            if offset < m.acked:
                mon.violate(t, "ack.offset", f"ACK {offset} goes back from {m.acked}", repr(msg))
            m.status_acks = [(x, since) for x, since in m.status_acks if x > offset]
            m.acked = max(m.acked, offset)
            mon.inflight = [e for e in mon.inflight if e > offset]
            return True
        return False  # not owed now: a pending command may make it owed
    if offset < m.acked:
        mon.violate(t, "ack.offset", f"ACK {offset} goes back from {m.acked}", repr(msg))
        return True
    if offset not in m.chunk_ends:
        if offset > m.chunk_ends[-1]:
            return False  # past what was accepted: a pending DATA may explain it
        mon.violate(t, "ack.offset", f"ACK {offset} is not the end of an accepted chunk", repr(msg))
        return True
    k = m.chunk_ends.index(offset) + 1
    interval = mon.interval()
    at_end = offset == m.session.size
    status_owed = any(x <= offset for x in owed)
    known = not m.interval_unknown and m.window is not None
    if k != interval and not at_end and not status_owed and known:
        mon.violate(
            t,
            "ack.interval",
            f"ACK after {k} chunks; the ACK interval is max(1, window // 2) = {interval} "
            f"chunks (window {m.window})",
            repr(msg),
        )
    if offset in owed or ((k == interval or at_end) and status_owed):
        m.merged_acks.add(offset)  # two ACKs fell together: the twin may still come
    m.status_acks = [(x, since) for x, since in m.status_acks if x > offset]
    m.interval_unknown = False
    m.acked = offset
    mon.inflight = [e for e in mon.inflight if e > offset]
    del m.chunk_ends[:k]
    del m.chunk_times[:k]
    return True


def on_done(mon: MonitorState, t: float, msg: p.MsgOtaDone) -> None:
    m = mon.m
    s = m.session
    assert s is not None
    if msg.crc32 != s.crc:
        mon.violate(
            t, "done.crc", f"DONE says CRC {msg.crc32:08x}, START said {s.crc:08x}", repr(msg)
        )
    elif not mon.unsure and len(m.staged) == s.size and p.crc32(bytes(m.staged)) != s.crc:
        mon.violate(
            t,
            "verify.outcome",
            f"DONE for bytes whose CRC-32 is {p.crc32(bytes(m.staged)):08x}, not START's "
            f"{s.crc:08x}: the device activates an image it was not sent",
            repr(msg),
        )
    check_final_ack(mon, t, msg)
    m.state = p.OtaState.COMPLETE
    m.verify_start_t = None
    m.done_t = t
    mon.activation = (s.size, s.crc)


def on_digest_mismatch(mon: MonitorState, t: float, msg: p.MsgError) -> None:
    """Section 16.3: the staged flash's SHA-256 is not the manifest's (its CRC-32 may
    well be START's: a tampering behind the CRC), state ERROR."""
    m = mon.m
    if msg.command != p.MsgType.CMD_OTA_FINISH:
        mon.violate(t, "error.command", "DIGEST_MISMATCH must name CMD_OTA_FINISH", repr(msg))
    if mon.signed is False:
        mon.violate(t, "frame.fields", "DIGEST_MISMATCH from a v1 device", repr(msg))
    check_final_ack(mon, t, msg)
    mon.m = DeviceModel(state=p.OtaState.ERROR, window=m.window)
    mon.sent_end = 0


def on_verify_failed(mon: MonitorState, t: float, msg: p.MsgError) -> None:
    m = mon.m
    s = m.session
    assert s is not None
    if msg.command != p.MsgType.CMD_OTA_FINISH:
        mon.violate(t, "error.command", "CRC_MISMATCH must name CMD_OTA_FINISH", repr(msg))
    if len(m.staged) == s.size and p.crc32(bytes(m.staged)) == s.crc:
        mon.violate(
            t,
            "verify.outcome",
            "CRC_MISMATCH for bytes whose CRC-32 is START's: the device lost or damaged "
            "what it ACKed",
            repr(msg),
        )
    check_final_ack(mon, t, msg)
    mon.m = DeviceModel(state=p.OtaState.ERROR, window=m.window)
    mon.sent_end = 0


def check_final_ack(mon: MonitorState, t: float, msg: p.DeviceMessage) -> None:
    m = mon.m
    if m.chunk_ends:
        mon.violate(
            t,
            "ack.interval",
            f"the verify's outcome before the ACK of the image's last byte (ACKed {m.acked})",
            repr(msg),
        )
        m.chunk_ends.clear()
        m.chunk_times.clear()

"""The contract monitor (pytest_smartball/monitor/), pure: hand-made traces of a device,
one that keeps each rule and one that breaks it; the rule must fire on the second only."""

from __future__ import annotations

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.monitor import RULES

from ..monitor_trace import CHUNK, CRC, IMAGE, INFO, STATUS_IDLE, WINDOW, Trace


def erase(tr: Trace, progress: list[p.MsgOtaProgress] | None = None) -> Trace:
    tr.host(p.CmdInfo()).dev(INFO)
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, CHUNK))
    pages = (len(IMAGE) + 4095) // 4096
    for msg in progress or [
        p.MsgOtaProgress(1, 4096 * (i + 1), pages * 4096) for i in range(pages)
    ]:
        tr.at(0.085).dev(msg)
    return tr.dev(p.MsgOtaReady(CHUNK, WINDOW))


def send(tr: Trace, start: int, end: int) -> Trace:
    offset = start
    while offset < end:
        size = min(CHUNK, len(IMAGE) - offset)
        tr.host(p.CmdOtaData(offset, IMAGE[offset : offset + size]))
        offset += size
    return tr


def good_update(tr: Trace) -> Trace:
    erase(tr)
    offset = 0
    interval = WINDOW // 2
    n = 0
    while offset < len(IMAGE):
        size = min(CHUNK, len(IMAGE) - offset)
        tr.host(p.CmdOtaData(offset, IMAGE[offset : offset + size]))
        offset += size
        n += 1
        if n % interval == 0 or offset == len(IMAGE):
            tr.dev(p.MsgOtaAck(offset))
    tr.host(p.CmdOtaFinish()).dev(p.MsgOtaDone(CRC))
    tr.m.observe_disconnect(tr.at(0.1).t)
    tr.at(1.0).m.observe_connect(tr.t)
    return tr.host(p.CmdInfo()).dev(p.MsgInfo(1, 1, 0, 0, len(IMAGE), CRC, 491520))


def test_a_whole_correct_update_breaks_no_rule() -> None:
    assert good_update(Trace()).rules() == []


def test_every_rule_is_documented_in_the_protocol() -> None:
    from pathlib import Path

    from pytest_smartball.monitor import rules_documented

    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text("utf-8")
    assert rules_documented(text) == []


# Each case: a function that builds a trace breaking exactly one rule.


def _progress_done_past_total(tr: Trace) -> None:
    erase(
        tr,
        [
            p.MsgOtaProgress(1, 4096, 12288),
            p.MsgOtaProgress(1, 8192, 12288),
            p.MsgOtaProgress(1, 12288, 12288),
            p.MsgOtaProgress(1, 16384, 12288),
        ],
    )


def _progress_wrong_total(tr: Trace) -> None:
    erase(tr, [p.MsgOtaProgress(1, 4096 * (i + 1), 16384) for i in range(3)])


def _ready_early(tr: Trace) -> None:
    erase(tr, [p.MsgOtaProgress(1, 4096, 12288)])


def _progress_gap(tr: Trace) -> None:
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, CHUNK))
    tr.at(2.0).dev(p.MsgOtaProgress(1, 4096, 12288))


def _ready_wrong_max_chunk(tr: Trace) -> None:
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, 600))
    for i in range(3):
        tr.dev(p.MsgOtaProgress(1, 4096 * (i + 1), 12288))
    tr.dev(p.MsgOtaReady(512, WINDOW))  # min(600, 500) = 500


def _ack_every_window(tr: Trace) -> None:
    erase(tr)
    send(tr, 0, 4 * CHUNK)
    tr.dev(p.MsgOtaAck(4 * CHUNK))  # the interval is window // 2 = 2 chunks


def _ack_missing(tr: Trace) -> None:
    erase(tr)
    send(tr, 0, 2 * CHUNK)
    tr.at(1.0).host(p.CmdInfo()).dev(INFO)


def _ack_past_received(tr: Trace) -> None:
    erase(tr)
    send(tr, 0, 2 * CHUNK)
    tr.dev(p.MsgOtaAck(2 * CHUNK + 8))


def _status_wrong_offset(tr: Trace) -> None:
    erase(tr)
    send(tr, 0, 2 * CHUNK)
    tr.dev(p.MsgOtaAck(2 * CHUNK))
    tr.host(p.CmdOtaStatus()).dev(p.MsgOtaStatus(2, CHUNK, len(IMAGE), CRC))


def _status_in_verifying(tr: Trace) -> None:
    erase(tr)
    offset = 0
    while offset < len(IMAGE):
        end = min(offset + 2 * CHUNK, len(IMAGE))
        send(tr, offset, end)
        tr.dev(p.MsgOtaAck(end))
        offset = end
    tr.host(p.CmdOtaFinish()).host(p.CmdOtaStatus())
    tr.dev(p.MsgOtaStatus(3, 0, len(IMAGE), CRC))  # VERIFYING reports image_size


def _reply_wrong(tr: Trace) -> None:
    tr.host(p.CmdOtaFinish()).dev(p.MsgOtaStatus(0, 0, 0, 0))


def _reply_missing(tr: Trace) -> None:
    tr.host(p.CmdOtaStatus()).at(2.0).host(p.CmdInfo()).dev(INFO)


def _unknown_command_ignored(tr: Trace) -> None:
    tr.raw(p.encode_frame(0x42, b"")).at(1.0).host(p.CmdInfo()).dev(INFO)


def _error_names_other_command(tr: Trace) -> None:
    tr.host(p.CmdOtaFinish()).dev(p.MsgError(p.ErrorCode.BAD_STATE, 0x10))


def _rejected_storm(tr: Trace) -> None:
    erase(tr)
    for offset in (4 * CHUNK, 5 * CHUNK):
        tr.host(p.CmdOtaData(offset, IMAGE[offset : offset + CHUNK]))
    tr.dev(p.MsgOtaStatus(2, 0, len(IMAGE), CRC)).dev(p.MsgOtaStatus(2, 0, len(IMAGE), CRC))


def _buffer_too_small(tr: Trace) -> None:
    erase(tr)
    send(tr, 0, 3 * CHUNK)
    tr.dev(p.MsgOtaAck(2 * CHUNK)).dev(p.MsgOtaStatus(2, 2 * CHUNK, len(IMAGE), CRC))


def _done_wrong_crc(tr: Trace) -> None:
    _status_in_verifying_prefix(tr)
    tr.dev(p.MsgOtaDone(CRC ^ 0xFFFFFFFF))


def _status_in_verifying_prefix(tr: Trace) -> None:
    erase(tr)
    offset = 0
    while offset < len(IMAGE):
        end = min(offset + 2 * CHUNK, len(IMAGE))
        send(tr, offset, end)
        tr.dev(p.MsgOtaAck(end))
        offset = end
    tr.host(p.CmdOtaFinish())


def _no_disconnect_after_done(tr: Trace) -> None:
    _status_in_verifying_prefix(tr)
    tr.dev(p.MsgOtaDone(CRC)).at(3.0).host(p.CmdOtaStatus()).dev(
        p.MsgOtaStatus(4, len(IMAGE), len(IMAGE), CRC)
    )


def _info_stale_after_switch(tr: Trace) -> None:
    _status_in_verifying_prefix(tr)
    tr.dev(p.MsgOtaDone(CRC))
    tr.m.observe_disconnect(tr.at(0.1).t)
    tr.at(1.0).m.observe_connect(tr.t)
    tr.host(p.CmdInfo()).dev(INFO)


def _session_lost_on_drop(tr: Trace) -> None:
    erase(tr)
    send(tr, 0, 2 * CHUNK)
    tr.dev(p.MsgOtaAck(2 * CHUNK))
    tr.m.observe_disconnect(tr.at(0.1).t)
    tr.at(1.0).m.observe_connect(tr.t)
    tr.host(p.CmdOtaStatus()).dev(STATUS_IDLE)


def _offset_ahead_after_drop(tr: Trace) -> None:
    erase(tr)
    send(tr, 0, 2 * CHUNK)
    tr.dev(p.MsgOtaAck(2 * CHUNK))
    tr.m.observe_disconnect(tr.at(0.1).t)
    tr.at(1.0).m.observe_connect(tr.t)
    tr.host(p.CmdOtaStatus()).dev(p.MsgOtaStatus(2, 3 * CHUNK, len(IMAGE), CRC))


def _session_survives_reset(tr: Trace) -> None:
    erase(tr)
    send(tr, 0, 2 * CHUNK)
    tr.dev(p.MsgOtaAck(2 * CHUNK))
    tr.m.observe_reset(tr.at(0.1).t)
    tr.m.observe_disconnect(tr.t)
    tr.at(1.0).m.observe_connect(tr.t)
    tr.host(p.CmdOtaStatus()).dev(p.MsgOtaStatus(2, 2 * CHUNK, len(IMAGE), CRC))


def _bad_crc_from_device(tr: Trace) -> None:
    frame = bytearray(p.encode(INFO))
    frame[-1] ^= 1
    tr.host(p.CmdInfo()).raw(bytes(frame), device=True)


def _unknown_device_type(tr: Trace) -> None:
    tr.raw(p.encode_frame(0xC3, b"\x00"), device=True)


def _verify_lies(tr: Trace) -> None:
    erase(tr)
    offset = 0
    while offset < len(IMAGE):
        end = min(offset + 2 * CHUNK, len(IMAGE))
        send(tr, offset, end)
        tr.dev(p.MsgOtaAck(end))
        offset = end
    tr.host(p.CmdOtaFinish()).dev(p.MsgError(p.ErrorCode.CRC_MISMATCH, 0x14))


def _oversized_frame(tr: Trace) -> None:
    # A header announcing 513 payload bytes: more than any frame may carry.
    tr.host(p.CmdInfo()).raw(bytes((p.SOF, p.MsgType.MSG_INFO, 0x01, 0x02)), device=True)


def _bytes_outside_a_frame(tr: Trace) -> None:
    tr.host(p.CmdInfo()).raw(b"\x00\x17" + p.encode(INFO), device=True)


def _frame_abandoned_halfway(tr: Trace) -> None:
    # INFO answered, then half a STATUS nobody asked for, and the rest never comes.
    tr.host(p.CmdInfo()).dev(INFO).raw(p.encode(STATUS_IDLE)[:5], device=True)
    tr.at(1.2).host(p.CmdOtaStatus()).dev(STATUS_IDLE)


def _status_nobody_asked_for(tr: Trace) -> None:
    tr.host(p.CmdOtaStatus()).dev(STATUS_IDLE).dev(STATUS_IDLE)


def _info_wrong_protocol(tr: Trace) -> None:
    tr.host(p.CmdInfo()).dev(p.MsgInfo(2, 1, 0, 0, 65536, 0x1234, 491520))


def _info_capacity_changes(tr: Trace) -> None:
    tr.host(p.CmdInfo()).dev(INFO)
    tr.host(p.CmdInfo()).dev(p.MsgInfo(1, 1, 0, 0, 65536, 0x1234, 491520 - 4096))


def _erase_then_ready(tr: Trace, ready_after_s: float) -> None:
    tr.host(p.CmdInfo()).dev(INFO)
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, CHUNK))
    for i in range(3):
        tr.at(0.085).dev(p.MsgOtaProgress(1, 4096 * (i + 1), 12288))
    tr.at(ready_after_s).dev(p.MsgOtaReady(CHUNK, WINDOW))


def _ready_late(tr: Trace) -> None:
    _erase_then_ready(tr, 0.8)  # ready_after_erase_max_s is 0.5 s (+0.25 s radio)


def _data_in_erasing(tr: Trace, refusals: int) -> None:
    # A first session tells the monitor the window (4); the second START erases again,
    # and DATA sent during that erase is refused for the 1st, 5th, 9th... chunk only.
    erase(tr)
    tr.host(p.CmdOtaAbort()).dev(STATUS_IDLE)
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, CHUNK))
    tr.at(0.085).dev(p.MsgOtaProgress(1, 4096, 12288))
    send(tr, 0, 2 * CHUNK)
    for _ in range(refusals):
        tr.dev(p.MsgError(p.ErrorCode.BAD_STATE, p.MsgType.CMD_OTA_DATA))
    # A slow page: past reply_max_s, so a refusal owed for the 2nd chunk would be missed.
    tr.at(0.8).dev(p.MsgOtaProgress(1, 8192, 12288))
    tr.at(0.085).dev(p.MsgOtaProgress(1, 12288, 12288))
    tr.dev(p.MsgOtaReady(CHUNK, WINDOW))


def _bad_state_for_every_chunk_while_erasing(tr: Trace) -> None:
    _data_in_erasing(tr, refusals=2)


def _data_in_erasing_across_a_resume(tr: Trace, answered: bool) -> None:
    """A refused DATA, a resume START, another DATA, all during one erase: the count
    restarts at the resume (section 7.4 rule 1, issue 24), so the second is answered too."""
    erase(tr)
    tr.host(p.CmdOtaAbort()).dev(STATUS_IDLE)
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, CHUNK))
    tr.at(0.085).dev(p.MsgOtaProgress(1, 4096, 12288))
    send(tr, 0, CHUNK).dev(p.MsgError(p.ErrorCode.BAD_STATE, p.MsgType.CMD_OTA_DATA))
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, CHUNK))
    send(tr, 0, CHUNK)
    if answered:
        tr.dev(p.MsgError(p.ErrorCode.BAD_STATE, p.MsgType.CMD_OTA_DATA))
    tr.at(0.8).dev(p.MsgOtaProgress(1, 8192, 12288))  # a slow page: past reply_max_s
    tr.at(0.085).dev(p.MsgOtaProgress(1, 12288, 12288))
    tr.dev(p.MsgOtaReady(CHUNK, WINDOW))


def _verify(tr: Trace, done_after_s: float) -> None:
    _status_in_verifying_prefix(tr)
    tr.at(done_after_s).dev(p.MsgOtaDone(CRC))
    tr.m.observe_disconnect(tr.at(0.1).t)


def _verify_late(tr: Trace) -> None:
    _verify(tr, 1.5)  # verify_max_s is 1 s + 1 s/MB (+0.25 s radio): 1.26 s here


CASES = {
    "frame.fields": _progress_done_past_total,
    "progress.fields": _progress_wrong_total,
    "ready.early": _ready_early,
    "progress.gap": _progress_gap,
    "ready.fields": _ready_wrong_max_chunk,
    "ack.interval": _ack_every_window,
    "ack.late": _ack_missing,
    "ack.offset": _ack_past_received,
    "status.fields": _status_wrong_offset,
    "reply.wrong": _reply_wrong,
    "reply.missing": _reply_missing,
    "error.command": _error_names_other_command,
    "ratelimit.rejected": _rejected_storm,
    "buffer.overflow": _buffer_too_small,
    "done.crc": _done_wrong_crc,
    "done.disconnect": _no_disconnect_after_done,
    "activation.info": _info_stale_after_switch,
    "session.kept": _session_lost_on_drop,
    "session.reset": _session_survives_reset,
    "frame.crc": _bad_crc_from_device,
    "frame.type": _unknown_device_type,
    "verify.outcome": _verify_lies,
    "frame.length": _oversized_frame,
    "frame.garbage": _bytes_outside_a_frame,
    "reply.unexpected": _status_nobody_asked_for,
    "info.fields": _info_wrong_protocol,
    "ready.late": _ready_late,
    "ratelimit.erasing": _bad_state_for_every_chunk_while_erasing,
    "verify.late": _verify_late,
}

#: More traces that break one rule in another way, the rule they break first.
MORE_CASES = {
    "frame abandoned halfway": ("frame.garbage", _frame_abandoned_halfway),
    "staging capacity changes": ("info.fields", _info_capacity_changes),
    "no reply to the first DATA after a resume START in ERASING": (
        "reply.missing",
        lambda tr: _data_in_erasing_across_a_resume(tr, answered=False),
    ),
}

#: The same devices keeping the rule: nothing may fire.
KEPT = {
    "ready.late": lambda tr: _erase_then_ready(tr, 0.7),
    "ratelimit.erasing": lambda tr: _data_in_erasing(tr, refusals=1),
    "ratelimit.erasing, the count restarted by a resume START": lambda tr: (
        _data_in_erasing_across_a_resume(tr, answered=True)
    ),
    "verify.late": lambda tr: _verify(tr, 1.2),
    "reply.unexpected": lambda tr: tr.host(p.CmdOtaStatus()).dev(STATUS_IDLE),
    "info.fields": lambda tr: tr.host(p.CmdInfo()).dev(INFO).host(p.CmdInfo()).dev(INFO),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_a_device_that_breaks_the_rule_is_caught(rule: str) -> None:
    tr = Trace()
    CASES[rule](tr)
    found = tr.rules()
    assert found, f"{rule}: nothing fired"
    assert found[0] == rule, f"{rule}: the first violation was {found}"
    assert rule in RULES


def test_every_rule_has_a_trace_that_breaks_it() -> None:
    """A rule added to RULES without a case here fails: each rule is shown firing."""
    assert sorted(CASES) == sorted(RULES)


@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_another_way_to_break_a_rule_is_caught(case: str) -> None:
    rule, build = MORE_CASES[case]
    tr = Trace()
    build(tr)
    assert tr.rules()[:1] == [rule]


@pytest.mark.parametrize("rule", sorted(KEPT))
def test_the_same_device_keeping_the_rule_breaks_none(rule: str) -> None:
    tr = Trace()
    KEPT[rule](tr)
    assert tr.rules() == []


def test_status_in_verifying_reports_image_size() -> None:
    tr = Trace()
    _status_in_verifying(tr)
    assert tr.rules()[:1] == ["status.fields"]


def test_offset_ahead_after_a_drop_is_caught() -> None:
    tr = Trace()
    _offset_ahead_after_drop(tr)
    assert tr.rules()[:1] == ["session.kept"]


def test_unknown_command_ignored_is_a_missing_reply() -> None:
    tr = Trace()
    _unknown_command_ignored(tr)
    assert tr.rules()[:1] == ["reply.missing"]


def test_a_lost_notification_the_fault_plan_reports_is_no_violation() -> None:
    tr = Trace()
    erase(tr)
    send(tr, 0, 2 * CHUNK)
    tr.m.observe_fault(tr.t, "lose")  # the ACK was lost on purpose
    tr.at(1.0).host(p.CmdOtaStatus()).dev(p.MsgOtaStatus(2, 2 * CHUNK, len(IMAGE), CRC))
    assert tr.rules() == []


def test_a_violation_names_rule_frame_time_and_trace() -> None:
    tr = Trace()
    _ack_every_window(tr)
    text = str(tr.m.finish(tr.t)[0])
    assert "[ack.interval]" in text and "MsgOtaAck(next_expected_offset=928)" in text
    assert "CmdOtaData(offset=696, len=232)" in text  # the trace before it

"""The C reference core where no vector reaches: the platform failing under it (flash
operations that fail, do not start or silently do nothing; a persist that fails), half a
signed HAL, and floods of commands beyond the credit.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing

from .. import c_core
from ..c_core import PAGE
from .c_core_sessions import (
    _session,
    _types,
)

# --- what no vector exercises: the platform failing under the core --------------------------

_IMAGE = bytes(range(40))


def _send(run: c_core.Replay, at_s: float, *msgs: p.Message) -> list[dict[str, Any]]:
    """Send ``msgs`` at ``at_s`` and run 0.5 s; what the core sent meanwhile."""
    before = len(run.out)
    run.apply({"at_s": at_s, "in": b"".join(p.encode(m) for m in msgs).hex(" ")})
    run.run_until(round((at_s + 0.5) * 1e9))
    return run.out[before:]


_START = p.CmdOtaStart(image_size=len(_IMAGE), image_crc32=p.crc32(_IMAGE), chunk_size=8)


def _chunks(start: int = 0) -> list[p.Message]:
    return [p.CmdOtaData(offset=o, data=_IMAGE[o : o + 8]) for o in range(start, 40, 8)]


def test_read_back_finds_what_the_flash_did_not_report(lib: ctypes.CDLL) -> None:
    """The NVMC reports nothing: a write that silently did not happen is found by reading
    it back, retried once (the word's second write), then FLASH_ERROR naming the DATA."""
    run = _session(lib, window=16)
    assert _types(_send(run, 0.0, _START)) == ["MSG_OTA_PROGRESS", "MSG_OTA_READY"]
    run.silent_fail_next = 1
    out = _send(run, 1.0, *_chunks(), p.CmdOtaFinish())
    assert _types(out) == ["MSG_OTA_ACK", "MSG_OTA_DONE", "reset"]  # the retry wrote it
    assert run.active == _IMAGE
    _send(run, 2.0, _START)
    run.silent_fail_next = 2
    out = _send(run, 3.0, _chunks()[0])
    assert _types(out) == ["FLASH_ERROR"] and out[0]["command"] == "CMD_OTA_DATA"
    assert run.state() == "ERROR"


def test_read_back_finds_an_erase_that_did_not_happen(lib: ctypes.CDLL) -> None:
    """A staging page holding an old image, an erase that silently fails twice: FLASH_ERROR
    naming the START (a mock flash that starts blank could never show this)."""
    run = _session(lib)
    run.flash[:PAGE] = bytes(PAGE)
    run.silent_fail_next = 2
    out = _send(run, 0.0, _START)
    assert _types(out) == ["FLASH_ERROR"] and out[0]["command"] == "CMD_OTA_START"


def test_a_flash_operation_that_cannot_start_is_a_failed_one(lib: ctypes.CDLL) -> None:
    run = _session(lib)
    run.refuse_next = 1
    assert _types(_send(run, 0.0, _START)) == ["MSG_OTA_PROGRESS", "MSG_OTA_READY"]
    run.refuse_next = 2
    assert _types(_send(run, 1.0, _chunks()[0])) == ["FLASH_ERROR"]


def test_a_failed_persist_keeps_the_old_image(lib: ctypes.CDLL) -> None:
    """Section 7.8 (and vector session:failed_persist): the record of PENDING could not be
    written, so DONE would be a lie; FLASH_ERROR naming FINISH, state ERROR, no switch."""
    run = _session(lib, window=16)
    _send(run, 0.0, _START)
    _send(run, 1.0, *_chunks())
    run.persist_ok = False
    out = _send(run, 2.0, p.CmdOtaFinish())
    assert _types(out) == ["FLASH_ERROR"] and out[0]["command"] == "CMD_OTA_FINISH"
    assert run.state() == "ERROR" and run.pending is None


def _signed_update(lib: ctypes.CDLL, counter: int = 5) -> c_core.Replay:
    """A signed-only core (counter 3) that took _IMAGE signed with ``counter``: in TEST."""
    run = _session(
        lib, signed_only={"trusted_key_ids": ["cc1ca58d"], "security_counter": 3}, window=16
    )
    signed = signing.sign(_IMAGE, signing.test_key(), (2, 0, 0), counter)
    head = p.CmdOtaManifest(manifest=signed.manifest_bytes, signature=signed.signature)
    assert _types(_send(run, 0.0, head)) == ["MSG_OTA_STATUS"]
    _send(run, 1.0, _START)
    _send(run, 2.0, *_chunks())
    assert _types(_send(run, 3.0, p.CmdOtaFinish()))[-2:] == ["MSG_OTA_DONE", "reset"]
    return run


def _info(run: c_core.Replay, at_s: float, msg: p.Message) -> p.MsgInfo:
    (out,) = _send(run, at_s, msg)
    info = p.decode(bytes.fromhex(out["hex"]))
    assert isinstance(info, p.MsgInfo)
    return info


def test_a_confirm_that_cannot_be_persisted_leaves_the_image_on_trial(lib: ctypes.CDLL) -> None:
    """Not in the contract (docs/firmware.md): the CONFIRMED record could not be written,
    so the MSG_INFO says TEST with the old counter (the host may confirm again), and a
    reset still reverts; a CONFIRM that is persisted raises the counter to the image's."""
    run = _signed_update(lib)
    info = _info(run, 4.0, p.CmdInfo())
    assert (info.image_state, info.security_counter, info.fw_major) == (p.ImageState.TEST, 3, 2)
    run.confirm_ok = False
    info = _info(run, 5.0, p.CmdOtaConfirm())
    assert (info.image_state, info.security_counter) == (p.ImageState.TEST, 3)
    run.confirm_ok = True
    info = _info(run, 6.0, p.CmdOtaConfirm())
    assert (info.image_state, info.security_counter) == (p.ImageState.CONFIRMED, 5)
    run.power_cycle()
    info = _info(run, 7.0, p.CmdInfo())
    assert (info.image_state, info.security_counter, info.fw_major) == (
        p.ImageState.CONFIRMED,
        5,
        2,
    )


def test_the_core_refuses_half_a_signed_hal(lib: ctypes.CDLL) -> None:
    """The HAL's six signed hooks come all or none (a core that could check signatures but
    not persist what it checked would be neither a v1 nor a signed-only device), and the
    trusted keys fit the configuration."""
    run = _signed_update(lib)
    whole = c_core.Hal.from_buffer_copy(run.hal)
    run.hal.persist_confirmed = type(run.hal.persist_confirmed)()
    cfg = c_core.Config(4, 4, 20480, 0, (ctypes.c_uint8 * 3)(1, 0, 0), 40, 0)
    assert lib.sb_init(run.core, ctypes.byref(run.hal), ctypes.byref(cfg)) == -1
    cfg.trusted_keys = c_core.MAX_KEYS + 1
    assert lib.sb_init(run.core, ctypes.byref(whole), ctypes.byref(cfg)) == -1
    cfg.trusted_keys = 1
    assert lib.sb_init(run.core, ctypes.byref(whole), ctypes.byref(cfg)) == 0


def test_abort_during_a_write_then_a_new_session(lib: ctypes.CDLL) -> None:
    """ABORT right behind a chunk: the write under way completes for nobody (no ACK), its
    buffer slot stays intact, and the next session runs to DONE."""
    run = _session(lib, window=16)
    _send(run, 0.0, _START)
    out = _send(run, 1.0, *_chunks()[:2], p.CmdOtaAbort())
    assert _types(out) == ["MSG_OTA_STATUS"] and run.state() == "IDLE"
    _send(run, 2.0, _START)
    out = _send(run, 3.0, *_chunks(), p.CmdOtaFinish())
    assert _types(out) == ["MSG_OTA_ACK", "MSG_OTA_DONE", "reset"]
    assert run.active == _IMAGE


def test_a_flood_beyond_the_credit_during_a_progressive_erase(lib: ctypes.CDLL) -> None:
    """A host far beyond its credit while the first page erases: what does not fit the
    inbox is lost, the rest is refused as a full buffer; the core stays consistent and its
    STATUS tells the host where to resume."""
    image = bytes(i & 0xFF for i in range(60 * 232))
    run = _session(lib, window=16, progressive_erase=True, staging_capacity=5 * PAGE)
    crc = p.crc32(image)
    _send(run, 0.0, p.CmdOtaStart(image_size=len(image), image_crc32=crc, chunk_size=232, flags=1))
    flood = [p.CmdOtaData(offset=o, data=image[o : o + 232]) for o in range(0, 60 * 232, 232)]
    _send(run, 1.0, *flood)
    out = _send(run, 2.0, p.CmdOtaStatus())
    status = p.parse_message(p.FrameDecoder().feed(bytes.fromhex(out[0]["hex"]))[0])
    assert isinstance(status, p.MsgOtaStatus) and status.state == p.OtaState.RECEIVING
    assert 0 < status.next_expected_offset <= 16 * 232


def test_a_flood_of_resume_starts_never_crowds_out_the_ack_or_the_verify(
    lib: ctypes.CDLL,
) -> None:
    """Each resume START in RECEIVING owes a READY once the buffer is written; 40 of them
    behind one chunk, then the rest and FINISH, in one write: the READYs waiting are capped,
    so the last chunk's ACK and the verify still run and DONE comes."""
    run = _session(lib, window=16)
    _send(run, 0.0, _START)
    chunks = _chunks()
    out = _send(run, 1.0, chunks[0], *[_START] * 40, *chunks[1:], p.CmdOtaFinish())
    assert "MSG_OTA_DONE" in _types(out), _types(out)
    assert run.active == _IMAGE


def test_the_core_refuses_a_window_it_has_no_room_for(lib: ctypes.CDLL) -> None:
    for window in (0, 10_000):
        with pytest.raises(ValueError, match="refused the configuration"):
            _session(lib, window=window)


def test_a_status_ack_that_falls_with_an_interval_ack_is_sent_once(lib: ctypes.CDLL) -> None:
    """Section 7.4: "when two fall together, one is sent". A STATUS right behind the chunk
    that completes an ACK interval owes an ACK of the same offset: the C core sends one.
    (The Python model sends two; section 7.4 allows either, no vector decides.)"""
    run = _session(lib)
    _send(run, 0.0, _START)
    out = _send(run, 1.0, *_chunks()[:2], p.CmdOtaStatus())
    assert [(e["type"], e["hex"][12:23]) for e in out] == [
        ("MSG_OTA_STATUS", "02 10 00 00"),
        ("MSG_OTA_ACK", "10 00 00 00"),
    ]

"""The contract's vectors are strong enough: each rule issue 24 found no vector exercising
has a mutant here (the reference firmware model, or the C reference core, with that one
rule broken), and ``device.json`` must catch every mutant.

On the model, a mutant is a monkeypatch of :class:`~smartball_sim.firmware.model.SmartBallFirmware`
and the vectors are generated again under it (``smartball_sim.contract_vectors``): a vector
whose output, handled frames or states differ from the packaged one catches it. On the C
core, a mutant is a one-line source patch compiled into a temporary directory, and the
vectors are replayed against it (``tests/c_core.py``). The unmutated model and core pass
every vector; each mutant must fail the vector written for its rule (and may fail others).
The same tests build the C core with another verify split (``SB_VERIFY_STEP``): the
VERIFYING vectors do not depend on how a device splits its CRC.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from smartball_sim import contract_vectors
from smartball_sim.firmware.activation import Activation
from smartball_sim.firmware.c_core import FIRMWARE_DIR
from smartball_sim.firmware.flash import PAGE_SIZE
from smartball_sim.firmware.flash_controller import FlashController
from smartball_sim.firmware.model import SmartBallFirmware
from smartball_sim.firmware.types import OtaSession, _FlashJob

from .. import c_core

PACKAGED: list[dict[str, Any]] = contract.vectors("device.json")["vectors"]
V1 = [v for v in PACKAGED if "signed_only" not in v["device"]]

Fw = SmartBallFirmware


def _comparable(vector: dict[str, Any]) -> list[Any]:
    """What a replay must reproduce: per step, the output (without the informative times),
    the handled frames and the state."""
    return [
        ([{k: e[k] for k in e if k != "t"} for e in s["out"]], s["handled"], s["state"])
        for s in vector["steps"]
    ]


def _model_failures() -> set[str]:
    """The vectors the (patched) model no longer reproduces."""
    failing = set()
    for session in [
        *contract_vectors.story_sessions(),
        *contract_vectors.sessions.rule_sessions(),
        *contract_vectors.error_sessions(),
        *contract_vectors.table_sessions(),
    ]:
        (want,) = [v for v in V1 if v["name"] == session.name]
        try:
            got = contract_vectors.run_session(session)
        except Exception:  # a mutant may break the model's own assertions: caught too
            failing.add(session.name)
            continue
        if _comparable(got) != _comparable(want):
            failing.add(session.name)
    return failing


# --- the mutants of the model ---------------------------------------------------------------

Patch = Callable[[pytest.MonkeyPatch], None]


def _wrap(mp: pytest.MonkeyPatch, name: str, make: Callable[[Any], Any]) -> None:
    orig = getattr(Fw, name)
    mutant = make(orig)
    mp.setattr(Fw, name, mutant)
    for kind, handler in list(Fw._HANDLERS.items()):  # commands dispatch through this table
        if handler is orig:
            mp.setitem(Fw._HANDLERS, kind, mutant)


def status_no_ack_while_buffered(mp: pytest.MonkeyPatch) -> None:
    def make(orig: Any) -> Any:
        def on_status(self: Fw, msg: p.CmdOtaStatus) -> None:
            s = self.session
            if self.state == p.OtaState.RECEIVING and s is not None and s.unwritten_chunks:
                self._reply(self.status())
                s.accepted_since_ack = 0
                return
            orig(self, msg)

        return on_status

    _wrap(mp, "_on_status", make)


def resume_ready_at_once(mp: pytest.MonkeyPatch) -> None:
    def make(orig: Any) -> Any:
        def resume(self: Fw, s: OtaSession, msg: p.CmdOtaStart) -> None:
            def at_once(_s: OtaSession, action: Callable[..., None], *args: Any) -> None:
                action(*args)

            mp.setattr(self.flash_controller, "after_written", at_once)
            try:
                orig(self, s, msg)
            finally:
                mp.delattr(self.flash_controller, "after_written")

        return resume

    _wrap(mp, "_resume", make)


def _resume_keeps(*fields: str, only_in: p.OtaState | None = None) -> Patch:
    def patch(mp: pytest.MonkeyPatch) -> None:
        def make(orig: Any) -> Any:
            def resume(self: Fw, s: OtaSession, msg: p.CmdOtaStart) -> None:
                kept = {f: getattr(s, f) for f in fields}
                applies = only_in is None or self.state == only_in
                orig(self, s, msg)
                if applies:
                    for f, value in kept.items():
                        setattr(s, f, value)

            return resume

        _wrap(mp, "_resume", make)

    return patch


def accept_keeps_rejection_count(mp: pytest.MonkeyPatch) -> None:
    def make(orig: Any) -> Any:
        def on_data(self: Fw, msg: p.CmdOtaData) -> None:
            s = self.session
            before = (s.rejected, s.next_offset) if s is not None else None
            orig(self, msg)
            if s is not None and before is not None and s.next_offset != before[1]:
                s.rejected = before[0]

        return on_data

    _wrap(mp, "_on_data", make)


def status_keeps_ack_count(mp: pytest.MonkeyPatch) -> None:
    def make(orig: Any) -> Any:
        def on_status(self: Fw, msg: p.CmdOtaStatus) -> None:
            s = self.session
            count = s.accepted_since_ack if s is not None else 0
            orig(self, msg)
            if s is not None:
                s.accepted_since_ack = count

        return on_status

    _wrap(mp, "_on_status", make)


# Section 7.4's DATA checks after the state (rule 1), each refusing as the model does.
def _length(fw: Fw, s: OtaSession, msg: p.CmdOtaData) -> bool:
    if len(msg.data) == 0 or len(msg.data) > s.max_chunk:
        fw._error(p.ErrorCode.BAD_PARAM, what="mutant")
        return True
    return False


def _offset(fw: Fw, s: OtaSession, msg: p.CmdOtaData) -> bool:
    if msg.offset != s.next_offset:
        fw.data.reject_offset(s)
        return True
    return False


def _end(fw: Fw, s: OtaSession, msg: p.CmdOtaData) -> bool:
    if msg.offset + len(msg.data) > s.image_size:
        fw._error(p.ErrorCode.BAD_OFFSET)
        return True
    return False


def _words(fw: Fw, s: OtaSession, msg: p.CmdOtaData) -> bool:
    if len(msg.data) % p.WORD_SIZE and msg.offset + len(msg.data) != s.image_size:
        fw._error(p.ErrorCode.BAD_PARAM, what="mutant")
        return True
    return False


def _full(fw: Fw, s: OtaSession, msg: p.CmdOtaData) -> bool:
    if s.unwritten_chunks >= fw.rx_buffer_chunks(s):
        fw.data.reject_offset(s)
        return True
    return False


Check = Callable[[Fw, OtaSession, p.CmdOtaData], bool]
CHECKS: list[Check] = [_length, _offset, _end, _words, _full]  # rules 2..6, section 7.4's order


def _data_checks(order: list[Check]) -> Patch:
    """DATA's checks in ``order`` (in RECEIVING); what passes them all goes to the model."""

    def patch(mp: pytest.MonkeyPatch) -> None:
        def make(orig: Any) -> Any:
            def on_data(self: Fw, msg: p.CmdOtaData) -> None:
                s = self.session
                if self.state == p.OtaState.RECEIVING and s is not None:
                    for check in order:
                        if check(self, s, msg):
                            return
                orig(self, msg)

            return on_data

        _wrap(mp, "_on_data", make)

    return patch


def _swapped(i: int) -> Patch:
    order = list(CHECKS)
    order[i], order[i + 1] = order[i + 1], order[i]
    return _data_checks(order)


def length_before_state(mp: pytest.MonkeyPatch) -> None:
    """Rule 2 before rule 1, where both can be asked (ERASING has a session)."""

    def make(orig: Any) -> Any:
        def on_data(self: Fw, msg: p.CmdOtaData) -> None:
            s = self.session
            if self.state == p.OtaState.ERASING and s is not None and _length(self, s, msg):
                return
            orig(self, msg)

        return on_data

    _wrap(mp, "_on_data", make)


def zero_byte_data_accepted(mp: pytest.MonkeyPatch) -> None:
    """A 0-byte chunk at the expected offset taken as a chunk: nothing to write, counted."""

    def make(orig: Any) -> Any:
        def on_data(self: Fw, msg: p.CmdOtaData) -> None:
            s = self.session
            if (
                not msg.data
                and self.state == p.OtaState.RECEIVING
                and s is not None
                and msg.offset == s.next_offset
            ):
                s.rejected = None
                s.accepted_since_ack += 1
                if s.accepted_since_ack >= self.ack_interval(s):
                    s.accepted_since_ack = 0
                    self.flash_controller.after_written(s, self.data.ack, s, s.next_offset)
                return
            orig(self, msg)

        return on_data

    _wrap(mp, "_on_data", make)


def write_not_retried(mp: pytest.MonkeyPatch) -> None:
    def make(orig: Any) -> Any:
        def finish_job(self: FlashController, job: _FlashJob, start_next: bool = True) -> None:
            if not job.is_erase:
                job.retried = True  # as if this were the retry already
            orig(self, job, start_next)

        return finish_job

    mp.setattr(FlashController, "finish_job", make(FlashController.finish_job))


def progressive_never_erases(mp: pytest.MonkeyPatch) -> None:
    def make(orig: Any) -> Any:
        def on_data(self: Fw, msg: p.CmdOtaData) -> None:
            s = self.session
            if s is not None and s.progressive:
                s.erase_queued.update(range(self.flash.size // PAGE_SIZE))
            orig(self, msg)

        return on_data

    _wrap(mp, "_on_data", make)


def idle_gap_on_processing_time(mp: pytest.MonkeyPatch) -> None:
    """Bytes that arrive during a page erase's stall reach the decoder when it ends."""

    def make(orig: Any) -> Any:
        def receive(self: Fw, data: bytes) -> None:
            self._bind_loop()
            if self._stalled():
                self._at(self.flash_controller.stalled_until_us, lambda: orig(self, data))
                return
            orig(self, data)

        return receive

    _wrap(mp, "receive", make)


def failed_persist_ignored(mp: pytest.MonkeyPatch) -> None:
    orig = Activation._verify

    def verify(self: Activation, s: OtaSession) -> None:
        self._fw.persist_fail_next = False
        orig(self, s)

    mp.setattr(Activation, "_verify", verify)


#: mutant -> the vector written for its rule (it must fail; others may too)
MODEL_MUTANTS: dict[str, tuple[Patch, str]] = {
    "STATUS with chunks still buffered never sends its ACK": (
        status_no_ack_while_buffered,
        "session:status_acks_the_buffer_and_restarts_the_count",
    ),
    "a resume sends READY at once instead of after the buffer is written": (
        resume_ready_at_once,
        "session:resume_waits_for_the_buffer_and_restarts_the_counts",
    ),
    "a resume keeps the ACK and rejection counts": (
        _resume_keeps("accepted_since_ack", "rejected", only_in=p.OtaState.RECEIVING),
        "session:resume_waits_for_the_buffer_and_restarts_the_counts",
    ),
    "a resume keeps the ACK count": (
        _resume_keeps("accepted_since_ack", only_in=p.OtaState.RECEIVING),
        "session:resume_waits_for_the_buffer_and_restarts_the_counts",
    ),
    "a resume keeps the rejection count": (
        _resume_keeps("rejected", only_in=p.OtaState.RECEIVING),
        "session:resume_waits_for_the_buffer_and_restarts_the_counts",
    ),
    "accepting a chunk does not reset the rejection count": (
        accept_keeps_rejection_count,
        "session:accepting_a_chunk_restarts_the_rejection_count",
    ),
    "STATUS does not restart the ACK count": (
        status_keeps_ack_count,
        "session:status_acks_the_buffer_and_restarts_the_count",
    ),
    "the ERASING rate-limit count kept across a resume START": (
        _resume_keeps("rejected", only_in=p.OtaState.ERASING),
        "session:erasing_rate_limit_restarts_at_a_resume",
    ),
    "DATA checks: rule 3 (offset) before rule 2 (length)": (
        _swapped(0),
        "session:data_checks_in_order",
    ),
    "DATA checks: rule 4 (past the end) before rule 3 (offset)": (
        _swapped(1),
        "session:data_checks_in_order",
    ),
    "DATA checks: rule 5 (whole words) before rule 4 (past the end)": (
        _swapped(2),
        "session:data_checks_in_order",
    ),
    "DATA checks: rule 6 (buffer full) before rule 5 (whole words)": (
        _swapped(3),
        "session:data_checks_in_order_with_a_full_buffer",
    ),
    "DATA checks: rule 2 (length) before rule 1 (state)": (
        length_before_state,
        "cell:data_length:ERASING",
    ),
    "a 0-byte DATA accepted": (zero_byte_data_accepted, "session:data_checks_in_order"),
    "a failed word write not retried": (
        write_not_retried,
        "session:failed_flash_operations_are_retried",
    ),
    "a progressive-erase device that never erases": (
        progressive_never_erases,
        "session:progressive_erase",
    ),
    "the idle gap timed when the bytes are processed, not on arrival": (
        idle_gap_on_processing_time,
        "session:idle_gap_measured_on_arrival",
    ),
    "a failed persist of PENDING still answered DONE": (
        failed_persist_ignored,
        "session:failed_persist",
    ),
}


def test_the_unmutated_model_and_the_reimplemented_checks_pass_every_vector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _model_failures() == set()
    _data_checks(CHECKS)(monkeypatch)  # the mutants' checks, in section 7.4's order
    assert _model_failures() == set()


@pytest.mark.parametrize("mutant", list(MODEL_MUTANTS))
def test_the_vectors_catch_the_model_mutant(
    mutant: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    patch, vector = MODEL_MUTANTS[mutant]
    patch(monkeypatch)
    failing = _model_failures()
    with capsys.disabled():
        print(f"\nmodel mutant {mutant!r}: {len(failing)} vectors fail")
    assert vector in failing, f"{mutant}: {vector} passes (failing: {sorted(failing)})"


# --- the C core: mutants as source patches, and other verify splits -------------------------

#: mutant -> (the line of smartball_core.c, what replaces it, the vector written for it)
C_MUTANTS: dict[str, tuple[str, str, str]] = {
    "STATUS with chunks still buffered never sends its ACK": (
        "if (c->state == SB_RECEIVING) { /* a lost ACK cannot starve the host */",
        "if (c->state == SB_RECEIVING && c->chunk_count == 0) {",
        "session:status_acks_the_buffer_and_restarts_the_count",
    ),
    "a resume sends READY at once instead of after the buffer is written": (
        "                after_written(c, A_READY);",
        "                send_ready(c);",
        "session:resume_waits_for_the_buffer_and_restarts_the_counts",
    ),
    "a resume keeps the ACK and rejection counts": (
        'c->accepted_since_ack = c->rejected = 0; /* ERASING too: "since the START" */',
        "",
        "session:resume_waits_for_the_buffer_and_restarts_the_counts",
    ),
    "accepting a chunk does not reset the rejection count": (
        "    c->rejected = 0;\n    if (end == c->image_size",
        "    if (end == c->image_size",
        "session:accepting_a_chunk_restarts_the_rejection_count",
    ),
    "STATUS does not restart the ACK count": (
        "            c->accepted_since_ack = 0;\n            after_written(c, A_ACK);",
        "            after_written(c, A_ACK);",
        "session:status_acks_the_buffer_and_restarts_the_count",
    ),
    "the ERASING rate-limit count kept across a resume START": (
        'c->accepted_since_ack = c->rejected = 0; /* ERASING too: "since the START" */',
        "c->accepted_since_ack = 0; if (c->state == SB_RECEIVING) c->rejected = 0;",
        "session:erasing_rate_limit_restarts_at_a_resume",
    ),
    "DATA checks: rule 5 (whole words) before rule 4 (past the end)": (
        "    if (end > c->image_size) {",
        "    if ((n & 3u) && end != c->image_size) {\n        refuse(c, SB_E_BAD_PARAM);\n"
        "        return;\n    }\n    if (end > c->image_size) {",
        "session:data_checks_in_order",
    ),
    "a 0-byte DATA accepted": (
        "if (n == 0 || n > c->max_chunk) {",
        "if (n > c->max_chunk) {",
        "session:data_checks_in_order",
    ),
    "a failed word write not retried": (
        "if (!ok && c->op_retried == 0) {",
        "if (!ok && c->op_retried == 0 && kind == OP_ERASE) {",
        "session:failed_flash_operations_are_retried",
    ),
    "a progressive-erase device that never erases": (
        "        if (c->progressive &&",
        "        if (c->progressive && c->pages == 0 &&",
        "session:progressive_erase",
    ),
    "a failed persist of PENDING still answered DONE": (
        ": c->hal->persist_pending(c->hal->ctx, c->image_size, c->image_crc32)) != 0) {",
        ": c->hal->persist_pending(c->hal->ctx, c->image_size, c->image_crc32)) != 0 && 0) {",
        "session:failed_persist",
    ),
}


def _make(source: Path, build: Path, cflags: str = "") -> ctypes.CDLL:
    if shutil.which(os.environ.get("CC", "gcc")) is None or shutil.which("make") is None:
        pytest.skip("the C core needs a C compiler and make (Debian: apt-get install gcc make)")
    subprocess.run(
        ["make", "-s", "-C", str(source), "host", f"BUILD={build}", f"EXTRA_CFLAGS={cflags}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return c_core.load(build / "host" / "libsmartball_core.so")


@contextmanager
def _firmware_copy(tmp_path: Path) -> Iterator[Path]:
    source = tmp_path / "firmware"
    shutil.copytree(FIRMWARE_DIR, source, ignore=shutil.ignore_patterns("build"))
    yield source


def _c_failures(lib: ctypes.CDLL) -> set[str]:
    failing = set()
    for vector in V1:
        try:
            failure = c_core.vector_failure(lib, vector)
        except AssertionError:  # the harness caught a flash misuse: a failure too
            failure = "misuse"
        if failure:
            failing.add(vector["name"])
    return failing


@pytest.mark.parametrize("mutant", list(C_MUTANTS))
def test_the_vectors_catch_the_c_core_mutant(
    mutant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line, replacement, vector = C_MUTANTS[mutant]
    with _firmware_copy(tmp_path) as source:
        core = source / "src" / "smartball_core.c"
        text = core.read_text()
        assert text.count(line) == 1, f"{mutant}: the line to mutate is not there once: {line!r}"
        core.write_text(text.replace(line, replacement))
        failing = _c_failures(_make(source, tmp_path / "build"))
    with capsys.disabled():
        print(f"\nC core mutant {mutant!r}: {len(failing)} vectors fail")
    assert vector in failing, f"{mutant}: {vector} passes (failing: {sorted(failing)})"


@pytest.mark.parametrize("step", [1024, 512 * 1024], ids=["per-1KB", "whole-bank"])
def test_the_vectors_hold_for_any_verify_split(
    step: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SB_VERIFY_STEP: how many bytes of the CRC one sb_poll reads (the default 16; a
    whole-bank step is a one-shot CRC, during which nothing else is handled). Every v1
    vector passes either way, the VERIFYING cells included."""
    with _firmware_copy(tmp_path) as source:
        lib = _make(source, tmp_path / "build", f"-DSB_VERIFY_STEP={step}u")
    failing = _c_failures(lib)
    with capsys.disabled():
        print(
            f"\nC core, SB_VERIFY_STEP={step}: {len(V1) - len(failing)} of {len(V1)} vectors pass"
        )
    assert not failing, sorted(failing)

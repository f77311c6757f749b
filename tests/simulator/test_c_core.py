"""The C reference core (``firmware/``) against the contract's vectors, and a fuzz of bytes.

Every vector of ``codec.json``, ``decoder.json`` and ``device.json`` is replayed against the
C core through ctypes (``tests/c_core.py`` holds the harness and its replay model); each
file's test prints how many pass and fails with the first difference of each vector that
does not. Set SMARTBALL_C_CORE_LIB to run a prebuilt core (CI's sanitizer and coverage
builds); otherwise the test builds one with ``make -C firmware host``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event as label
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import Manifest
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link.nus import watch_links
from pytest_smartball.loops import run as run_loop
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.faults import FaultPlan
from smartball_sim.firmware.c_core import FIRMWARE_DIR
from smartball_sim.firmware.c_firmware import CFirmware
from smartball_sim.fuzz_inputs import fault_plans, image_specs

from .. import c_core
from ..c_core import PAGE

VECTORS = Path(p.__file__).resolve().parent / "vectors"


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    prebuilt = os.environ.get(c_core.LIB_ENV)
    if prebuilt:
        return c_core.load(Path(prebuilt))
    try:
        path = c_core.build_library(tmp_path_factory.mktemp("c-core"))
    except c_core.MissingCompiler as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
    return c_core.load(path)


def _vectors(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())["vectors"]
    return vectors


def _report(name: str, passed: int, total: int, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nC core: {name}: {passed} of {total} vectors pass")


def _codec_failure(lib: ctypes.CDLL, v: dict[str, Any]) -> str | None:
    """A device encodes device messages and decodes commands; the other directions are the
    host's (answered ``None``: not the device's, counted apart)."""
    frame = bytes.fromhex(v["hex"])
    type_ = p.MsgType[v["type"]]
    payload = frame[4:-2]
    is_command = type_ < 0x80
    fields = v.get("fields", v.get("decodes_to"))
    if "error" in v or "decodes_to" in v or is_command:
        if not is_command:
            return None
        got = (ctypes.c_uint32 * 4)()
        code = lib.sb_parse_command(type_, payload, len(payload), got)
        if "error" in v:
            return None if code == p.ErrorCode.BAD_FRAME else f"{v['name']}: parsed, code {code}"
        if code != 0:
            return f"{v['name']}: refused with code {code}"
        want: list[int] = []
        if type_ == p.MsgType.CMD_OTA_START:
            assert fields is not None
            want = [fields["image_size"], fields["image_crc32"], fields["chunk_size"]]
            want.append(fields["flags"])
        elif type_ == p.MsgType.CMD_OTA_MANIFEST:
            assert fields is not None
            m = bytes.fromhex(fields["manifest"])
            want = [int.from_bytes(m[i : i + 4], "little") for i in (8, 12, 16, 20)]
        elif type_ == p.MsgType.CMD_OTA_DATA:
            assert fields is not None
            data = bytes.fromhex(fields["data"])
            want = [fields["offset"], len(data), 0, 0]
            if payload[4:] != data:
                return f"{v['name']}: data differs"
        if want and list(got) != want:
            return f"{v['name']}: fields {list(got)}, the vector wants {want}"
        return ""
    assert fields is not None
    values = [v for k, v in fields.items() if k != "text"]
    text = fields.get("text", "").encode()
    out = ctypes.create_string_buffer(64)
    n = lib.sb_encode(out, type_, (ctypes.c_uint32 * 11)(*values), text, len(text))
    if out.raw[:n] != frame:
        return f"{v['name']}: encoded {out.raw[:n].hex(' ')}, the vector wants {v['hex']}"
    return ""


def test_codec_vectors(lib: ctypes.CDLL, capsys: pytest.CaptureFixture[str]) -> None:
    vectors = _vectors("codec.json")
    results = {v["name"]: _codec_failure(lib, v) for v in vectors}
    device_side = {k: r for k, r in results.items() if r is not None}
    failures = [r for r in device_side.values() if r]
    with capsys.disabled():
        print(
            f"\nC core: codec.json: {len(device_side) - len(failures)} of {len(device_side)} "
            f"device-side vectors pass ({len(vectors) - len(device_side)} are the host's: "
            "device messages decoded, too short)"
        )
    assert not failures, "\n".join(failures)
    assert len(device_side) >= 20  # a filter that skipped everything would pass


def test_decoder_vectors(lib: ctypes.CDLL, capsys: pytest.CaptureFixture[str]) -> None:
    vectors = _vectors("decoder.json")
    failures = []
    for v in vectors:
        got = c_core.decode(lib, v)
        want = {k: v[k] for k in ("frames", "stats", "buffered")}
        if got != want:
            failures.append(f"{v['name']}: the C decoder gives {got}, the vector wants {want}")
    _report("decoder.json", len(vectors) - len(failures), len(vectors), capsys)
    assert not failures, "\n".join(failures)


def test_device_vectors(lib: ctypes.CDLL, capsys: pytest.CaptureFixture[str]) -> None:
    """Every vector, a v1 device's and a signed-only device's (section 16: the C core with
    the HAL's crypto hooks), none left out."""
    vectors = _vectors("device.json")
    failures = [f for f in (c_core.vector_failure(lib, v) for v in vectors) if f]
    _report("device.json", len(vectors) - len(failures), len(vectors), capsys)
    signed = sum("signed_only" in v["device"] for v in vectors)
    with capsys.disabled():
        print(f"C core: device.json: {signed} of them of a signed-only device")
    assert signed >= 80  # a filter that left section 16 out would pass
    assert not failures, "\n".join(failures)


# --- a fuzz of bytes into the core ----------------------------------------------------------

_SESSION_DEVICE = _vectors("device.json")[0]["device"]
_FRAMES = [
    p.encode(p.CmdInfo()),
    p.encode(p.CmdOtaStatus()),
    p.encode(p.CmdOtaAbort()),
    p.encode(p.CmdOtaFinish()),
    p.encode(p.CmdOtaStart(image_size=40, image_crc32=p.crc32(bytes(40)), chunk_size=8)),
    p.encode(p.CmdOtaStart(image_size=40, image_crc32=0, chunk_size=500, flags=1)),
]


def _data_frames() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda offset, size: p.encode(p.CmdOtaData(offset=offset, data=bytes(size))),
        st.sampled_from([0, 8, 16, 24, 32, 36, 40, 4096]),
        st.integers(0, 12),
    )


_PIECES = st.lists(
    st.tuples(
        st.sampled_from([0, 1e-6, 50e-6, 0.01, 0.09, 0.6, 1.5]),
        st.one_of(st.sampled_from(_FRAMES), _data_frames(), st.binary(max_size=40)),
        st.sampled_from([None, None, None, "link_lost", "reset", "fail"]),
    ),
    max_size=25,
)


@pytest.mark.parametrize("progressive", [False, True])
@given(pieces=_PIECES)
def test_fuzz_bytes_into_the_core(
    lib: ctypes.CDLL, progressive: bool, pieces: list[tuple[float, bytes, str | None]]
) -> None:
    """Any bytes, any timing, link drops, resets and failing flash operations: the core
    never misuses the flash (one operation at a time, no third write of a word: the harness
    asserts), sends only whole valid frames of protocol v1, and settles. Under the
    sanitizer build this is also the memory-safety fuzz."""
    device = dict(_SESSION_DEVICE, progressive_erase=progressive, resets_when_asked=True)
    run = c_core.Replay(lib, device)
    at = 0.0
    for delay, data, event in pieces:
        at += delay
        step: dict[str, Any] = {"at_s": at, "in": data.hex(" ")}
        if event == "fail":
            step["flash_fail_next"] = 1
        elif event is not None:
            step[event] = True
        run.apply(step)
        run.run_until(round(at * 1e9))
    run.run_until(round((at + 3.0) * 1e9))  # settles: nothing left that never ends
    assert run.out is not None
    for entry in run.out:  # every notification decoded into a known message (c_core)
        assert "event" in entry or entry["type"].startswith("MSG_")
    assert run._decoder.buffered == 0 and run._decoder.stats.dropped_bytes == 0


# --- what no vector exercises: the platform failing under the core --------------------------

_IMAGE = bytes(range(40))


def _session(lib: ctypes.CDLL, window: int = 4, **device: Any) -> c_core.Replay:
    """A device of the vectors' kind with ``window`` (its buffer as large), resetting when
    asked (the bootloader model switches to a verified image)."""
    flash = dict(_SESSION_DEVICE["flash"], rx_buffer_chunks=window)
    config = dict(_SESSION_DEVICE, resets_when_asked=True, window=window, flash=flash)
    return c_core.Replay(lib, {**config, **device})


def _send(run: c_core.Replay, at_s: float, *msgs: p.Message) -> list[dict[str, Any]]:
    """Send ``msgs`` at ``at_s`` and run 0.5 s; what the core sent meanwhile."""
    before = len(run.out)
    run.apply({"at_s": at_s, "in": b"".join(p.encode(m) for m in msgs).hex(" ")})
    run.run_until(round((at_s + 0.5) * 1e9))
    return run.out[before:]


def _types(out: list[dict[str, Any]]) -> list[str]:
    return [e.get("code", e.get("type", e.get("event", ""))) for e in out]


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


def test_manifest_vectors(lib: ctypes.CDLL, capsys: pytest.CaptureFixture[str]) -> None:
    """manifest.json: each signed head as CMD_OTA_MANIFEST to a signed-only C core in IDLE
    (the file's device: the test key, counter 3): accepted (MSG_OTA_STATUS) or the error of
    the first check that refuses it, section 16.1's order."""
    data = json.loads((VECTORS / "manifest.json").read_text())
    device = data["device"]
    trust = {k: device[k] for k in ("trusted_key_ids", "security_counter")}
    failures = []
    for v in data["vectors"]:
        run = _session(lib, staging_capacity=device["staging_capacity"], signed_only=trust)
        frame = p.encode_frame(p.MsgType.CMD_OTA_MANIFEST, bytes.fromhex(v["head"]))
        before = len(run.out)
        run.apply({"at_s": 0.0, "in": frame.hex(" ")})
        run.run_until(round(0.1 * 1e9))
        got = _types(run.out[before:])
        want = ["MSG_OTA_STATUS"] if v["device_answers"] == "accepted" else [v["device_answers"]]
        if got != want:
            failures.append(f"{v['name']}: the C core answers {got}, the vector wants {want}")
    _report("manifest.json", len(data["vectors"]) - len(failures), len(data["vectors"]), capsys)
    assert not failures, "\n".join(failures)


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


# --- the C core inside the simulated SmartBall (--sim-firmware=c) ---------------------------


@pytest.mark.asyncio
@pytest.mark.sim_only
@pytest.mark.parametrize(
    "faults",
    ["", "slow-erase:3s,drop@erase:50%,drop@offset:20000,reboot@cmd:CMD_OTA_DATA#40,flash-fail"],
)
async def test_the_simulated_smartball_runs_the_c_core(
    lib: ctypes.CDLL, faults: str, looptime: float
) -> None:
    """The OTA engine updates a simulated SmartBall whose firmware is the C core, also
    through link drops during the erase and the transfer and a reset mid-transfer; the
    simulator's flash holds the new image afterwards and INFO reports it."""
    target = make_sim_target(faults=faults, firmware_core="c", firmware_library=lib._name, seed=3)
    device = target.sim
    assert device is not None and isinstance(device.firmware, CFirmware)
    image = FirmwareImage(random.Random(5).randbytes(50_000), "c-core.bin")
    result = await OtaEngine(image, target.backend, address=target.address).run()
    assert result.success, result.error
    assert device.firmware.active.data == image.data
    assert device.firmware.info().active_image_crc32 == p.crc32(image.data)
    if faults:
        assert len(device.fault_log) >= 3, device.fault_log  # the faults did fire


# --- differential: the Python model and the C core on the same sessions ---------------------

_DIFF_IMAGE = bytes(range(7, 47))  # 40 bytes: one page, ten words
_DIFF_BIG = bytes(i * 7 & 0xFF for i in range(9000))  # three pages: DATA between them


def _diff_manifests() -> list[p.Message]:
    """Section 16's commands: MANIFEST of either image (signed by the test key, counter 3,
    the device's), a downgrade, a forged signature, one whose SHA-256 is not the image's
    (its size and CRC are: only the digest of the staged flash tells), and CONFIRM. A v1
    device answers them UNKNOWN_COMMAND."""
    key = signing.test_key()

    def head(manifest: Manifest) -> p.Message:
        raw = manifest.encode()
        return p.CmdOtaManifest(manifest=raw, signature=key.sign(raw))

    small, big = (signing.sign(i, key, (2, 0, 0), 3).manifest for i in (_DIFF_IMAGE, _DIFF_BIG))
    forged = signing.sign(_DIFF_IMAGE, key, (2, 0, 0), 3)
    return [
        head(small),
        head(big),
        head(dataclasses.replace(small, security_counter=2)),
        head(dataclasses.replace(small, image_sha256=bytes(32))),
        p.CmdOtaManifest(manifest=forged.manifest_bytes, signature=bytes(64)),
        p.CmdOtaConfirm(),
    ]


def _diff_frames() -> st.SearchStrategy[bytes]:
    """One write: a few commands, DATA in runs of consecutive chunks (what a host streams),
    a START of one of two images (a resume when its session is under way), a MANIFEST or
    CONFIRM."""
    small, big = p.crc32(_DIFF_IMAGE), p.crc32(_DIFF_BIG)
    commands: list[p.Message] = [
        *_DIFF_MANIFESTS,
        p.CmdInfo(),
        p.CmdOtaStatus(),
        p.CmdOtaAbort(),
        p.CmdOtaFinish(),
        p.CmdOtaStart(image_size=40, image_crc32=small, chunk_size=8),
        p.CmdOtaStart(image_size=40, image_crc32=small, chunk_size=12, flags=1),
        p.CmdOtaStart(image_size=9000, image_crc32=big, chunk_size=8),
        p.CmdOtaStart(image_size=9000, image_crc32=big, chunk_size=8, flags=1),
        p.CmdOtaStart(image_size=40, image_crc32=small ^ 1, chunk_size=8),
        p.CmdOtaStart(image_size=0, image_crc32=small, chunk_size=8),
        p.CmdOtaData(offset=0, data=b""),
    ]

    def run(which: str, first: int, count: int, size: int) -> list[p.Message]:
        image = _DIFF_BIG if which == "big" else _DIFF_IMAGE
        offsets = range(first * size, min(len(image), (first + count) * size), size)
        return [p.CmdOtaData(offset=o, data=image[o : o + size]) for o in offsets]

    runs = st.builds(
        run,
        st.sampled_from(["small", "big"]),
        st.one_of(st.just(0), st.integers(0, 5)),  # a stream from the start, mostly
        st.integers(1, 6),
        st.sampled_from([8, 4, 12, 3]),
    )
    singles: st.SearchStrategy[list[p.Message]] = st.sampled_from(commands).map(lambda m: [m])
    # A whole update of the small image in one write, with a manifest (its own, or one
    # whose digest is not the image's): what reaches a signed-only device's verify, swap,
    # TEST, CONFIRM and revert often enough to compare them.
    whole = [
        p.CmdOtaStart(image_size=40, image_crc32=small, chunk_size=8),
        *run("small", 0, 5, 8),
        p.CmdOtaFinish(),
    ]
    wholes = st.sampled_from([_DIFF_MANIFESTS[0], _DIFF_MANIFESTS[3]]).map(lambda m: [m, *whole])
    parts = st.one_of(singles, runs, wholes)
    return st.lists(parts, min_size=1, max_size=3).map(
        lambda groups: b"".join(p.encode(m) for group in groups for m in group)
    )


_DIFF_MANIFESTS = _diff_manifests()


@settings(max_examples=300)
@given(
    progressive=st.booleans(),
    signed=st.booleans(),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.03, 0.1, 0.2, 0.3, 1.5]),
            _diff_frames(),
            st.sampled_from([None, None, None, None, "link_lost", "reset", "fail"]),
        ),
        min_size=1,
        max_size=12,
    ),
)
def _the_model_and_the_c_core_answer_alike(
    lib: ctypes.CDLL,
    progressive: bool,
    signed: bool,
    steps: list[tuple[float, bytes, str | None]],
) -> None:
    """The same timed sessions through the Python model (the runner behind device.json)
    and the C core, a v1 device's and a signed-only device's (counter 3, the test key:
    manifests, UNSIGNED, the digest, the bootloader's swap, TEST, CONFIRM and the revert
    at a reset): the same messages (errors by code and command; an ACK repeated back to
    back counts once, the one difference the contract leaves open), the same commands
    handled and the same state after every step."""
    from hypothesis import reject

    from smartball_sim.contract_vectors.runner import DeviceConfig, Step, VectorSession, run_session

    at = 0.0
    session_steps = []
    for gap, data, event in steps:
        at = round(at + gap, 6)
        session_steps.append(
            Step(
                at,
                data,
                link_lost=event == "link_lost",
                reset=event == "reset",
                flash_fail_next=1 if event == "fail" else 0,
            )
        )
    config = DeviceConfig(
        progressive_erase=progressive, resets=True, signed=signed, security_counter=3
    )
    try:
        vector = run_session(VectorSession("diff", "differential", session_steps, config))
    except AssertionError:
        reject()  # a message coinciding with the next input: the order would be a tie
    failure = c_core.vector_failure(lib, vector, repeated_acks_once=True)
    assert failure is None, failure
    _IDENTICAL["signed" if signed else "v1"] += 1
    sent = {(o.get("type"), o.get("code")) for step in vector["steps"] for o in step["out"]}
    for reached in (("MSG_OTA_DONE", None), ("MSG_ERROR", "DIGEST_MISMATCH")):
        if reached in sent:
            label(f"{'signed' if signed else 'v1'}: {reached[1] or reached[0]}")


#: Sessions the model and the C core answered identically, by device kind (printed in CI).
_IDENTICAL: Counter[str] = Counter()


def test_the_model_and_the_c_core_answer_alike(
    lib: ctypes.CDLL, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs the differential above and prints how many sessions were identical (the
    sessions hypothesis rejected, a message tied with the next input, are not counted)."""
    _IDENTICAL.clear()
    _the_model_and_the_c_core_answer_alike(lib)
    with capsys.disabled():
        print(
            f"\nC core: differential: {sum(_IDENTICAL.values())} sessions identical on the "
            f"Python model and the C core ({_IDENTICAL['v1']} of a v1 device, "
            f"{_IDENTICAL['signed']} of a signed-only one)"
        )
    assert sum(_IDENTICAL.values()) >= 290  # of 300 examples: hardly any rejected as ties
    assert _IDENTICAL["v1"] and _IDENTICAL["signed"]  # both kinds of device were compared


def _update_as_seen(case: tuple[bytes, FaultPlan, int, bool], **device: Any) -> tuple[Any, ...]:
    """One whole update through the simulator (virtual time) with ``case``'s image, fault
    plan, seed and erase mode: its outcome, the device's image after it, the engine's
    events without their times (and without the device's error texts, which the C core
    leaves out, as section 5 allows) and the faults that fired."""
    data, plan, seed, progressive = case
    target = make_sim_target(faults=plan, seed=seed, progressive_erase=progressive, **device)
    assert target.sim is not None
    frames: list[tuple[Any, ...]] = []
    stop = watch_links(lambda _link: _FramesSeen(frames))
    try:
        engine = OtaEngine(FirmwareImage(data, "plan.bin"), target.backend, address=target.address)
        result = run_loop(virtual=True, coro=engine.run())
    finally:
        stop()
    events = [
        (e.kind, e.detail.split(":")[0] if e.kind in ("device-error", "end") else e.detail)
        for e in result.events
    ]
    faults = [str(record).split(maxsplit=1)[1] for record in target.sim.fault_log]
    return result.outcome, result.failure, target.sim.firmware.active.data, events, faults, frames


class _FramesSeen:
    """A link observer keeping what the device sent, frame by frame (an MSG_ERROR by its
    code and command: the C core sends no error text)."""

    def __init__(self, frames: list[tuple[Any, ...]]) -> None:
        self.frames = frames
        self.decoder = p.FrameDecoder()

    def connected(self, t: float) -> None:
        self.frames.append(("connected",))

    def disconnected(self, t: float, by_host: bool) -> None:
        self.frames.append(("disconnected", by_host))

    def host_bytes(self, t: float, data: bytes) -> None:
        pass

    def device_bytes(self, t: float, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            message = p.parse_message(frame)
            if isinstance(message, p.MsgError):
                self.frames.append(("MSG_ERROR", message.code, message.command))
            else:
                self.frames.append((type(message).__name__, p.encode(message)))


@settings(max_examples=100, deadline=None)
@given(
    data=image_specs(max_size=20_000).map(lambda spec: spec.data),
    plan=fault_plans(max_faults=4, image_size=20_000),
    seed=st.integers(0, 3),
    progressive=st.booleans(),
)
def test_the_model_and_the_c_core_take_seeded_fault_plans_alike(
    lib: ctypes.CDLL, data: bytes, plan: FaultPlan, seed: int, progressive: bool
) -> None:
    """The differential through the whole simulator: the same seeded fault plans (radio,
    link, flash and reset faults, either erase mode) on the Python model and on the C core
    give the same outcome, the same image in the device, the same frames from the device
    (errors by code and command), the same engine events step by step and the same faults
    fired."""
    case = (data, plan, seed, progressive)
    model = _update_as_seen(case)
    core = _update_as_seen(case, firmware_core="c", firmware_library=lib._name)
    assert core == model


# --- the CLI's --sim-firmware --------------------------------------------------------------


class _SpyCore(CFirmware):
    """A C core that counts its instances (the proof that a front end ran the C core)."""

    built = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        type(self).built += 1


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    from pytest_smartball.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


@pytest.mark.sim_only
def test_the_cli_flashes_the_c_core_through_the_field_faults(
    lib: ctypes.CDLL,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``smartball-ota flash build/demo.sbi --sim --sim-firmware=c --faults field-linux``
    succeeds on the signed-only ball (the default ``--sim-trust=test``): the image runs,
    confirmed, with its counter; and the raw ``demo.bin`` on a v1 ball
    (``--sim-trust=none``). It is the C core the simulated SmartBall ran each time (the
    core named by SMARTBALL_C_CORE_LIB here, the build of firmware/ otherwise)."""
    from smartball_sim import device as sim_device
    from smartball_sim.make_image import make_image

    cores: list[CFirmware] = []

    class Spy(_SpyCore):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            cores.append(self)

    monkeypatch.setattr(sim_device, "CFirmware", Spy)
    monkeypatch.setenv(c_core.LIB_ENV, lib._name)
    image = make_image(seed=1)
    path = tmp_path / "demo.bin"
    path.write_bytes(image)
    key = FIRMWARE_DIR.parent / "pytest_smartball/contract/keys/TEST-ONLY-signing-key.pem"
    sbi = tmp_path / "demo.sbi"
    argv = ("--version", "1.1.0", "--counter", "4", "-o", str(sbi))
    assert _cli(capsys, "sign", str(path), "--key", str(key), *argv)[0] == 0
    field = ("--sim", "--sim-firmware=c", "--faults", "field-linux")
    code, text = _cli(capsys, "flash", str(sbi), *field)
    assert code == 0, text
    assert "Update succeeded" in text and len(cores) == 1
    signed = cores[0]
    assert signed.signed_only and signed.active.data == image and signed.swap_resumes == 0
    assert (signed.image_state, signed.security_counter) == (p.ImageState.CONFIRMED, 4)
    assert signed.signed.security_counter == 4  # persisted, not only the core's RAM copy
    code, text = _cli(capsys, "flash", str(path), *field, "--sim-trust=none")
    assert code == 0, text
    assert len(cores) == 2 and not cores[1].signed_only and cores[1].active.data == image


@pytest.mark.sim_only
def test_the_cli_says_what_sim_firmware_cannot_do(
    lib: ctypes.CDLL, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One sentence and exit code 2 for: a core that is not there, a firmware bug (the C core
    has no bug switches), --sim-firmware-lib without --sim-firmware=c, --sim-firmware without
    --sim; nothing is flashed."""
    path = tmp_path / "fw.bin"
    path.write_bytes(random.Random(7).randbytes(20_000))
    cases = {
        "no such file": ("--sim", "--sim-firmware=c", f"--sim-firmware-lib={tmp_path}/no.so"),
        "firmware-bug": ("--sim", "--sim-firmware=c", "--sim-firmware-bug=ack-every-window"),
        "--sim-firmware=c only": ("--sim", f"--sim-firmware-lib={lib._name}"),
        "with --sim": ("--sim-firmware=c",),
    }
    for expected, options in cases.items():
        code, text = _cli(capsys, "flash", str(path), *options)
        lines = [line for line in text.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and expected in lines[0], (options, text)


# --- the bench's --sim-firmware ------------------------------------------------------------


@pytest.mark.sim_only
def test_the_bench_runs_the_c_core(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``python -m bench --sim-firmware=c`` measures updates of the C core: every update of
    its rows (the timed ones, stop-and-wait, the flaky profile) ran on the C core and
    succeeded, and the JSON says which firmware it measured."""
    from bench.__main__ import main as bench
    from smartball_sim import device as sim_device

    monkeypatch.setattr(_SpyCore, "built", 0)
    monkeypatch.setattr(sim_device, "CFirmware", _SpyCore)
    out = tmp_path / "bench.json"
    argv = ["--profiles", "default", "--sizes", "20000", "--wall-repeats", "1"]
    argv += ["--json", str(out), "--sim-firmware=c", f"--sim-firmware-lib={lib._name}"]
    assert bench(argv) == 0
    figures = json.loads(out.read_text())
    assert figures["firmware"] == "c"
    rows = figures["rows"]
    assert [(r["size"], r["progressive"]) for r in rows] == [(20000, False), (20000, True)]
    assert all(r["flaky_success"] and 0 < r["efficiency"] <= 1 for r in rows)
    assert _SpyCore.built == 2 * 3  # per row: the timed update, stop-and-wait, flaky
    with pytest.raises(SystemExit) as refused:
        bench(["--sim-firmware-lib", lib._name, "--json", str(out)])
    assert refused.value.code == 2


@pytest.mark.asyncio
@pytest.mark.sim_only
@pytest.mark.parametrize("size", [1, 20_000])
async def test_a_progressive_erase_under_the_field_erase_takes_the_models_time(
    lib: ctypes.CDLL, size: int, looptime: float
) -> None:
    """The field's slow erase (``slow-erase``) spreads the erase before READY over its
    pages; a progressive session's page erase is the 85 ms stall alone, as in the model.
    (The update fuzzer against the C core found the glue giving a progressive page its
    share of 15 s: the ACK of a 1-byte image came 15 s late.)"""
    image = FirmwareImage(random.Random(size).randbytes(size), "progressive.bin")
    durations = {}
    for core in ("python", "c"):
        options: dict[str, Any] = {"firmware_core": "c", "firmware_library": lib._name}
        target = make_sim_target(
            faults="slow-erase:15s", progressive_erase=True, **(options if core == "c" else {})
        )
        result = await OtaEngine(image, target.backend, address=target.address).run()
        assert result.success, (core, result.error)
        durations[core] = result.duration_s
    assert durations["c"] == pytest.approx(durations["python"], abs=0.1), durations

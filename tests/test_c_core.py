"""The C reference core (``firmware/``) against the contract's vectors, and a fuzz of bytes.

Every vector of ``codec.json``, ``decoder.json`` and ``device.json`` is replayed against the
C core through ctypes (``tests/c_core.py`` holds the harness and its replay model); each
file's test prints how many pass and fails with the first difference of each vector that
does not. Set SMARTBALL_C_CORE_LIB to run a prebuilt core (CI's sanitizer and coverage
builds); otherwise the test builds one with ``make -C firmware host``.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball import protocol as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.c_firmware import CFirmware

from . import c_core
from .c_core import PAGE

VECTORS = Path(p.__file__).resolve().parent / "contract" / "vectors"


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


#: The commands of signed updates (docs/protocol.md section 16): not in the C core yet.
SIGNED_UPDATE_TYPES = frozenset({p.MsgType.CMD_OTA_MANIFEST, p.MsgType.CMD_OTA_CONFIRM})


def _codec_failure(lib: ctypes.CDLL, v: dict[str, Any]) -> str | None:
    """A device encodes device messages and decodes commands; the other directions are the
    host's (answered ``None``: not the device's, counted apart)."""
    frame = bytes.fromhex(v["hex"])
    type_ = p.MsgType[v["type"]]
    if type_ in SIGNED_UPDATE_TYPES or v["name"] == "msg_info_signed_only":
        return None  # section 16, which the C core does not implement yet (docs/firmware.md)
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
    n = lib.sb_encode(out, type_, (ctypes.c_uint32 * 8)(*values), text, len(text))
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
            "device messages decoded, too short; or of signed updates, not in the C core)"
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
    """Every vector of a v1 device; a signed-only device's (section 16) are not the C
    core's yet (docs/firmware.md), and are counted apart."""
    every = _vectors("device.json")
    vectors = [v for v in every if "signed_only" not in v["device"]]
    failures = [f for f in (c_core.vector_failure(lib, v) for v in vectors) if f]
    _report("device.json", len(vectors) - len(failures), len(vectors), capsys)
    with capsys.disabled():
        left_out = len(every) - len(vectors)
        print(f"C core: device.json: {left_out} vectors of a signed-only device left out")
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


def _diff_frames() -> st.SearchStrategy[bytes]:
    """One write: a few commands, DATA in runs of consecutive chunks (what a host streams),
    a START of one of two images (a resume when its session is under way)."""
    small, big = p.crc32(_DIFF_IMAGE), p.crc32(_DIFF_BIG)
    commands: list[p.Message] = [
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
    parts = st.one_of(singles, runs)
    return st.lists(parts, min_size=1, max_size=3).map(
        lambda groups: b"".join(p.encode(m) for group in groups for m in group)
    )


@settings(max_examples=300)
@given(
    progressive=st.booleans(),
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
def test_the_model_and_the_c_core_answer_alike(
    lib: ctypes.CDLL, progressive: bool, steps: list[tuple[float, bytes, str | None]]
) -> None:
    """The same timed sessions through the Python model (the runner behind device.json)
    and the C core: the same messages (errors by code and command; an ACK repeated back to
    back counts once, the one difference the contract leaves open), the same commands
    handled and the same state after every step."""
    from hypothesis import reject

    from smartball_sim.contract_vectors.runner import DeviceConfig, Session, Step, run_session

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
    config = DeviceConfig(progressive_erase=progressive, resets=True)
    try:
        vector = run_session(Session("diff", "differential", session_steps, config))
    except AssertionError:
        reject()  # a message coinciding with the next input: the order would be a tie
    failure = c_core.vector_failure(lib, vector, repeated_acks_once=True)
    assert failure is None, failure


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
    """``smartball-ota flash build/demo.bin --sim --sim-firmware=c --faults field-linux``
    succeeds, and it is the C core the simulated SmartBall ran (the core named by
    SMARTBALL_C_CORE_LIB here, the build of firmware/ otherwise)."""
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
    argv = ("flash", str(path), "--sim", "--sim-firmware=c", "--faults", "field-linux")
    code, text = _cli(capsys, *argv)
    assert code == 0, text
    assert "Update succeeded" in text and len(cores) == 1
    assert cores[0].active.data == image


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

"""The C reference core (``firmware/``) against the contract's vectors, and a fuzz of bytes.

Every vector of ``codec.json``, ``decoder.json``, ``device.json`` and ``manifest.json`` is
replayed against the C core through ctypes (``tests/c_core.py`` holds the harness and its
replay model); each file's test prints how many pass and fails with the first difference of
each vector that does not. Set SMARTBALL_C_CORE_LIB to run a prebuilt core (CI's sanitizer
and coverage builds); otherwise the ``lib`` fixture (tests/simulator/conftest.py) builds one
with ``make -C firmware host``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_smartball import contract
from pytest_smartball.contract import codec as p

from .. import c_core
from .c_core_sessions import (
    _SESSION_DEVICE,
    _report,
    _session,
    _types,
    _vectors,
)


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


def test_manifest_vectors(lib: ctypes.CDLL, capsys: pytest.CaptureFixture[str]) -> None:
    """manifest.json: each signed head as CMD_OTA_MANIFEST to a signed-only C core in IDLE
    (the file's device: the test key, counter 3): accepted (MSG_OTA_STATUS) or the error of
    the first check that refuses it, section 16.1's order."""
    data = contract.vectors("manifest.json")
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

"""Differential: the Python firmware model and the C core answer the same sessions alike,
frame by frame (hypothesis), and take the same seeded fault plans alike.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections import Counter
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
from pytest_smartball.targets import kind_of, simulated_update
from smartball_sim.faults import FaultPlan
from smartball_sim.fuzz_inputs import fault_plans, image_specs

from .. import c_core

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
    update = simulated_update(
        FirmwareImage(data, "plan.bin"),
        kind_of("sim"),
        faults=plan,
        seed=seed,
        progressive_erase=progressive,
        **device,
    )
    frames: list[tuple[Any, ...]] = []
    stop = watch_links(lambda _link: _FramesSeen(frames))
    try:
        result = update.run()
    finally:
        stop()
    device_ = update.device
    events = [
        (e.kind, e.detail.split(":")[0] if e.kind in ("device-error", "end") else e.detail)
        for e in result.events
    ]
    faults = [str(record).split(maxsplit=1)[1] for record in device_.fault_log]
    return result.outcome, result.failure, device_.firmware.active.data, events, faults, frames


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

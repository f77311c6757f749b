"""The protocol contract's vectors (pytest_smartball/contract/) against the codec and the
reference firmware model.

* The packaged vectors are exactly what the model and codec produce now, and the package
  ships them.
* Every vector replays: codec vectors through the codec, decoder vectors through
  FrameDecoder, device vectors through a harness of this file that compares as a C test
  must (MSG_ERROR by code and command only, everything else byte for byte), manifest
  vectors through the model and the host's signing.verify.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import looptime
import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import Manifest
from smartball_sim import contract_vectors
from smartball_sim.firmware.model import (
    FirmwareEvent,
    FirmwareEventKind,
    FlashTimings,
    SmartBallFirmware,
)

from .contract_cases import DEVICE_VECTORS


def _vectors(name: str) -> list[dict[str, Any]]:
    return contract.vectors(name)["vectors"]


# --- the files are current ------------------------------------------------------------------


@pytest.mark.parametrize("name", contract.VECTOR_FILES)
def test_packaged_vectors_are_what_the_model_produces_now(name: str) -> None:
    assert contract.vector_text(name) == contract_vectors.render(name), (
        f"{name} is stale: run python -m smartball_sim.contract_vectors --write and review the diff"
    )


def test_the_generators_check_mode_passes() -> None:
    assert contract_vectors.main(["--check"]) == 0


def test_setuptools_packages_the_contract_data() -> None:
    """The installed plugin (a HIL bench) reads these files: pyproject.toml must ship them."""
    import fnmatch
    import tomllib

    config = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text("utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["pytest_smartball.contract"]
    root = Path(contract.__file__).parent
    files = [f.relative_to(root).as_posix() for f in root.rglob("*.json")]
    # table, timing, flash layout
    assert len(files) == 3 + len(contract.VECTOR_FILES)
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    # The firmware-bug catalogue, beside the simulator (the CLI's --help reads it too).
    sim_patterns = config["tool"]["setuptools"]["package-data"]["smartball_sim"]
    assert any(fnmatch.fnmatch("firmware/bugs.json", pattern) for pattern in sim_patterns)


# --- codec vectors --------------------------------------------------------------------------


def _message(type_name: str, fields: dict[str, Any]) -> p.Message:
    cls = {c.TYPE.name: c for c in p._CLASSES.values()}[type_name]
    values = dict(fields)
    if cls is p.CmdOtaData:
        values["data"] = bytes.fromhex(values["data"])
    if cls is p.CmdOtaManifest:
        values = {k: bytes.fromhex(v) for k, v in values.items()}
    return cls(**values)


@pytest.mark.parametrize("vector", _vectors("codec.json"), ids=lambda v: v["name"])
def test_codec_vector(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    if "fields" in vector:
        msg = _message(vector["type"], vector["fields"])
        assert p.encode(msg) == frame
        assert p.decode(frame) == msg
    elif "decodes_to" in vector:
        assert p.decode(frame) == _message(vector["type"], vector["decodes_to"])
    else:
        with pytest.raises(p.ProtocolError):
            p.decode(frame)


def test_codec_vectors_cover_every_message_type() -> None:
    assert {v["type"] for v in _vectors("codec.json")} == {t.name for t in p.MsgType}


# --- decoder vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _vectors("decoder.json"), ids=lambda v: v["name"])
def test_decoder_vector(vector: dict[str, Any]) -> None:
    decoder = p.FrameDecoder()
    frames: list[p.Frame] = []
    drop_at = vector.get("link_drop_at_s")
    for piece in vector["input"]:
        if drop_at is not None and piece["at_s"] >= drop_at:
            decoder.reset()
            drop_at = None
        frames += decoder.feed(bytes.fromhex(piece["hex"]), piece["at_s"])
    assert [(f.type, f.payload.hex(" ")) for f in frames] == [
        (_type_byte(f["type"]), f["payload"]) for f in vector["frames"]
    ]
    assert {
        "frames": decoder.stats.frames,
        "dropped_bytes": decoder.stats.dropped_bytes,
        "bad_crc": decoder.stats.bad_crc,
        "bad_length": decoder.stats.bad_length,
    } == vector["stats"]
    assert decoder.buffered == vector["buffered"]


def _type_byte(name: str) -> int:
    return int(name, 16) if name.startswith("0x") else p.MsgType[name]


def test_the_resync_vector_tells_dropping_the_sof_from_skipping_the_frame() -> None:
    """The numbers issue 17 asks for, written here independently of the generator."""
    (vector,) = [v for v in _vectors("decoder.json") if v["name"] == "resync_drops_only_the_sof"]
    assert vector["input"] == [
        {"at_s": 0.0, "hex": "a5 14 06 00 a5 01 00 00 ac fb a5 12 00 00 9f e1"}
    ]
    assert [f["type"] for f in vector["frames"]] == ["CMD_INFO", "CMD_OTA_STATUS"]
    assert vector["stats"] == {"frames": 2, "dropped_bytes": 4, "bad_crc": 1, "bad_length": 0}


def test_decoder_vectors_include_the_required_cases() -> None:
    names = {v["name"] for v in _vectors("decoder.json")}
    assert {
        "resync_drops_only_the_sof",
        "stalled_partial_frame_discarded",
        "payload_512",
        "payload_513",
    } <= names


# --- device vectors, replayed as a C test would ------------------------------------------------


@dataclass
class Replay:
    """The reference model run through a device vector's inputs; what it sent per step."""

    vector: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)

    def run(self) -> None:
        config = self.vector["device"]
        flash = config["flash"]
        loop = looptime.new_event_loop(start=0, noop_cycles=8)
        decoder = p.FrameDecoder()
        out: list[dict[str, Any]] = []
        handled: list[dict[str, Any]] = []
        active = _active_image(config)

        def sent(frame: bytes) -> None:
            for f in decoder.feed(frame):
                msg = p.parse_message(f)
                if isinstance(msg, p.MsgError):  # texts are informative: code and command only
                    out.append({"type": "MSG_ERROR", "code": msg.code_name, "cmd": msg.command})
                else:
                    out.append({"type": msg.TYPE.name, "hex": frame.hex(" ")})

        def reset() -> None:
            out.append({"event": "reset"})
            if config["resets_when_asked"]:
                fw.power_cycle()

        def observe(event: FirmwareEvent) -> None:
            if event.kind is FirmwareEventKind.HANDLED:
                handled.append({"command": event.msg_type, "state": fw.state.name})

        fw = SmartBallFirmware(
            active_image=active,
            version=tuple(config["active_image"]["version"]),
            staging_capacity=config["staging_capacity"],
            window=config["window"],
            progressive_erase=config["progressive_erase"],
            timings=FlashTimings(
                erase_page_s=flash["erase_page_s"],
                write_word_s=flash["write_word_s"],
                verify_s_per_byte=flash["verify_s_per_byte"],
                rx_buffer_chunks=flash["rx_buffer_chunks"],
            ),
            send=sent,
            request_reset=reset,
            observe=observe,
            **_trust(config),
        )
        steps = self.vector["steps"]

        fill = flash.get("staging_fill", 0xFF)  # a bank that still holds an old image
        fw.flash.overwrite(0, bytes([fill]) * fw.flash.size)

        async def act(step: dict[str, Any]) -> None:
            if step.get("flash_fail_next"):
                fw.flash.fail_next = step["flash_fail_next"]
            if step.get("persist_fails"):
                fw.persist_fail_next = True
            if step.get("link_lost"):
                fw.link_lost()
            if step.get("reset"):
                fw.power_cycle()
            if "in" in step:
                fw.receive(bytes.fromhex(step["in"]))

        try:
            for i, step in enumerate(steps):
                loop.run_until_complete(asyncio.sleep(step["at_s"] - loop.time()))
                out.clear()
                handled.clear()
                loop.run_until_complete(act(step))
                end = steps[i + 1]["at_s"] if i + 1 < len(steps) else self.vector["until_s"]
                loop.run_until_complete(asyncio.sleep(end - loop.time()))
                self.steps.append(
                    {"out": list(out), "handled": list(handled), "state": fw.state.name}
                )
        finally:
            loop.close()


def _trust(config: dict[str, Any]) -> dict[str, Any]:
    """A signed-only device's provisioning (docs/protocol.md section 16): the test key."""
    signed = config.get("signed_only")
    if signed is None:
        return {}
    key = signing.test_trusted_key()
    assert signed["trusted_key_ids"] == [f"{key.key_id:08x}"]
    return {"trusted_keys": [key], "security_counter": signed["security_counter"]}


def test_the_signed_stories_show_test_confirmed_and_reverted() -> None:
    """The INFO of the signed stories: TEST after the update, CONFIRMED with the raised
    counter after CONFIRM and after a reset; REVERTED with the old counter without."""

    def infos(name: str) -> list[tuple[int, int, int]]:
        (vector,) = [v for v in DEVICE_VECTORS if v["name"] == name]
        found = []
        for step in vector["steps"]:
            for entry in step["out"]:
                if entry.get("type") == "MSG_INFO":
                    info = p.decode(bytes.fromhex(entry["hex"]))
                    assert isinstance(info, p.MsgInfo) and info.signed_only
                    found.append((info.active_image_size, info.image_state, info.security_counter))
        return found

    test, confirmed, reverted = p.ImageState.TEST, p.ImageState.CONFIRMED, p.ImageState.REVERTED
    assert infos("story:signed_update_confirmed") == [
        (40, test, 3),
        (40, confirmed, 5),
        (40, confirmed, 5),
    ]
    assert infos("story:signed_update_reverted") == [(40, test, 3), (3072, reverted, 3)]


def _active_image(config: dict[str, Any]) -> bytes:
    # the generator's devices run bytes(range(256)) * 12 (3072 bytes): its CRC says so
    image = bytes(range(256)) * 12
    assert (len(image), f"{p.crc32(image):08x}") == (
        config["active_image"]["size"],
        config["active_image"]["crc32"],
    )
    return image


def _expected(entry: dict[str, Any]) -> dict[str, Any]:
    if "event" in entry:
        return {"event": entry["event"]}
    if entry["type"] == "MSG_ERROR":
        return {"type": "MSG_ERROR", "code": entry["code"], "cmd": _type_byte(entry["command"])}
    return {"type": entry["type"], "hex": entry["hex"]}


@pytest.mark.parametrize("vector", DEVICE_VECTORS, ids=lambda v: v["name"])
def test_device_vector_replays(vector: dict[str, Any]) -> None:
    replay = Replay(vector)
    replay.run()
    for got, want in zip(replay.steps, vector["steps"], strict=True):
        assert got["out"] == [_expected(e) for e in want["out"]], want.get("in")
        assert got["state"] == want["state"]
        assert [(h["command"], h["state"]) for h in got["handled"]] == [
            (_type_byte(h["command"]), h["state"]) for h in want["handled"]
        ]


def test_every_error_code_has_a_vector() -> None:
    names = {v["name"] for v in DEVICE_VECTORS}
    assert {f"error:{code.name}" for code in p.ErrorCode} <= names
    for code in p.ErrorCode:
        (vector,) = [v for v in DEVICE_VECTORS if v["name"] == f"error:{code.name}"]
        codes = [e.get("code") for step in vector["steps"] for e in step["out"]]
        assert code.name in codes, vector["name"]


def test_errors_name_the_command_they_answer() -> None:
    """P4: MSG_ERROR's command byte is the type of the frame it answers (FINISH for a CRC
    mismatch, the START or DATA whose flash work failed, or the FINISH whose PENDING could not
    be persisted, for FLASH_ERROR)."""
    for vector in DEVICE_VECTORS:
        for step in vector["steps"]:
            handled = [h["command"] for h in step["handled"]]
            for entry in step["out"]:
                if entry.get("type") != "MSG_ERROR":
                    continue
                if entry["code"] == "CRC_MISMATCH":
                    assert entry["command"] == "CMD_OTA_FINISH"
                elif entry["code"] == "FLASH_ERROR":
                    # the START or DATA whose flash work failed, or FINISH: its persist
                    assert entry["command"] in ("CMD_OTA_START", "CMD_OTA_DATA", "CMD_OTA_FINISH")
                else:
                    assert entry["command"] in handled, (vector["name"], step)


# --- manifest vectors (signed updates, docs/protocol.md section 16.1) --------------------------

MANIFEST_DOC = contract.vectors("manifest.json")


@pytest.mark.parametrize("vector", MANIFEST_DOC["vectors"], ids=lambda v: v["name"])
def test_manifest_vector(vector: dict[str, Any]) -> None:
    """The device's answer is the model's, and the host's signing.verify agrees with each
    answer that is the crypto's (the format, the key, the signature)."""
    head = bytes.fromhex(vector["head"])
    device = MANIFEST_DOC["device"]
    replies: list[p.Message] = []

    async def ask() -> None:
        fw = SmartBallFirmware(
            active_image=bytes(range(256)) * 12,
            staging_capacity=device["staging_capacity"],
            send=lambda frame: replies.extend(
                p.parse_message(f) for f in p.FrameDecoder().feed(frame)
            ),
            trusted_keys=[signing.test_trusted_key()],
            security_counter=device["security_counter"],
        )
        fw.receive(p.encode_frame(p.MsgType.CMD_OTA_MANIFEST, head))

    asyncio.run(ask())
    (reply,) = replies
    answer = reply.code_name if isinstance(reply, p.MsgError) else "accepted"
    assert answer == vector["device_answers"]
    try:
        signing.verify(head, [signing.test_trusted_key()])
        verdict = "accepted"
    except signing.SignatureRefused as exc:
        verdict = exc.reason
    if answer in ("BAD_FRAME", "BAD_MANIFEST", "UNTRUSTED_KEY", "BAD_SIGNATURE", "accepted"):
        assert verdict == answer


def test_manifest_vectors_name_the_test_key_and_cover_every_refusal() -> None:
    key = signing.test_trusted_key()
    assert MANIFEST_DOC["key"]["key_id"] == f"{key.key_id:08x}"
    assert bytes.fromhex(MANIFEST_DOC["key"]["public_key"]) == signing.raw_public(key.public)
    answers = {v["device_answers"] for v in MANIFEST_DOC["vectors"]}
    assert answers == {
        "accepted",
        "BAD_FRAME",
        "BAD_MANIFEST",
        "BAD_PARAM",
        "TOO_LARGE",
        "UNTRUSTED_KEY",
        "BAD_SIGNATURE",
        "DOWNGRADE",
    }
    (accepted,) = [v for v in MANIFEST_DOC["vectors"] if v["name"] == "accepted"]
    manifest = Manifest.decode(bytes.fromhex(accepted["head"]))
    assert manifest.describes(bytes.fromhex(MANIFEST_DOC["image"]["hex"]))

"""The protocol contract's data (pytest_smartball/contract/) against the codec, the reference
firmware model and docs/protocol.md.

* The packaged vectors are exactly what the model and codec produce now.
* Every vector replays: codec vectors through the codec, decoder vectors through
  FrameDecoder, device vectors through a harness of this file that compares as a C test
  must (MSG_ERROR by code and command only, everything else byte for byte).
* Every cell of the command x state table holds for the model (through its vector).
* Every timing obligation holds for the model, in both erase modes.
* docs/protocol.md shows the table and the timings exactly as the data says.
"""

from __future__ import annotations

import ast
import asyncio
import math
import re
from collections.abc import Callable
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
from smartball_sim.device import SimDevice
from smartball_sim.firmware.model import (
    FirmwareEvent,
    FirmwareEventKind,
    FlashTimings,
    SmartBallFirmware,
)
from smartball_sim.make_image import make_image
from tests.hosts import SimPeer

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
TABLE = contract.command_state_table()
TIMING = contract.timing()


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


DEVICE_VECTORS = _vectors("device.json")


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


# --- the command x state table ----------------------------------------------------------------

SIGNED_TABLE = contract.signed_command_state_table()
CELLS = [("", row, state) for row in TABLE.rows for state in contract.STATES] + [
    ("signed:", row, state) for row in SIGNED_TABLE.rows for state in contract.STATES
]


#: What goes on in a state unless the command ends it (the table does not list it): the
#: erase's READY, the verify's DONE (the set-up's session has the right CRC).
BACKGROUND = {
    p.OtaState.ERASING: (("MSG_OTA_READY",), p.OtaState.RECEIVING),
    p.OtaState.VERIFYING: (("MSG_OTA_DONE",), p.OtaState.COMPLETE),
}


@pytest.mark.parametrize(
    ("table", "row", "state"),
    CELLS,
    ids=[f"{table}{row.id}-{state.name}" for table, row, state in CELLS],
)
def test_table_cell_holds_for_the_model(table: str, row: contract.Row, state: p.OtaState) -> None:
    """Each cell of the v1 table and of the signed-only rows (``signed:``, section 16.10)."""
    cell = row.cells[state]
    name = f"cell:{table}{row.id}:{state.name}"
    (vector,) = [v for v in DEVICE_VECTORS if v["name"] == name]
    *setup, last = vector["steps"]
    # the set-up reached the state the cell is about
    assert (setup[-1]["state"] if setup else "IDLE") == state.name, vector["name"]
    # the state right after the command (a frame with a bad CRC is never handled)
    assert [h["state"] for h in last["handled"]] == (
        [] if row.id == "bad_frame" else [cell.state.name]
    )
    tokens = []
    for entry in last["out"]:
        if "event" in entry:
            continue
        token = f"MSG_ERROR:{entry['code']}" if entry["type"] == "MSG_ERROR" else entry["type"]
        if state is p.OtaState.ERASING and token == "MSG_OTA_PROGRESS":
            continue  # the erase under way goes on (the table does not list its PROGRESS)
        if state is p.OtaState.VERIFYING and token == "MSG_OTA_ACK":
            continue  # the set-up's last window is still being written (its ACKs)
        tokens.append(token)
    expected, final = cell.reply + cell.then, cell.then_state or cell.state
    if not cell.then and cell.state is state and state in BACKGROUND:
        expected, final = expected + BACKGROUND[state][0], BACKGROUND[state][1]
    assert contract.matches(expected, tokens), (cell, tokens)
    assert last["state"] == final.name


def test_the_table_covers_every_state_and_command() -> None:
    for row in TABLE.rows:
        assert set(row.cells) == set(p.OtaState), row.id
        for cell in row.cells.values():
            for note in cell.notes:
                assert note in TABLE.notes, note
    commands = {row.command for row in TABLE.rows}
    # The table is a v1 device's; the two commands of signed updates are a v1 device's
    # unknown types (its "unknown type" row), and section 16.10 has their rows.
    signed = {p.MsgType.CMD_OTA_MANIFEST.name, p.MsgType.CMD_OTA_CONFIRM.name}
    assert {t.name for t in p.MsgType if t in p.COMMAND_TYPES} - signed <= commands


def test_section_16_has_the_rows_of_a_signed_only_device() -> None:
    section = DOC.split("### 16.10", 1)[1].split("### 16.11", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `CMD_")]
    commands = {line.split("`")[1] for line in rows}
    assert commands == {"CMD_OTA_MANIFEST", "CMD_OTA_START", "CMD_OTA_FINISH", "CMD_OTA_CONFIRM"}
    for code in ("BAD_MANIFEST", "UNTRUSTED_KEY", "BAD_SIGNATURE", "DOWNGRADE", "UNSIGNED"):
        assert f"ERROR({code})" in section, code
    assert "ERROR(DIGEST_MISMATCH)" in section


@pytest.mark.parametrize(
    ("tokens", "messages", "ok"),
    [
        (("A",), ["A"], True),
        (("A",), [], False),
        (("A?", "B"), ["B"], True),
        (("A?", "B"), ["A", "B"], True),
        (("A+", "B"), ["A", "A", "B"], True),
        (("A+", "B"), ["B"], False),
        ((), ["A"], False),
    ],
)
def test_token_matching(tokens: tuple[str, ...], messages: list[str], ok: bool) -> None:
    assert contract.matches(tokens, messages) is ok


# --- the document says the same ---------------------------------------------------------------


def _between(marker: str) -> str:
    m = re.search(rf"<!-- BEGIN {marker}[^>]*-->\n(.*?)<!-- END {marker} -->", DOC, re.DOTALL)
    assert m, f"docs/protocol.md has no {marker} block"
    return m.group(1)


def test_the_document_shows_the_command_state_table_of_the_data() -> None:
    assert _between("command-state") == contract.render_command_state_table()
    signed = contract.render_command_state_table(SIGNED_TABLE)
    assert _between("command-state-signed") == signed


def test_the_signed_rows_cover_both_new_commands_and_every_note() -> None:
    for row in SIGNED_TABLE.rows:
        assert set(row.cells) == set(p.OtaState), row.id
        for cell in row.cells.values():
            assert all(note in SIGNED_TABLE.notes for note in cell.notes), row.id
    commands = {row.command for row in SIGNED_TABLE.rows}
    assert {"CMD_OTA_MANIFEST", "CMD_OTA_CONFIRM"} <= commands


def test_the_document_shows_the_timing_obligations_of_the_data() -> None:
    assert _between("timing") == contract.render_timing_table()


def test_the_document_lists_every_error_code_state_and_message() -> None:
    for code in p.ErrorCode:
        assert re.search(rf"^\| {code.value} \| `{code.name}` \|", DOC, re.M), code
    for state in p.OtaState:
        assert re.search(rf"^\| {state.value} \| `{state.name}` \|", DOC, re.M), state
    for msg_type in p.MsgType:
        assert f"| `0x{msg_type.value:02X}` | `{msg_type.name}` |" in DOC, msg_type


def test_the_document_states_the_protocol_constants() -> None:
    for text in (
        f"{p.MAX_DATA_CHUNK}",
        f"{p.MAX_ERROR_TEXT} bytes",
        f"{p.MAX_FRAME} bytes",
        f"{TIMING.decoder_idle_s:g} s",
    ):
        assert text in DOC, text


# --- timing obligations against the model -----------------------------------------------------


class ZeroLatencyHost:
    """A host wired straight to the firmware: it sees a message the instant it is sent and
    reacts at once (on the loop, never inside the firmware's call). It follows the
    contract: credit only from ACKs, at most ``window`` chunks past the last ACK."""

    def __init__(self, fw_kwargs: dict[str, Any], image: bytes) -> None:
        self.loop = asyncio.get_running_loop()
        self.image = image
        self.decoder = p.FrameDecoder()
        self.log: list[tuple[float, p.Message]] = []
        self.sent: list[tuple[float, p.Message]] = []
        self.resets: list[float] = []
        self.fw = SmartBallFirmware(
            send=self._on_frame, request_reset=lambda: self.resets.append(self.now()), **fw_kwargs
        )
        self.ready: p.MsgOtaReady | None = None
        self.acked = 0
        self.next = 0
        self.done = asyncio.Event()

    def now(self) -> float:
        return self.loop.time()

    def send(self, msg: p.Message) -> None:
        self.sent.append((self.now(), msg))
        self.fw.receive(p.encode(msg))

    def _on_frame(self, frame: bytes) -> None:
        for f in self.decoder.feed(frame):
            msg = p.parse_message(f)
            self.log.append((self.now(), msg))
            self.loop.call_soon(self._react, msg)

    def _react(self, msg: p.Message) -> None:
        if isinstance(msg, p.MsgOtaReady):
            self.ready, self.acked = msg, self.next
        elif isinstance(msg, p.MsgOtaAck):
            self.acked = max(self.acked, msg.next_expected_offset)
        elif isinstance(msg, p.MsgOtaDone | p.MsgError):
            self.done.set()
            return
        else:
            return
        self._stream()

    def _stream(self) -> None:
        assert self.ready is not None
        chunk, size = self.ready.max_chunk, len(self.image)
        while self.next < size and self.next < self.acked + self.ready.window * chunk:
            end = min(self.next + chunk, size)
            self.send(p.CmdOtaData(self.next, self.image[self.next : end]))
            self.next = end
        if self.acked == size and not any(isinstance(m, p.CmdOtaFinish) for _, m in self.sent):
            self.send(p.CmdOtaFinish())

    def times(self, kind: type) -> list[float]:
        return [t for t, m in self.log if isinstance(m, kind)]


def _timing_cases() -> list[tuple[str, int, bool, FlashTimings]]:
    field = FlashTimings(erase_total_s=40.0)  # the field's slowest erase, yielding
    return [
        ("field-image", 323_194, False, FlashTimings()),
        ("full-staging", 480 * 1024, False, FlashTimings()),
        ("field-image-40s-erase", 323_194, False, field),
        ("field-image-progressive", 323_194, True, FlashTimings()),
        ("full-staging-progressive", 480 * 1024, True, FlashTimings()),
    ]


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize(
    ("size", "progressive", "timings"),
    [c[1:] for c in _timing_cases()],
    ids=[c[0] for c in _timing_cases()],
)
async def test_the_model_meets_its_timing_obligations(
    size: int, progressive: bool, timings: FlashTimings
) -> None:
    image = make_image(size, 4)
    host = ZeroLatencyHost(
        {
            "active_image": b"\x00" * 100,
            "window": 16,
            "timings": timings,
            "progressive_erase": progressive,
        },
        image,
    )
    flags = p.StartFlag.PROGRESSIVE_ERASE if progressive else 0
    t_start = host.now()
    host.send(p.CmdOtaStart(size, p.crc32(image), 232, flags=flags))
    # a host asking INFO / STATUS now and then, erase or not, to time the replies
    probes: list[tuple[float, type]] = []

    async def probe() -> None:
        for k in range(200):
            await asyncio.sleep(0.0371 * (k % 7 + 1))
            if host.done.is_set():
                return
            cmd = (p.CmdInfo(), p.CmdOtaStatus())[k % 2]
            probes.append((host.now(), p.MsgInfo if k % 2 == 0 else p.MsgOtaStatus))
            host.send(cmd)

    prober = asyncio.get_running_loop().create_task(probe())
    async with asyncio.timeout(300):
        await host.done.wait()
    await prober
    assert isinstance(host.log[-1][1], p.MsgOtaDone), host.log[-1]

    progress = host.times(p.MsgOtaProgress)
    (ready,) = host.times(p.MsgOtaReady)
    if progressive:
        assert progress == [] and ready == t_start  # READY at once, no erase PROGRESS
    else:
        assert len(progress) == math.ceil(size / 4096)
        gaps = [b - a for a, b in zip([t_start, *progress], progress, strict=False)]
        assert max(gaps) <= TIMING.progress_gap_max_s
        assert ready - progress[-1] <= TIMING.ready_after_erase_max_s
    # every ACK: from the DATA that completed its interval (or the image) to the ACK
    data_end = {m.offset + len(m.data): t for t, m in host.sent if isinstance(m, p.CmdOtaData)}
    latencies = [
        t - data_end[m.next_expected_offset]
        for t, m in host.log
        if isinstance(m, p.MsgOtaAck) and m.next_expected_offset in data_end
    ]
    assert latencies and max(latencies) <= TIMING.ack_latency_max_s
    # every probe answered within reply_max_s
    for asked_at, kind in probes:
        answer = next(t for t, m in host.log if t >= asked_at and isinstance(m, kind))
        assert answer - asked_at <= TIMING.reply_max_s, (asked_at, kind)
    (finish_at,) = [t for t, m in host.sent if isinstance(m, p.CmdOtaFinish)]
    (done_at,) = host.times(p.MsgOtaDone)
    assert done_at - finish_at <= TIMING.verify_max_s(size)
    assert host.resets and host.resets[0] - done_at <= TIMING.done_to_disconnect_max_s


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("size", [4096, 480 * 1024])
async def test_activation_ends_the_link_and_advertises_within_the_obligations(size: int) -> None:
    """Through the simulated radio: DONE on air -> the device ends the link within
    done_to_disconnect_max_s; advertising again within the activation's limit (the
    bootloader copies the image); a plain reset advertises within the other limit."""
    image = make_image(size, 5)
    device = SimDevice(active_image=b"\x01" * 1000, window=16)
    peer = SimPeer()
    link = await device.connect(peer)
    loop = asyncio.get_running_loop()

    async def write(msg: p.Message) -> None:
        await device.write(link, p.encode(msg))

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():  # noqa: ASYNC110 - polls the simulated device, virtual time
            await asyncio.sleep(0.005)

    def acked() -> int:
        acks = [m.next_expected_offset for m in peer.messages if isinstance(m, p.MsgOtaAck)]
        return max(acks, default=0)

    await write(p.CmdOtaStart(size, p.crc32(image), 232))
    await until(lambda: any(isinstance(m, p.MsgOtaReady) for m in peer.messages))
    for offset in range(0, size, 232):
        if offset >= acked() + 16 * 232:  # out of credit: wait for an ACK
            await until(lambda: offset < acked() + 16 * 232)  # noqa: B023 - awaited at once
        await write(p.CmdOtaData(offset, image[offset : offset + 232]))
    await until(lambda: acked() == size)
    await write(p.CmdOtaFinish())
    await until(lambda: bool(peer.lost))
    (done_at,) = [t for t, m in peer.timed() if isinstance(m, p.MsgOtaDone)]
    assert peer.lost[0][0] - done_at <= TIMING.done_to_disconnect_max_s
    reset_at = peer.lost[0][0]
    await until(lambda: device.advertising)
    assert loop.time() - reset_at <= TIMING.reset_to_advertising_max_s(activation=True)
    assert device.firmware.active.data == image
    # a reset without an image to switch to
    reset_at = loop.time()
    device.reboot()
    await until(lambda: device.advertising)
    assert loop.time() - reset_at <= TIMING.reset_to_advertising_max_s(activation=False)


# --- the reference model's own rules (issue 10) ------------------------------------------------


def test_the_firmware_schedules_in_one_place() -> None:
    """Every step goes through SmartBallFirmware._at, which the reset guard wraps: no
    other call_at / call_later / call_soon / create_task in the module or its parts (the
    folder sim/smartball_sim/firmware/ but the C core's glue, c_*.py)."""
    import smartball_sim.firmware.model as module

    where = []
    parts = sorted(Path(module.__file__).parent.glob("*.py"))
    assert len(parts) >= 8, parts  # the folder, not one file
    for path in [path for path in parts if not path.name.startswith("c_")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for call in ast.walk(node):
                    if (
                        isinstance(call, ast.Call)
                        and isinstance(call.func, ast.Attribute)
                        and call.func.attr
                        in {"call_at", "call_later", "call_soon", "create_task", "ensure_future"}
                    ):
                        where.append(node.name)
    assert where == ["_at"]


def test_the_simulator_compares_clock_times_in_whole_microseconds() -> None:
    """Issue 10: looptime rounds its clock to microseconds, so no simulator module may
    compare a float time exactly. A comparison that reads the clock (``.time()``,
    ``now()``) must go through ``to_us``."""
    import smartball_sim

    offenders = []
    for path in Path(smartball_sim.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            text = ast.unparse(node)
            reads_clock = ".time()" in text or "now()" in text or "now " in f"{text} "
            if reads_clock and "to_us(" not in text and "_us" not in text:
                offenders.append(f"{path.name}:{node.lineno}: {text}")
    assert offenders == []


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

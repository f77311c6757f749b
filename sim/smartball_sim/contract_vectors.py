"""The contract's test vectors, generated from the codec and the reference firmware model:
``python -m smartball_sim.contract_vectors --check`` (fails if the packaged vectors differ
from what the model produces now) or ``--write`` (regenerates them).

Three files under ``pytest_smartball/contract/vectors/``, for any implementation's tests
(the firmware team's C tests read them: hex in, frames / replies / states out):

``codec.json``
    One frame per message (and per optional-field and trailing-byte case): its fields and
    its bytes.
``decoder.json``
    Byte streams, in timed pieces, and what a conforming decoder makes of them: the frames,
    its counters, the bytes left buffered.
``device.json``
    Sessions with the device: timed inputs (hex, link drops, resets, flash failures) and,
    for each, the messages the device sends until the next input and its state then.
    ``MSG_ERROR`` is compared by code and command byte only; its text is informative.
    Every other message is compared byte for byte. Message times (``t``) are what the
    model took with the vector's flash timings; they are informative, the order is not.

Every cell of ``command_state.json`` has a vector here (named ``cell:ROW:STATE``), and
tests/test_contract.py checks each against its cell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_smartball import contract
from pytest_smartball import protocol as p

from .firmware import (
    FirmwareEvent,
    FirmwareEventKind,
    FlashTimings,
    SmartBallFirmware,
    to_us,
)

VECTOR_DIR = Path(contract.__file__).parent / "contract" / "vectors"

# --- the codec -----------------------------------------------------------------------------


def _fields(msg: p.Message) -> dict[str, Any]:
    out = asdict(msg)
    if isinstance(msg, p.CmdOtaData):
        out["data"] = msg.data.hex(" ")
    return {k: v for k, v in out.items()}


def codec_vectors() -> list[dict[str, Any]]:
    msgs: list[tuple[str, p.Message]] = [
        ("info", p.CmdInfo()),
        ("start", p.CmdOtaStart(323194, 0xDEADBEEF, 232)),
        ("start_progressive", p.CmdOtaStart(323194, 0xDEADBEEF, 232, flags=p.StartFlag(1))),
        ("data_4_bytes", p.CmdOtaData(0, bytes.fromhex("00010203"))),
        ("data_500_bytes", p.CmdOtaData(46400, bytes(i & 0xFF for i in range(500)))),
        ("status", p.CmdOtaStatus()),
        ("abort", p.CmdOtaAbort()),
        ("finish", p.CmdOtaFinish()),
        ("msg_info", p.MsgInfo(1, 1, 4, 2, 301568, 0x1C291CA3, 491520)),
        (
            "msg_info_capabilities",
            p.MsgInfo(1, 1, 4, 2, 301568, 0x1C291CA3, 491520, capabilities=1),
        ),
        ("msg_ready", p.MsgOtaReady(232, 16)),
        ("msg_progress_erase", p.MsgOtaProgress(1, 4096, 323584)),
        ("msg_progress_verify", p.MsgOtaProgress(2, 323194, 323194)),
        ("msg_status_idle", p.MsgOtaStatus(0, 0, 0, 0)),
        ("msg_status_receiving", p.MsgOtaStatus(2, 46400, 323194, 0xDEADBEEF)),
        ("msg_ack", p.MsgOtaAck(1856)),
        ("msg_done", p.MsgOtaDone(0xDEADBEEF)),
        ("msg_error", p.MsgError(2, 0x11, "bad state")),
        ("msg_error_no_text", p.MsgError(8, 0x10, "")),
    ]
    out: list[dict[str, Any]] = [
        {"name": name, "type": msg.TYPE.name, "fields": _fields(msg), "hex": p.encode(msg).hex(" ")}
        for name, msg in msgs
    ]
    # Receivers ignore what a newer peer appends, and take defaults for what an older omits.
    newer: list[tuple[str, p.Message, int]] = [
        ("start_with_unknown_trailing_bytes", p.CmdOtaStart(10, 0x8EC580C0, 4, flags=1), 3),
        ("info_with_unknown_trailing_bytes", p.CmdInfo(), 2),
        ("status_with_unknown_trailing_bytes", p.MsgOtaStatus(2, 46400, 323194, 0xDEADBEEF), 4),
    ]
    for name, msg, extra in newer:
        frame = p.encode_frame(msg.TYPE, p.encode_payload(msg) + bytes(range(1, extra + 1)))
        out.append(
            {"name": name, "type": msg.TYPE.name, "decodes_to": _fields(msg), "hex": frame.hex(" ")}
        )
    too_short = [
        ("start_9_bytes", p.MsgType.CMD_OTA_START, bytes(9)),
        ("data_3_bytes", p.MsgType.CMD_OTA_DATA, bytes(3)),
        ("msg_info_15_bytes", p.MsgType.MSG_INFO, bytes(15)),
        ("msg_error_1_byte", p.MsgType.MSG_ERROR, bytes(1)),
    ]
    for name, msg_type, payload in too_short:
        out.append(
            {
                "name": name,
                "type": msg_type.name,
                "error": "payload shorter than the required fields (a device answers a "
                "command so short with BAD_FRAME)",
                "hex": p.encode_frame(msg_type, payload).hex(" "),
            }
        )
    return out


# --- the decoder ---------------------------------------------------------------------------


def _decode(pieces: list[tuple[float, bytes]], reset_at: float | None = None) -> dict[str, Any]:
    decoder = p.FrameDecoder()
    frames: list[p.Frame] = []
    for at, data in pieces:
        if reset_at is not None and at >= reset_at:
            decoder.reset()
            reset_at = None
        frames += decoder.feed(data, at)
    return {
        "frames": [{"type": _type_name(f.type), "payload": f.payload.hex(" ")} for f in frames],
        "stats": asdict(decoder.stats),
        "buffered": decoder.buffered,
    }


def _type_name(msg_type: int) -> str:
    try:
        return p.MsgType(msg_type).name
    except ValueError:
        return f"0x{msg_type:02X}"


def decoder_vectors() -> list[dict[str, Any]]:
    info, status = p.encode(p.CmdInfo()), p.encode(p.CmdOtaStatus())
    ack8 = p.encode(p.MsgOtaAck(8))
    # a payload of 512 bytes: the offset and 508 image bytes (more than a device grants,
    # but a whole frame: the decoder's limit is the frame's, 512)
    biggest = p.encode_frame(p.MsgType.CMD_OTA_DATA, bytes(4) + (bytes(range(254)) * 2))
    over = bytes([p.SOF, p.MsgType.CMD_OTA_DATA]) + (513).to_bytes(2, "little")
    partial = bytes.fromhex("a5 11 08 00 00")  # a DATA header announcing 8 bytes, then silence
    cases: list[tuple[str, str, list[tuple[float, bytes]], float | None]] = [
        (
            "resync_drops_only_the_sof",
            "A bad frame whose bytes hide a good one: its length (6) makes the CRC check read "
            "a5 12 as its CRC, which fails; only its SOF is dropped, the rescan finds CMD_INFO "
            "inside it and CMD_OTA_STATUS after it. A decoder that skipped the whole bad frame "
            "would find only a5 12 ... as a truncated frame and lose both.",
            [(0.0, bytes.fromhex("a5 14 06 00 a5 01 00 00 ac fb a5 12 00 00 9f e1"))],
            None,
        ),
        (
            "garbage_and_bad_crc",
            "Garbage before a SOF, a frame with a corrupted CRC byte (e1 -> e0), a good frame.",
            [(0.0, bytes.fromhex("00 ff 13 a5 12 00 00 9f e0") + info)],
            None,
        ),
        (
            "bad_length",
            "A length above 512 (0x7fff): only the SOF is dropped, then 93 ff 7f as garbage.",
            [(0.0, bytes.fromhex("a5 93 ff 7f") + ack8)],
            None,
        ),
        (
            "payload_512",
            "The largest frame: a 512-byte payload (518 bytes on the wire) decodes.",
            [(0.0, biggest)],
            None,
        ),
        (
            "payload_513",
            "A length of 513 is a bad length even before its bytes arrive: only the SOF goes.",
            [(0.0, over + status)],
            None,
        ),
        (
            "one_byte_at_a_time",
            "A frame may arrive in any pieces; CMD_OTA_START then CMD_INFO, one byte per piece.",
            [
                (i * 0.001, bytes([b]))
                for i, b in enumerate(p.encode(p.CmdOtaStart(10, 0x8EC580C0, 4)) + info)
            ],
            None,
        ),
        (
            "stalled_partial_frame_discarded",
            "A partial frame, then nothing for 1.5 s: it is discarded (5 dropped bytes) "
            "before the next byte is taken, so CMD_INFO comes out at once.",
            [(0.0, partial), (1.5, info)],
            None,
        ),
        (
            "partial_frame_within_the_idle_time",
            "The same bytes 0.5 s apart: the partial frame is kept and swallows CMD_INFO "
            "(it needs 14 bytes, has 11); nothing comes out yet.",
            [(0.0, partial), (0.5, info)],
            None,
        ),
        (
            "stray_sof_recovered_by_the_idle_rule",
            "42 a5 00 then CMD_INFO reads as a 421-byte frame of type 0x00 that would hold "
            "CMD_INFO back; 1.5 s later the next byte finds it stale and it is discarded.",
            [(0.0, bytes.fromhex("42 a5 00") + info), (1.5, status)],
            None,
        ),
        (
            "link_drop_discards_the_partial_frame",
            "Half a frame, then the link drops (the receiver resets its decoder): the tail "
            "that arrives on the next connection is garbage, the frame after it is good.",
            [(0.0, status[:3]), (0.2, status[3:] + info)],
            0.1,
        ),
    ]
    out = []
    for name, about, pieces, reset_at in cases:
        vector: dict[str, Any] = {
            "name": name,
            "about": about,
            "input": [{"at_s": at, "hex": data.hex(" ")} for at, data in pieces],
        }
        if reset_at is not None:
            vector["link_drop_at_s"] = reset_at
        vector.update(_decode(pieces, reset_at))
        out.append(vector)
    return out


# --- the device ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceConfig:
    window: int = 4
    staging_capacity: int = 5 * 4096
    progressive_erase: bool = False
    active_image: bytes = bytes(range(256)) * 12
    version: tuple[int, int, int] = (1, 4, 2)
    erase_page_s: float = 0.085
    write_word_s: float = 41e-6
    verify_s_per_byte: float = 1e-7
    rx_buffer_chunks: int | None = None
    #: Whether the harness resets the device when it asks to (after DONE); without, the
    #: state COMPLETE can be observed. The request shows as an event either way.
    resets: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "resets_when_asked": self.resets,
            "window": self.window,
            "staging_capacity": self.staging_capacity,
            "progressive_erase": self.progressive_erase,
            "active_image": {
                "size": len(self.active_image),
                "crc32": f"{p.crc32(self.active_image):08x}",
                "version": list(self.version),
            },
            "flash": {
                "erase_page_s": self.erase_page_s,
                "write_word_s": self.write_word_s,
                "verify_s_per_byte": self.verify_s_per_byte,
                "rx_buffer_chunks": self.rx_buffer_chunks or self.window,
            },
        }


@dataclass
class Step:
    at_s: float
    data: bytes = b""
    link_lost: bool = False
    reset: bool = False
    flash_fail_next: int = 0


@dataclass
class Session:
    name: str
    about: str
    steps: list[Step]
    config: DeviceConfig = field(default_factory=DeviceConfig)
    until_s: float | None = None


class _ModelRun:
    """The firmware model on a virtual clock, recording what it sends."""

    def __init__(self, config: DeviceConfig) -> None:
        import looptime

        self.config = config
        self.loop = looptime.new_event_loop(start=0, noop_cycles=8)
        self.out: list[tuple[int, dict[str, Any]]] = []
        #: (command type, state right after the device handled it), in order
        self.handled: list[dict[str, str]] = []
        self._decoder = p.FrameDecoder()
        self.fw = SmartBallFirmware(
            active_image=config.active_image,
            version=config.version,
            staging_capacity=config.staging_capacity,
            window=config.window,
            progressive_erase=config.progressive_erase,
            timings=FlashTimings(
                erase_page_s=config.erase_page_s,
                write_word_s=config.write_word_s,
                verify_s_per_byte=config.verify_s_per_byte,
                rx_buffer_chunks=config.rx_buffer_chunks,
            ),
            send=self._sent,
            request_reset=self._reset_requested,
            observe=self._observed,
        )

    def _observed(self, event: FirmwareEvent) -> None:
        if event.kind is FirmwareEventKind.HANDLED and event.msg_type is not None:
            self.handled.append(
                {"command": _type_name(event.msg_type), "state": self.fw.state.name}
            )

    def _now_us(self) -> int:
        return to_us(self.loop.time())

    def _sent(self, frame: bytes) -> None:
        for f in self._decoder.feed(frame):
            msg = p.parse_message(f)
            entry: dict[str, Any] = {"t": self._now_us() / 1e6, "type": msg.TYPE.name}
            if isinstance(msg, p.MsgError):
                entry["code"] = msg.code_name
                entry["command"] = _type_name(msg.command)
            else:
                entry["hex"] = p.encode(msg).hex(" ")
            self.out.append((self._now_us(), entry))

    def _reset_requested(self) -> None:
        self.out.append((self._now_us(), {"t": self._now_us() / 1e6, "event": "reset"}))
        if self.config.resets:
            self.fw.power_cycle()

    def run_until(self, at_s: float) -> None:
        async def wait() -> None:
            await asyncio.sleep(at_s - self.loop.time())

        self.loop.run_until_complete(wait())

    def apply(self, step: Step) -> None:
        async def act() -> None:
            if step.flash_fail_next:
                self.fw.flash.fail_next = step.flash_fail_next
            if step.link_lost:
                self.fw.link_lost()
            if step.reset:
                self.fw.power_cycle()
            if step.data:
                self.fw.receive(step.data)

        self.loop.run_until_complete(act())

    def close(self) -> None:
        self.loop.close()


def run_session(session: Session) -> dict[str, Any]:
    run = _ModelRun(session.config)
    steps_out = []
    try:
        times = [s.at_s for s in session.steps]
        until = session.until_s if session.until_s is not None else times[-1] + 5.0
        for i, step in enumerate(session.steps):
            run.run_until(step.at_s)
            before, handled_before = len(run.out), len(run.handled)
            run.apply(step)
            end = times[i + 1] if i + 1 < len(times) else until
            run.run_until(end)
            emitted = run.out[before:]
            for t_us, _ in emitted:
                if t_us == to_us(end) and i + 1 < len(times):
                    raise AssertionError(
                        f"{session.name}: a message at {end} s coincides with the next input; "
                        "move the input so the order is not a tie"
                    )
            entry: dict[str, Any] = {"at_s": step.at_s}
            if step.data:
                entry["in"] = step.data.hex(" ")
            if step.link_lost:
                entry["link_lost"] = True
            if step.reset:
                entry["reset"] = True
            if step.flash_fail_next:
                entry["flash_fail_next"] = step.flash_fail_next
            entry["handled"] = run.handled[handled_before:]
            entry["out"] = [e for _, e in emitted]
            entry["state"] = run.fw.state.name
            steps_out.append(entry)
    finally:
        run.close()
    return {
        "name": session.name,
        "about": session.about,
        "device": session.config.describe(),
        "steps": steps_out,
        "until_s": until,
    }


# The sessions: a small image (40 bytes, 8-byte chunks, window 4: ACK every 2 chunks) keeps
# the vectors short; one page erases in 85 ms.
IMAGE = bytes((i * 7 + 3) & 0xFF for i in range(40))
CHUNK = 8
EIGHTY = bytes(range(80))
TWO_PAGES = bytes(range(256)) * 20  # 5120 bytes: two pages


def start(
    image: bytes = IMAGE, chunk: int = CHUNK, crc: int | None = None, flags: int = 0
) -> bytes:
    crc = p.crc32(image) if crc is None else crc
    return p.encode(p.CmdOtaStart(len(image), crc, chunk, flags=flags))


def data(offset: int, chunk: bytes) -> bytes:
    return p.encode(p.CmdOtaData(offset, chunk))


def chunks(image: bytes = IMAGE, size: int = CHUNK, first: int = 0) -> Iterator[bytes]:
    for offset in range(first, len(image), size):
        yield data(offset, image[offset : offset + size])


#: The session image of the table's ERASING cells: two pages, so the erase is still under
#: way when a command that arrived during the first page is handled.
ERASING_IMAGE = bytes(8192)


def _steps_to(state: p.OtaState) -> tuple[list[Step], float, bytes]:
    """Inputs that bring the model to ``state`` (with a session where one applies), the
    time by which it is there, and the session's image."""
    if state == p.OtaState.IDLE:
        return [], 0.0, IMAGE
    if state == p.OtaState.ERASING:
        return [Step(0.0, start(ERASING_IMAGE))], 0.05, ERASING_IMAGE
    crc = 0xDEADBEEF if state == p.OtaState.ERROR else None
    steps = [Step(0.0, start(crc=crc))]
    if state == p.OtaState.RECEIVING:
        return steps, 0.2, IMAGE
    # four chunks (the window), the fifth once their ACKs have come
    steps.append(Step(0.2, b"".join(list(chunks())[:4])))
    steps.append(Step(0.25, b"".join(list(chunks())[4:])))
    steps.append(Step(0.3, p.encode(p.CmdOtaFinish())))
    if state == p.OtaState.VERIFYING:
        return steps, 0.300001, IMAGE  # the verify of 40 bytes takes 4 us
    return steps, 0.4, IMAGE  # COMPLETE (DONE sent), or ERROR (CRC mismatch)


def _cell_command(row_id: str, image: bytes) -> bytes:
    """The command a table row sends, for a session of ``image``."""
    other = bytes(80)
    match row_id:
        case "info":
            return p.encode(p.CmdInfo())
        case "status":
            return p.encode(p.CmdOtaStatus())
        case "abort":
            return p.encode(p.CmdOtaAbort())
        case "start_other":
            return start(other)
        case "start_same":
            return start(image, chunk=16)
        case "start_progressive":
            return start(other, flags=p.StartFlag.PROGRESSIVE_ERASE)
        case "start_bad_param":
            return start(chunk=3)
        case "start_too_large":
            return start(bytes(5 * 4096 + 1))
        case "data_next" | "data_buffer_full":
            return data(0, IMAGE[:CHUNK])
        case "data_offset":
            return data(2 * CHUNK, IMAGE[2 * CHUNK : 3 * CHUNK])
        case "data_length":
            return data(0, IMAGE[: CHUNK + 4])
        case "data_past_end":
            return data(32, IMAGE[32:] + bytes(4))
        case "data_words":
            return data(0, IMAGE[:6])
        case "finish" | "finish_crc_mismatch" | "finish_incomplete":
            return p.encode(p.CmdOtaFinish())
        case "unknown":
            return p.encode_frame(0x02, b"")
        case "short":
            return p.encode_frame(p.MsgType.CMD_OTA_START, bytes(9))
        case "bad_frame":
            frame = bytearray(p.encode(p.CmdInfo()))
            frame[-1] ^= 0x01
            return bytes(frame)
    raise AssertionError(row_id)


def _cell_session(row_id: str, state: p.OtaState) -> Session:
    """The set-up that brings the model to ``state``, then the row's command as the last
    input. The device does not reset when it asks to, so COMPLETE lasts."""
    config = DeviceConfig(progressive_erase=row_id == "start_progressive", resets=False)
    steps, t, image = _steps_to(state)
    if state == p.OtaState.RECEIVING:
        all_chunks = list(chunks(first=0))
        if row_id == "data_past_end":  # needs a max_chunk above the 8 bytes left
            steps = [Step(0.0, start(chunk=16)), Step(0.2, b"".join(all_chunks[:4]))]
            t = 0.3
        elif row_id == "data_buffer_full":  # a receive buffer of one chunk, just filled
            config = DeviceConfig(rx_buffer_chunks=1, resets=False)
            steps = [Step(0.0, start()), Step(0.2, data(0, IMAGE[:CHUNK]))]
            t, row_command = 0.2, data(CHUNK, IMAGE[CHUNK : 2 * CHUNK])
            steps.append(Step(t, row_command))
            return _cell(row_id, state, steps, config, t)
        elif row_id in ("finish", "finish_crc_mismatch"):
            # FINISH right behind the last chunk, before the flash has written it
            crc = 0xDEADBEEF if row_id == "finish_crc_mismatch" else None
            steps = [Step(0.0, start(crc=crc)), Step(0.2, b"".join(all_chunks[:-1]))]
            t = 0.3
            steps.append(Step(t, all_chunks[-1]))
    steps.append(Step(t, _cell_command(row_id, image)))
    return _cell(row_id, state, steps, config, t)


def _cell(
    row_id: str, state: p.OtaState, steps: list[Step], config: DeviceConfig, t: float
) -> Session:
    return Session(
        f"cell:{row_id}:{state.name}",
        f"command x state table, row {row_id!r} in {state.name}: set-up inputs, then the "
        "row's command as the last input",
        steps,
        config,
        t + 1.0,
    )


def table_sessions() -> list[Session]:
    table = contract.command_state_table()
    return [_cell_session(row.id, state) for row in table.rows for state in contract.STATES]


def error_sessions() -> list[Session]:
    """One session ending in each error code."""
    finish = p.encode(p.CmdOtaFinish())
    erase_done = 0.2
    return [
        Session(
            "error:BAD_FRAME",
            "CMD_OTA_START with a 9-byte payload (10 required).",
            [Step(0.0, p.encode_frame(p.MsgType.CMD_OTA_START, bytes(9)))],
        ),
        Session(
            "error:BAD_STATE", "CMD_OTA_DATA with no session.", [Step(0.0, data(0, IMAGE[:8]))]
        ),
        Session(
            "error:BAD_OFFSET",
            "A chunk at next_expected_offset that runs past image_size.",
            [
                Step(0.0, start(chunk=16)),
                Step(erase_done, b"".join(list(chunks())[:4])),
                Step(0.3, data(32, IMAGE[32:] + bytes(4))),
            ],
        ),
        Session(
            "error:TOO_LARGE",
            "CMD_OTA_START with image_size one byte above staging_capacity.",
            [Step(0.0, start(bytes(5 * 4096 + 1)))],
        ),
        Session(
            "error:CRC_MISMATCH",
            "A session announced with a wrong CRC: FINISH ends in CRC_MISMATCH, state ERROR.",
            [
                Step(0.0, start(crc=0xDEADBEEF)),
                Step(erase_done, b"".join(list(chunks())[:4])),
                Step(0.25, b"".join(list(chunks())[4:])),
                Step(0.3, finish),
            ],
        ),
        Session(
            "error:FLASH_ERROR",
            "The staging page's erase fails, and so does its retry: FLASH_ERROR naming the "
            "START, state ERROR, session cleared.",
            [Step(0.0, b"", flash_fail_next=2), Step(0.001, start())],
        ),
        Session(
            "error:UNKNOWN_COMMAND",
            "A frame of type 0x81 (a device message) sent to the device.",
            [Step(0.0, p.encode(p.MsgInfo(1, 1, 0, 0, 0, 0, 0)))],
        ),
        Session(
            "error:BAD_PARAM",
            "CMD_OTA_START with chunk_size 3.",
            [Step(0.0, start(chunk=3))],
        ),
    ]


def story_sessions() -> list[Session]:
    finish = p.encode(p.CmdOtaFinish())
    smartball = b"SmartBall!"
    all_chunks = list(chunks())
    return [
        Session(
            "session:short",
            "docs/protocol.md's short session: the 10-byte image b'SmartBall!' in 4-byte chunks, "
            "window 4; then the device resets into it and CMD_INFO shows it.",
            [
                Step(0.0, start(smartball, 4)),
                Step(0.2, data(0, b"Smar") + data(4, b"tBal")),
                Step(0.3, data(8, b"l!")),
                Step(0.4, finish),
                Step(3.0, p.encode(p.CmdInfo())),
            ],
        ),
        Session(
            "session:final_ack_before_done",
            "FINISH right behind the last chunk, before the flash has written it: the last "
            "byte's ACK still goes first, then DONE, then the reset (window 8).",
            [Step(0.0, start()), Step(0.2, b"".join(all_chunks) + finish)],
            DeviceConfig(window=8),
        ),
        Session(
            "session:resume_after_link_drop",
            "The link drops mid-transfer with half a frame received; the host reconnects, "
            "asks STATUS and sends START again with a smaller chunk_size (a smaller MTU): "
            "READY with the new max_chunk, next_expected_offset kept, no erase.",
            [
                Step(0.0, start(chunk=16)),
                Step(0.2, data(0, IMAGE[:16]) + data(16, IMAGE[16:32])[:7]),
                Step(0.25, b"", link_lost=True),
                Step(0.5, p.encode(p.CmdOtaStatus())),
                Step(0.6, start(chunk=8)),
                Step(0.7, data(16, IMAGE[16:24]) + data(24, IMAGE[24:32]) + data(32, IMAGE[32:])),
                Step(0.8, finish),
            ],
        ),
        Session(
            "session:reset_loses_the_session",
            "A reset mid-transfer: nothing of the session is left (STATUS IDLE), the old "
            "image is active, a new START erases again.",
            [
                Step(0.0, start()),
                Step(0.2, b"".join(all_chunks[:2])),
                Step(0.25, b"", reset=True),
                Step(0.3, p.encode(p.CmdOtaStatus()) + p.encode(p.CmdInfo())),
                Step(0.4, start()),
            ],
        ),
        Session(
            "session:status_grants_a_lost_ack",
            "Two chunks complete an ACK interval; the host lost that ACK and asks STATUS: "
            "STATUS, then an ACK of everything written.",
            [
                Step(0.0, start()),
                Step(0.2, b"".join(all_chunks[:3])),
                Step(0.3, p.encode(p.CmdOtaStatus())),
            ],
        ),
        Session(
            "session:data_during_erase_rate_limited",
            "Six DATA frames while the device erases two pages (window 4): held until the "
            "first page is done, then the first and the fifth are answered with BAD_STATE.",
            [
                Step(0.0, start(ERASING_IMAGE)),
                Step(0.01, b"".join(data(0, IMAGE[:8]) for _ in range(6))),
            ],
        ),
        Session(
            "session:wrong_offsets_rate_limited",
            "Nine chunks past a lost one (window 4): STATUS for the first and the fifth and "
            "the ninth; the chunk the device expects is then accepted.",
            [
                Step(0.0, start(EIGHTY, 8)),
                Step(0.2, b"".join(list(chunks(EIGHTY))[1:10])),
                Step(0.3, data(0, EIGHTY[:8])),
            ],
        ),
        Session(
            "session:command_during_a_page_erase",
            "A page erase stalls the CPU: CMD_INFO sent 10 ms into the erase of a 2-page image "
            "is answered after the first page's PROGRESS, 85 ms after START.",
            [Step(0.0, start(bytes(5000))), Step(0.01, p.encode(p.CmdInfo()))],
        ),
        Session(
            "session:abort_cannot_stop_a_page_erase",
            "ABORT 10 ms into the erase: answered when the page is done (85 ms); no further "
            "page is erased and no READY follows.",
            [Step(0.0, start(bytes(9000))), Step(0.01, p.encode(p.CmdOtaAbort()))],
        ),
        Session(
            "session:abort_in_complete",
            "ABORT between DONE and the reset (here the harness does not reset): STATUS "
            "COMPLETE, nothing cancelled.",
            [
                Step(0.0, start()),
                Step(0.2, b"".join(all_chunks[:4])),
                Step(0.25, all_chunks[4]),
                Step(0.3, finish),
                Step(0.4, p.encode(p.CmdOtaAbort()) + start(bytes(80))),
            ],
            DeviceConfig(resets=False),
        ),
        Session(
            "session:stalled_partial_frame",
            "The header of a DATA frame announcing 8 bytes, then silence for 1.5 s: the device "
            "discards it, so the CMD_INFO after it is answered (kept, the partial frame would "
            "swallow it).",
            [Step(0.0, bytes.fromhex("a5 11 08 00 00")), Step(1.5, p.encode(p.CmdInfo()))],
        ),
        Session(
            "session:progressive_erase",
            "A device that advertises PROGRESSIVE_ERASE (MSG_INFO's capabilities) and a START "
            "asking for it (flags 1): READY at once. The first chunk needs page 0 erased: the "
            "erase stalls the CPU 85 ms, the chunks behind it wait; the 18th chunk reaches "
            "page 1, erased before it is written. Window 16, 232-byte chunks, 5120 bytes.",
            [
                Step(0.0, p.encode(p.CmdInfo()) + start(TWO_PAGES, 232, flags=1)),
                Step(0.01, b"".join(list(chunks(TWO_PAGES, 232))[:16])),
                Step(0.3, b"".join(list(chunks(TWO_PAGES, 232))[16:])),
                Step(0.6, finish),
            ],
            DeviceConfig(progressive_erase=True, window=16),
        ),
    ]


def device_vectors() -> list[dict[str, Any]]:
    sessions = [*story_sessions(), *error_sessions(), *table_sessions()]
    return [run_session(s) for s in sessions]


# --- files ---------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "codec.json": codec_vectors,
    "decoder.json": decoder_vectors,
    "device.json": device_vectors,
}

_ABOUT = {
    "codec.json": "Frames of protocol v1: each message's fields and bytes (hex); decode-only "
    "cases for trailing bytes a receiver ignores; payloads too short to decode.",
    "decoder.json": "Streams fed to the frame decoder in timed pieces (at_s, seconds) and "
    "what it yields: frames (type, payload), its counters, the bytes left buffered. A "
    "receiver discards a partial frame when no byte arrived for 1.0 s.",
    "device.json": "Sessions with the device (config: window, staging capacity, flash "
    "timings, the image it runs). Each step is an input at at_s (hex written to NUS RX, a "
    "link drop, a reset, or flash operations made to fail) and everything the device sends "
    "until the next step (out), then its state. MSG_ERROR compares code and command only; "
    "other messages byte for byte; times t are informative (the model's, with these flash "
    "timings), the order is not. event 'reset' is the device resetting itself after DONE.",
}


def render(name: str) -> str:
    document = {
        "about": _ABOUT[name],
        "generated_by": "python -m smartball_sim.contract_vectors --write",
        "vectors": GENERATORS[name](),
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartball_sim.contract_vectors")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail if the files differ")
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    args = parser.parse_args(argv)
    stale = []
    for name in GENERATORS:
        text = render(name)
        path = VECTOR_DIR / name
        if args.write:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    if stale:
        print(
            f"stale contract vectors: {', '.join(stale)}; run "
            "python -m smartball_sim.contract_vectors --write and review the diff",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The sessions of ``device.json`` for the contract's command x state table, one per cell
(``cell:ROW:STATE``): the set-up inputs that bring the device to the state, then the row's
command; the v1 rows and the signed-only rows (docs/protocol.md section 16.10)."""

from __future__ import annotations

from typing import Any

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import Manifest

from .inputs import CHUNK, ERASING_IMAGE, IMAGE, chunks, data, manifest_cmd, signed_head, start
from .runner import DeviceConfig, Step, VectorSession

#: The session image of the table's VERIFYING cells: 4000 bytes in 500-byte chunks (window
#: 4). FINISH rides behind the last four chunks, whose writes take 20 ms (125 words each at
#: 41 us); the row's command comes 5 ms after FINISH, in VERIFYING while that window is
#: still being written, so before the read-back begins (section 7.5). However a device
#: splits its CRC (16 bytes a step, 1 KB, the whole bank at once) the command lands before
#: it: a command that arrived during the CRC itself would be answered before or after DONE
#: depending on that split, so no vector sends one there.
VERIFY_IMAGE = bytes((i * 13 + 5) & 0xFF for i in range(4000))
VERIFY_CHUNK = 500


def _steps_to(state: p.OtaState) -> tuple[list[Step], float, bytes]:
    """Inputs that bring the model to ``state`` (with a session where one applies), the
    time by which it is there, and the session's image."""
    if state == p.OtaState.IDLE:
        return [], 0.0, IMAGE
    if state == p.OtaState.ERASING:
        return [Step(0.0, start(ERASING_IMAGE))], 0.05, ERASING_IMAGE
    if state == p.OtaState.VERIFYING:
        parts = list(chunks(VERIFY_IMAGE, VERIFY_CHUNK))
        return (
            [
                Step(0.0, start(VERIFY_IMAGE, VERIFY_CHUNK)),
                Step(0.1, b"".join(parts[:4])),
                Step(0.15, b"".join(parts[4:]) + p.encode(p.CmdOtaFinish())),
            ],
            0.155,
            VERIFY_IMAGE,
        )
    crc = 0xDEADBEEF if state == p.OtaState.ERROR else None
    steps = [Step(0.0, start(crc=crc))]
    if state == p.OtaState.RECEIVING:
        return steps, 0.2, IMAGE
    # four chunks (the window), the fifth once their ACKs have come
    steps.append(Step(0.2, b"".join(list(chunks())[:4])))
    steps.append(Step(0.25, b"".join(list(chunks())[4:])))
    steps.append(Step(0.3, p.encode(p.CmdOtaFinish())))
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


def _cell_session(row_id: str, state: p.OtaState) -> VectorSession:
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
) -> VectorSession:
    return VectorSession(
        f"cell:{row_id}:{state.name}",
        f"command x state table, row {row_id!r} in {state.name}: set-up inputs, then the "
        "row's command as the last input",
        steps,
        config,
        t + 1.0,
    )


#: The cells of the signed-only rows (command_state.json "signed_only"): a signed-only
#: device that does not reset when it asks to (COMPLETE lasts).
SIGNED_CELLS = DeviceConfig(signed=True, security_counter=3, resets=False)
OTHER = bytes(80)


def _signed_steps_to(
    state: p.OtaState, digest_wrong: bool = False
) -> tuple[list[Step], float, bytes]:
    """As _steps_to, on a signed-only device: each session's MANIFEST first (with another
    SHA-256 for ``digest_wrong``; with START's wrong CRC for ERROR)."""
    if state == p.OtaState.IDLE:
        return [], 0.0, IMAGE
    if state == p.OtaState.ERASING:
        return (
            [
                Step(0.0, manifest_cmd(signed_head(ERASING_IMAGE))),
                Step(0.001, start(ERASING_IMAGE)),
            ],
            0.05,
            ERASING_IMAGE,
        )
    steps, t, image = _steps_to(state)
    fields: dict[str, Any] = {}
    if state == p.OtaState.ERROR:
        fields["image_crc32"] = 0xDEADBEEF
    if digest_wrong:
        fields["image_sha256"] = bytes(32)
    first = [Step(0.0, manifest_cmd(signed_head(image, **fields)))]
    moved = [Step(0.001 if s.at_s == 0.0 else s.at_s, s.data) for s in steps]
    return first + moved, t, image


def _signed_cell_command(row_id: str) -> bytes:
    good = signed_head(OTHER)
    match row_id:
        case "manifest_valid":
            return manifest_cmd(good)
        case "manifest_bad_manifest":
            return manifest_cmd(b"XBM1" + good[4:])
        case "manifest_bad_param":
            return manifest_cmd(signed_head(OTHER, image_size=0))
        case "manifest_too_large":
            return manifest_cmd(signed_head(OTHER, image_size=5 * 4096 + 1))
        case "manifest_untrusted_key":
            body = Manifest.describe(OTHER, (2, 0, 1), 5, 0x12345678).encode()
            return manifest_cmd(body + bytes(64))
        case "manifest_bad_signature":
            forged = bytearray(good)
            forged[8] ^= 0x01
            return manifest_cmd(bytes(forged))
        case "manifest_downgrade":
            return manifest_cmd(signed_head(OTHER, counter=2))
        case "manifest_short":
            return p.encode_frame(p.MsgType.CMD_OTA_MANIFEST, good[:100])
        case "confirm":
            return p.encode(p.CmdOtaConfirm())
        case "start_unsigned" | "start_signed":
            return start(OTHER)
        case "finish_digest_mismatch":
            return p.encode(p.CmdOtaFinish())
    raise AssertionError(row_id)


def _signed_cell_session(row_id: str, state: p.OtaState) -> VectorSession:
    digest_wrong = row_id == "finish_digest_mismatch" and state == p.OtaState.RECEIVING
    steps, t, _ = _signed_steps_to(state, digest_wrong)
    if digest_wrong:  # FINISH right behind the last chunk, as the v1 row "finish"
        all_chunks = list(chunks())
        steps = [*steps[:2], Step(0.2, b"".join(all_chunks[:-1]))]
        t = 0.3
        steps.append(Step(t, all_chunks[-1]))
    if row_id == "start_signed" and state in (p.OtaState.IDLE, p.OtaState.ERROR):
        steps.append(Step(t, manifest_cmd(signed_head(OTHER))))
        t += 0.01
    steps.append(Step(t, _signed_cell_command(row_id)))
    return VectorSession(
        f"cell:signed:{row_id}:{state.name}",
        f"signed-only rows (section 16.10), row {row_id!r} in {state.name}: set-up inputs, "
        "then the row's command as the last input",
        steps,
        SIGNED_CELLS,
        t + 1.0,
    )


def signed_table_sessions() -> list[VectorSession]:
    table = contract.signed_command_state_table()
    return [_signed_cell_session(row.id, state) for row in table.rows for state in contract.STATES]


def table_sessions() -> list[VectorSession]:
    table = contract.command_state_table()
    return [_cell_session(row.id, state) for row in table.rows for state in contract.STATES]

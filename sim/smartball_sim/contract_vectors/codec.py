"""The codec's and the decoder's vectors (``codec.json``, ``decoder.json``): frames built by
``pytest_smartball.contract.codec`` and byte streams fed to its ``FrameDecoder``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pytest_smartball.contract import codec as p

# --- the codec -----------------------------------------------------------------------------


def _signed_manifest() -> p.CmdOtaManifest:
    from pytest_smartball.contract import signing

    image = bytes((i * 7 + 3) & 0xFF for i in range(40))
    signed = signing.sign(image, signing.test_key(), (2, 0, 1), 5)
    return p.CmdOtaManifest(signed.manifest_bytes, signed.signature)


#: MSG_INFO's trust fields (signed updates): listed only when a device sends them, so the
#: v1 vectors read as they always did.
_INFO_TRUST_FIELDS = ("security_counter", "image_state", "trusted_key_id")


def _fields(msg: p.Message) -> dict[str, Any]:
    out = asdict(msg)
    if isinstance(msg, p.CmdOtaData):
        out["data"] = msg.data.hex(" ")
    if isinstance(msg, p.CmdOtaManifest):
        out = {"manifest": msg.manifest.hex(" "), "signature": msg.signature.hex(" ")}
    if isinstance(msg, p.MsgInfo) and not any(out[k] for k in _INFO_TRUST_FIELDS):
        out = {k: v for k, v in out.items() if k not in _INFO_TRUST_FIELDS}
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
        # signed updates (docs/protocol.md section 16): the manifest of the 40-byte image
        # of device.json's sessions, signed with the repository's test key
        ("manifest", _signed_manifest()),
        ("confirm", p.CmdOtaConfirm()),
        (
            "msg_info_signed_only",
            p.MsgInfo(
                1,
                2,
                0,
                1,
                40,
                0xE730B7EA,
                491520,
                capabilities=2,
                security_counter=5,
                image_state=1,
                trusted_key_id=0xCC1CA58D,
            ),
        ),
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
        "frames": [{"type": type_name(f.type), "payload": f.payload.hex(" ")} for f in frames],
        "stats": asdict(decoder.stats),
        "buffered": decoder.buffered,
    }


def type_name(msg_type: int) -> str:
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

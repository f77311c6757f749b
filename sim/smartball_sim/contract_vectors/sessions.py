"""The sessions of ``device.json``: the stories of docs/protocol.md, one session ending in
each error code (v1 and signed), the sessions of the rules, and with them the table's cells
(:mod:`.cells`) run through the model (:func:`device_vectors`)."""

from __future__ import annotations

from typing import Any

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import Manifest

from .cells import signed_table_sessions, table_sessions
from .inputs import (
    EIGHTY,
    ERASING_IMAGE,
    IMAGE,
    TWO_PAGES,
    chunks,
    data,
    manifest_cmd,
    signed_head,
    start,
)
from .runner import DeviceConfig, Step, VectorSession, run_session

# --- signed updates (docs/protocol.md section 16) -------------------------------------------

#: A signed-only device trusting the test key, its security counter 3.
SIGNED = DeviceConfig(signed=True, security_counter=3)


def signed_error_sessions() -> list[VectorSession]:
    """One session ending in each error code of signed updates."""
    good = signed_head()
    forged = bytearray(good)
    forged[8] ^= 0x01  # the counter changed after signing
    other_body = Manifest.describe(IMAGE, (2, 0, 1), 5, 0x12345678).encode()
    wrong_digest = signed_head(image_sha256=bytes(32))
    return [
        VectorSession(
            "error:BAD_MANIFEST",
            "CMD_OTA_MANIFEST whose magic is not SBM1, on a signed-only device.",
            [Step(0.0, manifest_cmd(b"XBM1" + good[4:]))],
            SIGNED,
        ),
        VectorSession(
            "error:UNTRUSTED_KEY",
            "CMD_OTA_MANIFEST naming a key id the device does not trust.",
            [Step(0.0, manifest_cmd(other_body + bytes(64)))],  # refused by its key id
            SIGNED,
        ),
        VectorSession(
            "error:BAD_SIGNATURE",
            "CMD_OTA_MANIFEST of the trusted key with its counter changed after signing.",
            [Step(0.0, manifest_cmd(bytes(forged)))],
            SIGNED,
        ),
        VectorSession(
            "error:DOWNGRADE",
            "CMD_OTA_MANIFEST signed by the trusted key, counter 2 below the device's 3.",
            [Step(0.0, manifest_cmd(signed_head(counter=2)))],
            SIGNED,
        ),
        VectorSession(
            "error:UNSIGNED",
            "CMD_OTA_START on a signed-only device without a manifest: refused, nothing "
            "erased (no PROGRESS follows).",
            [Step(0.0, start())],
            SIGNED,
        ),
        VectorSession(
            "error:DIGEST_MISMATCH",
            "A session whose signed manifest names another SHA-256 (size and CRC-32 right): "
            "FINISH ends in DIGEST_MISMATCH after the CRC-32 check, state ERROR.",
            [
                Step(0.0, manifest_cmd(wrong_digest)),
                Step(0.01, start()),
                Step(0.2, b"".join(list(chunks())[:4])),
                Step(0.25, b"".join(list(chunks())[4:])),
                Step(0.3, p.encode(p.CmdOtaFinish())),
            ],
            SIGNED,
        ),
    ]


def signed_story_sessions() -> list[VectorSession]:
    finish = p.encode(p.CmdOtaFinish())
    confirm = p.encode(p.CmdOtaConfirm())
    info = p.encode(p.CmdInfo())
    all_chunks = list(chunks())
    transfer = [
        Step(0.0, manifest_cmd(signed_head())),
        Step(0.01, start()),
        Step(0.2, b"".join(all_chunks[:4])),
        Step(0.25, b"".join(all_chunks[4:])),
        Step(0.3, finish),
    ]
    return [
        VectorSession(
            "story:signed_update_confirmed",
            "A signed-only device (counter 3): MANIFEST accepted (STATUS), START, the "
            "transfer, FINISH (CRC-32 and SHA-256 of the staged flash), DONE and the reset: "
            "the bootloader verifies again and swaps; INFO shows the new image in TEST "
            "(image_state 1), CONFIRM answers INFO with CONFIRMED and the counter raised to "
            "5; after a reset it stays so.",
            [
                *transfer,
                Step(5.0, info),
                Step(5.1, confirm),
                Step(5.2, b"", reset=True),
                Step(10.0, info),
            ],
            SIGNED,
        ),
        VectorSession(
            "story:signed_update_reverted",
            "The same update, and a reset before any CONFIRM: the bootloader swaps back; INFO "
            "shows the previous image, image_state 2 (REVERTED), counter still 3.",
            [*transfer, Step(5.0, info), Step(5.1, b"", reset=True), Step(10.0, info)],
            SIGNED,
        ),
        VectorSession(
            "story:manifest_then_abort",
            "An accepted manifest is discarded by ABORT: the START after it is UNSIGNED.",
            [
                Step(0.0, manifest_cmd(signed_head())),
                Step(0.01, p.encode(p.CmdOtaAbort())),
                Step(0.02, start()),
            ],
            SIGNED,
        ),
    ]


def error_sessions() -> list[VectorSession]:
    """One session ending in each error code."""
    finish = p.encode(p.CmdOtaFinish())
    erase_done = 0.2
    return [
        VectorSession(
            "error:BAD_FRAME",
            "CMD_OTA_START with a 9-byte payload (10 required).",
            [Step(0.0, p.encode_frame(p.MsgType.CMD_OTA_START, bytes(9)))],
        ),
        VectorSession(
            "error:BAD_STATE", "CMD_OTA_DATA with no session.", [Step(0.0, data(0, IMAGE[:8]))]
        ),
        VectorSession(
            "error:BAD_OFFSET",
            "A chunk at next_expected_offset that runs past image_size.",
            [
                Step(0.0, start(chunk=16)),
                Step(erase_done, b"".join(list(chunks())[:4])),
                Step(0.3, data(32, IMAGE[32:] + bytes(4))),
            ],
        ),
        VectorSession(
            "error:TOO_LARGE",
            "CMD_OTA_START with image_size one byte above staging_capacity.",
            [Step(0.0, start(bytes(5 * 4096 + 1)))],
        ),
        VectorSession(
            "error:CRC_MISMATCH",
            "A session announced with a wrong CRC: FINISH ends in CRC_MISMATCH, state ERROR.",
            [
                Step(0.0, start(crc=0xDEADBEEF)),
                Step(erase_done, b"".join(list(chunks())[:4])),
                Step(0.25, b"".join(list(chunks())[4:])),
                Step(0.3, finish),
            ],
        ),
        VectorSession(
            "error:FLASH_ERROR",
            "The staging page's erase fails, and so does its retry: FLASH_ERROR naming the "
            "START, state ERROR, session cleared.",
            [Step(0.0, b"", flash_fail_next=2), Step(0.001, start())],
        ),
        VectorSession(
            "error:UNKNOWN_COMMAND",
            "A frame of type 0x81 (a device message) sent to the device.",
            [Step(0.0, p.encode(p.MsgInfo(1, 1, 0, 0, 0, 0, 0)))],
        ),
        VectorSession(
            "error:BAD_PARAM",
            "CMD_OTA_START with chunk_size 3.",
            [Step(0.0, start(chunk=3))],
        ),
    ]


def story_sessions() -> list[VectorSession]:
    finish = p.encode(p.CmdOtaFinish())
    smartball = b"SmartBall!"
    all_chunks = list(chunks())
    return [
        VectorSession(
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
        VectorSession(
            "session:final_ack_before_done",
            "FINISH right behind the last chunk, before the flash has written it: the last "
            "byte's ACK still goes first, then DONE, then the reset (window 8). The staging "
            "bank starts holding 0x00 bytes: the erase is what makes it writable.",
            [Step(0.0, start()), Step(0.2, b"".join(all_chunks) + finish)],
            DeviceConfig(window=8, staging_fill=0x00),
        ),
        VectorSession(
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
        VectorSession(
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
        VectorSession(
            "session:status_grants_a_lost_ack",
            "Two chunks complete an ACK interval; the host lost that ACK and asks STATUS: "
            "STATUS, then an ACK of everything written.",
            [
                Step(0.0, start()),
                Step(0.2, b"".join(all_chunks[:3])),
                Step(0.3, p.encode(p.CmdOtaStatus())),
            ],
        ),
        VectorSession(
            "session:data_during_erase_rate_limited",
            "Six DATA frames while the device erases two pages (window 4): held until the "
            "first page is done, then the first and the fifth are answered with BAD_STATE.",
            [
                Step(0.0, start(ERASING_IMAGE)),
                Step(0.01, b"".join(data(0, IMAGE[:8]) for _ in range(6))),
            ],
        ),
        VectorSession(
            "session:wrong_offsets_rate_limited",
            "Nine chunks past a lost one (window 4): STATUS for the first and the fifth and "
            "the ninth; the chunk the device expects is then accepted.",
            [
                Step(0.0, start(EIGHTY, 8)),
                Step(0.2, b"".join(list(chunks(EIGHTY))[1:10])),
                Step(0.3, data(0, EIGHTY[:8])),
            ],
        ),
        VectorSession(
            "session:command_during_a_page_erase",
            "A page erase stalls the CPU: CMD_INFO sent 10 ms into the erase of a 2-page image "
            "is answered after the first page's PROGRESS, 85 ms after START.",
            [Step(0.0, start(bytes(5000))), Step(0.01, p.encode(p.CmdInfo()))],
        ),
        VectorSession(
            "session:abort_cannot_stop_a_page_erase",
            "ABORT 10 ms into the erase: answered when the page is done (85 ms); no further "
            "page is erased and no READY follows.",
            [Step(0.0, start(bytes(9000))), Step(0.01, p.encode(p.CmdOtaAbort()))],
        ),
        VectorSession(
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
        VectorSession(
            "session:stalled_partial_frame",
            "The header of a DATA frame announcing 8 bytes, then silence for 1.5 s: the device "
            "discards it, so the CMD_INFO after it is answered (kept, the partial frame would "
            "swallow it).",
            [Step(0.0, bytes.fromhex("a5 11 08 00 00")), Step(1.5, p.encode(p.CmdInfo()))],
        ),
        VectorSession(
            "session:progressive_erase",
            "A device that advertises PROGRESSIVE_ERASE (MSG_INFO's capabilities) and a START "
            "asking for it (flags 1): READY at once. The first chunk needs page 0 erased: the "
            "erase stalls the CPU 85 ms, the chunks behind it wait; the 18th chunk reaches "
            "page 1, erased before it is written. Window 16, 232-byte chunks, 5120 bytes. The "
            "staging bank starts holding 0x00 bytes (an old image): a device that wrote "
            "without erasing would read back the wrong bytes.",
            [
                Step(0.0, p.encode(p.CmdInfo()) + start(TWO_PAGES, 232, flags=1)),
                Step(0.01, b"".join(list(chunks(TWO_PAGES, 232))[:16])),
                Step(0.3, b"".join(list(chunks(TWO_PAGES, 232))[16:])),
                Step(0.6, finish),
            ],
            DeviceConfig(progressive_erase=True, window=16, staging_fill=0x00),
        ),
    ]


#: Three pages: an erase during which a resume START can arrive between two held DATA.
THREE_PAGES = bytes(3 * 4096)


def rule_sessions() -> list[VectorSession]:
    """One session per rule that a device could break while passing every other vector
    (issue 24's list): each fails a firmware that breaks its rule
    (tests/simulator/test_vector_mutants.py shows it on the model)."""
    finish = p.encode(p.CmdOtaFinish())
    status = p.encode(p.CmdOtaStatus())
    c = list(chunks())
    return [
        VectorSession(
            "session:status_acks_the_buffer_and_restarts_the_count",
            "A chunk and CMD_OTA_STATUS in one write: STATUS, then the ACK of that chunk once "
            "it is written (section 7.4: a STATUS in RECEIVING brings one, chunks still "
            "buffered or not). The ACK count restarts there: the next chunk brings no ACK, "
            "the one after it completes the interval.",
            [
                Step(0.0, start()),
                Step(0.2, c[0] + status),
                Step(0.3, c[1]),
                Step(0.4, c[2]),
            ],
        ),
        VectorSession(
            "session:resume_waits_for_the_buffer_and_restarts_the_counts",
            "Three chunks, a chunk at a wrong offset (STATUS) and a resume START in one "
            "write: the ACK of the first two chunks, then READY once the third is written "
            "(section 7.6). The resume restarts both counts: the next wrong chunk gets a "
            "STATUS again, and the next accepted chunk brings no ACK; the last one does.",
            [
                Step(0.0, start()),
                Step(0.2, b"".join(c[:3]) + data(32, IMAGE[32:]) + start()),
                Step(0.3, data(32, IMAGE[32:]) + c[3]),
                Step(0.4, c[4]),
            ],
        ),
        VectorSession(
            "session:accepting_a_chunk_restarts_the_rejection_count",
            "A chunk at a wrong offset (STATUS), the expected chunk (accepted), another at a "
            "wrong offset: STATUS again, the first rejected since the last accepted one.",
            [Step(0.0, start()), Step(0.2, data(8, IMAGE[8:16]) + c[0] + data(16, IMAGE[16:24]))],
        ),
        VectorSession(
            "session:erasing_rate_limit_restarts_at_a_resume",
            "DATA while three pages erase: the first is answered BAD_STATE after page 0; a "
            "resume START and another DATA held during page 1: after its PROGRESS, that DATA "
            "is answered too, the first since the (resume) START (section 7.4 rule 1).",
            [
                Step(0.0, start(THREE_PAGES)),
                Step(0.01, data(0, IMAGE[:8])),
                Step(0.1, start(THREE_PAGES) + data(0, IMAGE[:8])),
            ],
        ),
        VectorSession(
            "session:data_checks_in_order",
            "DATA frames each breaking two of section 7.4's checks, answered by the earlier "
            "check (max_chunk 16): a 0-byte chunk (BAD_PARAM, rule 2); a too long chunk at "
            "a wrong offset (BAD_PARAM: 2 before 3); a chunk at a wrong offset past the end "
            "(STATUS: 3 before 4); after two accepted chunks, a 10-byte chunk at the "
            "expected offset past the end (BAD_OFFSET: 4 before 5).",
            [
                Step(0.0, start(chunk=16)),
                Step(
                    0.2,
                    data(0, b"")
                    + data(16, IMAGE[:20])
                    + data(40, IMAGE[:8])
                    + b"".join(chunks(size=16))[: 2 * len(data(0, IMAGE[:16]))]
                    + data(32, IMAGE[32:] + bytes(2)),
                ),
            ],
        ),
        VectorSession(
            "session:data_checks_in_order_with_a_full_buffer",
            "A receive buffer of one chunk, filled: a 6-byte chunk at the expected offset "
            "(not whole words: BAD_PARAM, rule 5 before 6) and a too long one (BAD_PARAM, "
            "rule 2 before 6), not the STATUS of a full buffer.",
            [Step(0.0, start()), Step(0.2, c[0] + data(8, IMAGE[8:14]) + data(8, IMAGE[8:20]))],
            DeviceConfig(rx_buffer_chunks=1),
        ),
        VectorSession(
            "session:failed_flash_operations_are_retried",
            "The first page erase fails, and the first chunk's write: each is retried once "
            "(section 7.8) and succeeds; the session ends in DONE.",
            [
                Step(0.0, b"", flash_fail_next=1),
                Step(0.001, start()),
                Step(0.3, b"".join(c[:2]), flash_fail_next=1),
                Step(0.4, b"".join(c[2:]) + finish),
            ],
        ),
        VectorSession(
            "session:failed_persist",
            "The verify succeeds but the activation record (PENDING) cannot be persisted: "
            "FLASH_ERROR naming FINISH, state ERROR, no DONE, no reset; the old image stays "
            "active (section 7.8).",
            [
                Step(0.0, start()),
                Step(0.2, b"".join(c[:4])),
                Step(0.25, c[4]),
                Step(0.3, finish, persist_fails=True),
                Step(0.4, status + p.encode(p.CmdInfo())),
            ],
        ),
        VectorSession(
            "session:idle_gap_measured_on_arrival",
            "A page erase of 0.5 s (a slow flash); a DATA header arrives 10 ms into it, held "
            "with the CPU. CMD_INFO arrives at 1.2 s: 1.19 s after the header's arrival, so "
            "the partial frame is discarded (section 4 rule 7) and INFO is answered. Timed "
            "from when the header was processed (0.5 s), the gap would be 0.7 s and INFO "
            "swallowed.",
            [
                Step(0.0, start()),
                Step(0.01, bytes.fromhex("a5 11 08 00 00")),
                Step(1.2, p.encode(p.CmdInfo())),
            ],
            DeviceConfig(erase_page_s=0.5),
        ),
    ]


def device_vectors() -> list[dict[str, Any]]:
    sessions = [
        *story_sessions(),
        *rule_sessions(),
        *error_sessions(),
        *table_sessions(),
        *signed_story_sessions(),
        *signed_error_sessions(),
        *signed_table_sessions(),
    ]
    return [run_session(s) for s in sessions]

"""The simulated SmartBall's signed updates (docs/protocol.md section 16), driven directly,
up to FINISH: a v1 ball knows none of it; a provisioned ball checks the manifest in the
protocol's order before anything is erased, keeps it for the session only, and checks the
SHA-256 of the staged flash at FINISH.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import (
    CmdOtaAbort,
    CmdOtaConfirm,
    CmdOtaData,
    CmdOtaManifest,
    ErrorCode,
    ImageState,
    MsgError,
    MsgInfo,
    MsgOtaDone,
    MsgOtaReady,
    MsgOtaStatus,
    OtaState,
)
from pytest_smartball.contract.manifest import crc_preserving_flip

from .signed_ball import (
    CAPACITY,
    CHUNK,
    GOOD,
    NEW_IMAGE,
    OLD_IMAGE,
    OTHER_KEY,
    TRUSTED,
    Ball,
    _with_field,
    manifest_cmd,
    signed,
    start_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


# --- a v1 ball: nothing changes ----------------------------------------------------------------


@pytest.mark.parametrize("command", [CmdOtaManifest(bytes(56), bytes(64)), CmdOtaConfirm()])
async def test_a_v1_ball_does_not_know_the_new_commands(command: p.Message) -> None:
    ball = Ball(trusted=False)
    assert ball.refused(command) == ErrorCode.UNKNOWN_COMMAND
    info = ball.info()
    assert not info.signed_only
    # INFO's trailing fields stay off the wire: a v1 device's INFO is byte for byte v1's.
    assert (info.security_counter, info.image_state, info.trusted_key_id) == (0, 0, 0)
    assert len(p.encode(info)) == len(p.encode(replace_caps(info)))


def replace_caps(info: MsgInfo) -> MsgInfo:
    return MsgInfo(
        *[
            getattr(info, f)
            for f in (
                "protocol_version",
                "fw_major",
                "fw_minor",
                "fw_patch",
                "active_image_size",
                "active_image_crc32",
                "staging_capacity",
            )
        ]
    )


async def test_a_v1_ball_starts_without_a_manifest() -> None:
    ball = Ball(trusted=False)
    ball.fw.receive(p.encode(start_for(NEW_IMAGE)))
    await asyncio.sleep(1)
    assert ball.fw.state == OtaState.RECEIVING


# --- INFO and MANIFEST -------------------------------------------------------------------------


async def test_info_of_a_signed_only_ball() -> None:
    info = Ball(counter=3).info()
    assert info.signed_only
    assert info.capabilities & p.Capability.SIGNED_IMAGES
    assert (info.security_counter, info.image_state, info.trusted_key_id) == (
        3,
        ImageState.CONFIRMED,
        TRUSTED.key_id,
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"SBM1" + bytes(100), ErrorCode.BAD_FRAME),  # 104 bytes: too short
        (b"XBM1" + GOOD.head[4:], ErrorCode.BAD_MANIFEST),
        (_with_field(GOOD.head, 4, "<B", 2), ErrorCode.BAD_MANIFEST),  # format 2
        (signed(b"").head, ErrorCode.BAD_PARAM),  # image_size 0
        (signed(bytes(CAPACITY + 1)).head, ErrorCode.TOO_LARGE),
        (signed(key=OTHER_KEY).head, ErrorCode.UNTRUSTED_KEY),
        (GOOD.head[:-1] + bytes([GOOD.head[-1] ^ 1]), ErrorCode.BAD_SIGNATURE),
        (_with_field(GOOD.head, 8, "<I", 99), ErrorCode.BAD_SIGNATURE),  # counter raised
        (_with_field(GOOD.head, 12, "<I", 9_999), ErrorCode.BAD_SIGNATURE),  # size changed
        (signed(counter=2).head, ErrorCode.DOWNGRADE),
    ],
    ids=[
        "short",
        "magic",
        "format",
        "size-0",
        "too-large",
        "other-key",
        "signature",
        "counter-changed",
        "size-changed",
        "downgrade",
    ],
)
async def test_each_manifest_refusal_in_the_protocols_order(
    payload: bytes, code: ErrorCode
) -> None:
    ball = Ball(counter=3)
    ball.replies.clear()
    ball.fw.receive(p.encode_frame(p.MsgType.CMD_OTA_MANIFEST, payload))
    (reply,) = ball.replies
    assert isinstance(reply, MsgError) and (reply.code, reply.command) == (code, 0x15)
    assert ball.fw.signed_updates.accepted is None
    # Nothing in flash changed, and START is still refused before any erase.
    assert ball.refused(start_for(NEW_IMAGE)) == ErrorCode.UNSIGNED
    assert ball.fw.flash.erases == 0


async def test_an_accepted_manifest_answers_status_and_a_refused_one_replaces_it() -> None:
    ball = Ball()
    assert ball.ask(manifest_cmd(GOOD.head)) == MsgOtaStatus(OtaState.IDLE, 0, 0, 0)
    assert ball.fw.flash.erases == 0  # nothing in flash changes at MANIFEST
    assert ball.refused(manifest_cmd(signed(key=OTHER_KEY).head)) == ErrorCode.UNTRUSTED_KEY
    assert ball.refused(start_for(NEW_IMAGE)) == ErrorCode.UNSIGNED
    assert ball.fw.flash.erases == 0


async def test_the_counter_equal_to_the_devices_is_accepted() -> None:
    ball = Ball(counter=5)
    assert isinstance(ball.ask(manifest_cmd(signed(counter=5).head)), MsgOtaStatus)


async def test_manifest_during_a_session_is_bad_state() -> None:
    ball = Ball()
    ball.ask(manifest_cmd(GOOD.head))
    ball.fw.receive(p.encode(start_for(NEW_IMAGE)))
    assert ball.fw.state == OtaState.ERASING
    ball.replies.clear()
    ball.fw.receive(p.encode(manifest_cmd(GOOD.head)))
    await asyncio.sleep(0.1)  # (handled once the page erase under way is done)
    errors = [(m.code, m.command) for m in ball.replies if isinstance(m, MsgError)]
    assert errors == [(ErrorCode.BAD_STATE, p.MsgType.CMD_OTA_MANIFEST)]


# --- START needs the manifest --------------------------------------------------------------


async def test_start_without_or_with_another_manifest_is_unsigned_and_erases_nothing() -> None:
    ball = Ball()
    assert ball.refused(start_for(NEW_IMAGE)) == ErrorCode.UNSIGNED
    ball.ask(manifest_cmd(signed(OLD_IMAGE).head))
    assert ball.refused(start_for(NEW_IMAGE)) == ErrorCode.UNSIGNED  # another image's
    await asyncio.sleep(5)
    assert ball.fw.flash.erases == 0
    assert ball.fw.state == OtaState.IDLE


async def test_abort_and_reset_discard_the_accepted_manifest() -> None:
    ball = Ball()
    ball.ask(manifest_cmd(GOOD.head))
    ball.ask(CmdOtaAbort())
    assert ball.refused(start_for(NEW_IMAGE)) == ErrorCode.UNSIGNED
    ball.ask(manifest_cmd(GOOD.head))
    ball.reset()
    assert ball.refused(start_for(NEW_IMAGE)) == ErrorCode.UNSIGNED
    assert ball.fw.flash.erases == 0


async def test_the_manifest_belongs_to_the_session_and_a_resume_needs_none() -> None:
    ball = Ball()
    ball.ask(manifest_cmd(GOOD.head))
    ball.fw.receive(p.encode(start_for(NEW_IMAGE)))
    assert ball.fw.signed_updates.accepted is None and ball.fw.session is not None
    await asyncio.sleep(1)
    ball.fw.receive(p.encode(CmdOtaData(0, NEW_IMAGE[:CHUNK])))
    ball.replies.clear()
    ball.fw.receive(p.encode(start_for(NEW_IMAGE)))  # the host back after a drop
    await asyncio.sleep(0.1)
    assert isinstance(ball.replies[-1], MsgOtaReady)


# --- FINISH: the SHA-256 of the staged flash -------------------------------------------------


async def test_a_signed_update_finishes_with_done_and_pending() -> None:
    ball = Ball()
    replies = await ball.update()
    assert replies == [MsgOtaDone(p.crc32(NEW_IMAGE))]
    assert ball.fw.state == OtaState.COMPLETE
    assert ball.fw.bootloader.pending_image is not None


async def test_a_staged_byte_changed_behind_the_crc_is_a_digest_mismatch() -> None:
    ball = Ball()
    ball.fw.bootloader.staged_flip.append(5_000)  # the flip-staged fault: the CRC-32 is kept
    replies = await ball.update()
    assert [(m.code, m.command) for m in replies if isinstance(m, MsgError)] == [
        (ErrorCode.DIGEST_MISMATCH, p.MsgType.CMD_OTA_FINISH)
    ]
    assert ball.fw.state == OtaState.ERROR
    assert ball.fw.bootloader.pending_image is None
    ball.reset()
    assert ball.fw.active.data == OLD_IMAGE


async def test_the_flip_keeps_the_crc_and_changes_the_sha() -> None:
    for offset in (0, 17, len(NEW_IMAGE) - 3, len(NEW_IMAGE) - 1):
        tampered = crc_preserving_flip(NEW_IMAGE, offset)
        assert p.crc32(tampered) == p.crc32(NEW_IMAGE)
        assert hashlib.sha256(tampered).digest() != hashlib.sha256(NEW_IMAGE).digest()
        assert tampered[offset] == NEW_IMAGE[offset] ^ 0xFF

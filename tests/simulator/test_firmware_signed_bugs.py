"""The security bugs of the firmware bug catalogue (docs/firmware-bugs.md): each one changes
what the simulated SmartBall does in a signed update, and the same test without the bug
shows the correct behaviour.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import (
    ErrorCode,
    ImageState,
    MsgError,
    MsgOtaDone,
    MsgOtaStatus,
)
from pytest_smartball.contract.manifest import crc_preserving_flip

from .signed_ball import (
    GOOD,
    NEW_IMAGE,
    OLD_IMAGE,
    OTHER_KEY,
    Ball,
    _with_field,
    manifest_cmd,
    signed,
    start_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


# --- the security bugs of the catalogue: each changes what the device does ------------------


def _bugged(*names: str, **kwargs: Any) -> Ball:
    from smartball_sim.firmware.bugs import parse_bugs

    return Ball(bugs=parse_bugs(names), **kwargs)


@pytest.mark.parametrize("bug", [None, "no-signature-check"])
async def test_bug_no_signature_check(bug: str | None) -> None:
    ball = _bugged(*filter(None, [bug]))
    changed = _with_field(GOOD.head, 8, "<I", 99)  # the counter raised, signature kept
    reply = ball.ask(manifest_cmd(changed))
    if bug:
        assert isinstance(reply, MsgOtaStatus)
    else:
        assert isinstance(reply, MsgError) and reply.code == ErrorCode.BAD_SIGNATURE
    # another key's manifest is still refused: the key id is looked up
    assert ball.refused(manifest_cmd(signed(key=OTHER_KEY).head)) == ErrorCode.UNTRUSTED_KEY


@pytest.mark.parametrize("bug", [None, "hash-of-stream", "hash-not-compared"])
async def test_bugs_hash_of_stream_and_hash_not_compared(bug: str | None) -> None:
    ball = _bugged(*filter(None, [bug]))
    ball.fw.bootloader.staged_flip.append(5_000)
    replies = await ball.update()
    if bug is None:
        assert isinstance(replies[-1], MsgError) and replies[-1].code == ErrorCode.DIGEST_MISMATCH
        return
    assert replies == [MsgOtaDone(p.crc32(NEW_IMAGE))]  # DONE for an image not the signed one
    ball.reset()
    tampered = crc_preserving_flip(NEW_IMAGE, 5_000)
    # the bootloader's own check still refuses it unless it shares the skipped compare
    expected = tampered if bug == "hash-not-compared" else OLD_IMAGE
    assert ball.fw.active.data == expected


@pytest.mark.parametrize("bug", [None, "counter-not-enforced"])
async def test_bug_counter_not_enforced(bug: str | None) -> None:
    ball = _bugged(*filter(None, [bug]), counter=3)
    reply = ball.ask(manifest_cmd(signed(counter=2).head))
    if bug:
        assert isinstance(reply, MsgOtaStatus)
        await ball.transfer(NEW_IMAGE)
        ball.reset()
        assert ball.fw.active.data == NEW_IMAGE  # the downgrade runs
    else:
        assert isinstance(reply, MsgError) and reply.code == ErrorCode.DOWNGRADE


@pytest.mark.parametrize("bug", [None, "counter-not-persisted", "confirm-not-persisted"])
async def test_bugs_counter_and_confirm_not_persisted(bug: str | None) -> None:
    ball = _bugged(*filter(None, [bug]), counter=3)
    await ball.update(signed(counter=5))
    ball.reset()
    confirmed = ball.confirm()
    assert (confirmed.image_state, confirmed.security_counter) == (ImageState.CONFIRMED, 5)
    ball.reset()
    info = ball.info()
    if bug == "counter-not-persisted":
        assert (info.image_state, info.security_counter) == (ImageState.CONFIRMED, 3)
    elif bug == "confirm-not-persisted":
        assert info.image_state == ImageState.REVERTED
        assert ball.fw.active.data == OLD_IMAGE
    else:
        assert (info.image_state, info.security_counter) == (ImageState.CONFIRMED, 5)
        assert ball.fw.active.data == NEW_IMAGE


@pytest.mark.parametrize("bug", [None, "no-revert"])
async def test_bug_no_revert(bug: str | None) -> None:
    ball = _bugged(*filter(None, [bug]), counter=3)
    await ball.update(signed(counter=5))
    ball.reset()
    ball.reset()  # no confirm
    info = ball.info()
    if bug:
        assert ball.fw.active.data == NEW_IMAGE
        assert info.image_state == ImageState.CONFIRMED
    else:
        assert ball.fw.active.data == OLD_IMAGE
        assert info.image_state == ImageState.REVERTED


@pytest.mark.parametrize("bug", [None, "bootloader-trusts-pending"])
async def test_bug_bootloader_trusts_pending(bug: str | None) -> None:
    ball = _bugged(*filter(None, [bug]))
    await ball.update()
    ball.fw.bootloader.corrupt_staged(100)  # after DONE
    ball.reset()
    expected = crc_preserving_flip(NEW_IMAGE, 100) if bug else OLD_IMAGE
    assert ball.fw.active.data == expected


@pytest.mark.parametrize("bug", [None, "erase-before-manifest-check"])
async def test_bug_erase_before_manifest_check(bug: str | None) -> None:
    ball = _bugged(*filter(None, [bug]))
    assert ball.refused(start_for(NEW_IMAGE)) == ErrorCode.UNSIGNED
    assert (ball.fw.flash.erases > 0) == bool(bug)
    # in TEST state it wipes the image a revert needs
    ball = _bugged(*filter(None, [bug]))
    await ball.update()
    ball.reset()
    assert ball.refused(start_for(OLD_IMAGE)) == ErrorCode.BAD_STATE
    intact = ball.fw.flash.read(0, len(OLD_IMAGE)) == OLD_IMAGE
    assert intact != bool(bug)

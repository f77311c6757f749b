"""The simulated SmartBall's signed updates (docs/protocol.md section 16), driven directly:
a v1 ball knows none of it; a provisioned ball checks the manifest in the protocol's
order before anything is erased, the SHA-256 of the staged flash at FINISH, verifies again
at boot, swaps the banks, runs the new image in TEST, persists a confirm and the counter,
and reverts at a reset without one. A power cut in the swap resumes it."""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.codec import (
    CmdInfo,
    CmdOtaAbort,
    CmdOtaConfirm,
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaManifest,
    CmdOtaStart,
    ErrorCode,
    ImageState,
    MsgError,
    MsgInfo,
    MsgOtaDone,
    MsgOtaReady,
    MsgOtaStatus,
    OtaState,
)
from pytest_smartball.contract.manifest import MANIFEST_SIZE, SignedImage, crc_preserving_flip
from smartball_sim.firmware.flash import Flash
from smartball_sim.firmware.model import (
    DEFAULT_STAGING_CAPACITY as DEFAULT_CAPACITY,
)
from smartball_sim.firmware.model import PAGE_SIZE, FlashTimings, SmartBallFirmware
from smartball_sim.firmware.swap import (
    STEPS_PER_PAGE,
    SwapRecord,
    SwapWear,
    active_bank_of,
    run_swap,
)
from smartball_sim.make_image import make_image

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

OLD_IMAGE = make_image(6_000, 3, version=(1, 0, 0))
NEW_IMAGE = make_image(10_000, 7, version=(2, 0, 1))
CAPACITY = 5 * PAGE_SIZE
TIMINGS = FlashTimings(erase_page_s=0.085, verify_s_per_byte=1e-6, write_word_s=0.0)
KEY = signing.test_key()
TRUSTED = signing.test_trusted_key()
OTHER_KEY = signing.generate()
CHUNK = 100


def signed(
    image: bytes = NEW_IMAGE,
    counter: int = 5,
    key: Any = KEY,
    version: tuple[int, int, int] = (2, 0, 1),
) -> SignedImage:
    return signing.sign(image, key, version, counter)


def manifest_cmd(head: bytes) -> CmdOtaManifest:
    return CmdOtaManifest(head[:MANIFEST_SIZE], head[MANIFEST_SIZE:])


def start_for(image: bytes) -> CmdOtaStart:
    return CmdOtaStart(len(image), p.crc32(image), CHUNK, 0)


class Ball:
    """The firmware and a host; ``reset()`` is the power cycle (what the device does after
    DONE, or a power cut)."""

    def __init__(self, *, trusted: bool = True, counter: int = 3, **kwargs: Any) -> None:
        self.decoder = p.FrameDecoder()
        self.replies: list[p.Message] = []
        self.reset_requests = 0
        kwargs.setdefault("staging_capacity", CAPACITY)
        kwargs.setdefault("timings", TIMINGS)
        self.fw = SmartBallFirmware(
            active_image=OLD_IMAGE,
            version=(1, 0, 0),
            window=4,
            send=self._on_send,
            request_reset=self._on_reset_request,
            trusted_keys=[TRUSTED] if trusted else [],
            security_counter=counter,
            **kwargs,
        )

    def _on_send(self, frame: bytes) -> None:
        self.replies.extend(p.parse_message(f) for f in self.decoder.feed(frame))

    def _on_reset_request(self) -> None:
        self.reset_requests += 1

    def ask(self, msg: p.Message) -> p.Message:
        self.replies.clear()
        self.fw.receive(p.encode(msg))
        assert len(self.replies) == 1, self.replies
        return self.replies[0]

    def refused(self, msg: p.Message) -> ErrorCode:
        reply = self.ask(msg)
        assert isinstance(reply, MsgError), reply
        assert reply.command == msg.TYPE
        return ErrorCode(reply.code)

    def info(self) -> MsgInfo:
        reply = self.ask(CmdInfo())
        assert isinstance(reply, MsgInfo)
        return reply

    def confirm(self) -> MsgInfo:
        reply = self.ask(CmdOtaConfirm())
        assert isinstance(reply, MsgInfo)
        return reply

    async def transfer(self, image: bytes = NEW_IMAGE) -> list[p.Message]:
        """START (the manifest already accepted), the erase, every chunk, FINISH, verify."""
        self.replies.clear()
        self.fw.receive(p.encode(start_for(image)))
        pages = math.ceil(len(image) / PAGE_SIZE)
        await asyncio.sleep(0.085 * pages + 0.01)
        assert isinstance(self.replies[-1], MsgOtaReady), self.replies
        for offset in range(0, len(image), CHUNK):
            self.fw.receive(p.encode(CmdOtaData(offset, image[offset : offset + CHUNK])))
        self.replies.clear()
        self.fw.receive(p.encode(CmdOtaFinish()))
        await asyncio.sleep(0.1)
        return list(self.replies)

    async def update(self, update: SignedImage | None = None) -> list[p.Message]:
        update = update or signed()
        assert isinstance(self.ask(manifest_cmd(update.head)), MsgOtaStatus)
        return await self.transfer(update.image)

    def reset(self) -> float:
        return self.fw.power_cycle()


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


def _with_field(head: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(head)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = signed()


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
    assert ball.fw.accepted is None
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
    assert ball.fw.accepted is None and ball.fw.session is not None
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
    assert ball.fw.pending_image is not None


async def test_a_staged_byte_changed_behind_the_crc_is_a_digest_mismatch() -> None:
    ball = Ball()
    ball.fw.staged_flip.append(5_000)  # the flip-staged fault: the CRC-32 is kept
    replies = await ball.update()
    assert [(m.code, m.command) for m in replies if isinstance(m, MsgError)] == [
        (ErrorCode.DIGEST_MISMATCH, p.MsgType.CMD_OTA_FINISH)
    ]
    assert ball.fw.state == OtaState.ERROR
    assert ball.fw.pending_image is None
    ball.reset()
    assert ball.fw.active.data == OLD_IMAGE


async def test_the_flip_keeps_the_crc_and_changes_the_sha() -> None:
    for offset in (0, 17, len(NEW_IMAGE) - 3, len(NEW_IMAGE) - 1):
        tampered = crc_preserving_flip(NEW_IMAGE, offset)
        assert p.crc32(tampered) == p.crc32(NEW_IMAGE)
        assert hashlib.sha256(tampered).digest() != hashlib.sha256(NEW_IMAGE).digest()
        assert tampered[offset] == NEW_IMAGE[offset] ^ 0xFF


# --- the bootloader, TEST, CONFIRM, revert -----------------------------------------------------


async def test_the_new_image_runs_in_test_and_confirm_persists_state_and_counter() -> None:
    ball = Ball(counter=3)
    await ball.update(signed(counter=5))
    ball.reset()
    assert ball.fw.active.data == NEW_IMAGE
    info = ball.info()
    assert (info.image_state, info.security_counter) == (ImageState.TEST, 3)
    assert (info.fw_major, info.fw_minor, info.fw_patch) == (2, 0, 1)
    # the previous image is intact in the staging bank
    assert ball.fw.flash.read(0, len(OLD_IMAGE)) == OLD_IMAGE
    # in TEST, no new update may start: the staging bank holds the revert's image
    assert ball.refused(manifest_cmd(GOOD.head)) == ErrorCode.BAD_STATE
    confirmed = ball.confirm()
    assert (confirmed.image_state, confirmed.security_counter) == (ImageState.CONFIRMED, 5)
    for _ in range(2):
        ball.reset()
        info = ball.info()
        assert ball.fw.active.data == NEW_IMAGE
        assert (info.image_state, info.security_counter) == (ImageState.CONFIRMED, 5)
    assert ball.confirm() == ball.info()  # nothing changes outside TEST
    # the confirmed counter now refuses what was accepted before
    assert ball.refused(manifest_cmd(signed(counter=4).head)) == ErrorCode.DOWNGRADE


async def test_a_reset_in_test_reverts_without_raising_the_counter() -> None:
    ball = Ball(counter=3)
    await ball.update(signed(counter=5))
    ball.reset()
    assert ball.info().image_state == ImageState.TEST
    ball.reset()  # no confirm
    info = ball.info()
    assert ball.fw.active.data == OLD_IMAGE
    assert info.active_image_crc32 == p.crc32(OLD_IMAGE)
    assert (info.image_state, info.security_counter) == (ImageState.REVERTED, 3)
    assert ball.confirm().image_state == ImageState.REVERTED  # nothing to confirm
    ball.reset()
    assert ball.info().image_state == ImageState.CONFIRMED
    assert ball.fw.active.data == OLD_IMAGE


async def test_start_in_test_state_is_bad_state() -> None:
    ball = Ball()
    await ball.update()
    ball.reset()
    assert ball.refused(start_for(OLD_IMAGE)) == ErrorCode.BAD_STATE
    assert ball.fw.flash.read(0, len(OLD_IMAGE)) == OLD_IMAGE


async def test_the_bootloader_verifies_pending_again() -> None:
    ball = Ball()
    await ball.update()
    ball.fw.corrupt_staged(100)  # after DONE: only the bootloader's own check sees it
    ball.reset()
    assert ball.fw.active.data == OLD_IMAGE
    assert ball.info().image_state == ImageState.CONFIRMED


async def test_a_swap_costs_three_erases_per_page_and_its_time() -> None:
    ball = Ball()
    await ball.update()
    erases_before = ball.fw.flash.erases
    seconds = ball.reset()
    pages = math.ceil(max(len(NEW_IMAGE), len(OLD_IMAGE)) / PAGE_SIZE)
    assert ball.fw.flash.erases - erases_before == pages
    assert ball.fw.swap_wear.active_bank_erases == pages
    assert ball.fw.swap_wear.scratch_erases == pages
    assert seconds >= pages * STEPS_PER_PAGE * TIMINGS.erase_page_s


@pytest.mark.parametrize("cut_after", range(1, 3 * 3))
async def test_a_power_cut_in_the_swap_resumes_it(cut_after: int) -> None:
    ball = Ball()
    await ball.update()
    ball.fw.swap_cut_after_steps = cut_after
    ball.reset()
    assert ball.fw.swap_resumes == 1
    assert ball.fw.active.data == NEW_IMAGE
    assert ball.info().image_state == ImageState.TEST
    ball.reset()  # and the revert, cut as well, resumes too
    assert ball.fw.active.data == OLD_IMAGE


@pytest.mark.parametrize("cut_after", range(0, 3 * 3 + 1))
async def test_every_step_of_a_swap_keeps_both_images_recoverable(cut_after: int) -> None:
    """After any number of steps, the trailer, the banks and the scratch page still hold
    both images: the swap can always be finished."""
    old, new = OLD_IMAGE, NEW_IMAGE
    pages = math.ceil(max(len(old), len(new)) / PAGE_SIZE)
    staging = Flash(CAPACITY)
    staging.write_words(0, new + b"\xff" * (-len(new) % 4))
    record = SwapRecord(
        pages, len(new), (2, 0, 1), None, len(old), (1, 0, 0), active_bank_of(old, pages)
    )
    assert run_swap(record, staging, SwapWear(), budget=cut_after) == cut_after
    run_swap(record, staging, SwapWear())  # the next boot
    assert bytes(record.active_bank[: len(new)]) == new
    assert staging.read(0, len(old)) == old


# --- provisioning through the targets --------------------------------------------------------


async def test_make_sim_target_stays_v1_unless_asked() -> None:
    from pytest_smartball.targets.simulated import make_sim_target

    plain = make_sim_target()
    assert plain.sim is not None and not plain.sim.firmware.info().signed_only
    signed_ball = make_sim_target(sim_trust="test", security_counter=7)
    assert signed_ball.sim is not None
    info = signed_ball.sim.firmware.info()
    assert (info.signed_only, info.security_counter, info.trusted_key_id) == (
        True,
        7,
        TRUSTED.key_id,
    )
    with pytest.raises(ValueError, match="--sim-trust 'maybe'"):
        make_sim_target(sim_trust="maybe")


# --- the fault windows of a signed update (docs/faults.md) -------------------------------------


class Device:
    """A simulated SmartBall (firmware, fault injection, resets) driven without a link: the
    tests look at what it holds, not at what it sends."""

    def __init__(self, faults: str) -> None:
        from smartball_sim.device import SimDevice

        self.sim = SimDevice(
            active_image=OLD_IMAGE,
            staging_capacity=CAPACITY,
            flash=TIMINGS,
            trusted_keys=[TRUSTED],
            security_counter=3,
            faults=faults,
        )
        self.fw = self.sim.firmware

    def send(self, msg: p.Message) -> None:
        self.fw.receive(p.encode(msg))

    async def update(self, update: SignedImage) -> None:
        self.sim.injector.fire_untriggered()
        self.send(manifest_cmd(update.head))
        self.send(start_for(update.image))
        await asyncio.sleep(1)
        for offset in range(0, len(update.image), CHUNK):
            self.send(CmdOtaData(offset, update.image[offset : offset + CHUNK]))
        self.send(CmdOtaFinish())
        await asyncio.sleep(30)  # verify, DONE, the reset and the boot (with its swap)


async def test_a_power_cut_between_the_verify_and_pending_keeps_the_old_image() -> None:
    device = Device("reboot@at:verified")
    await device.update(signed(counter=5))
    assert device.fw.active.data == OLD_IMAGE
    assert device.fw.pending_image is None
    assert (device.fw.image_state, device.fw.security_counter) == (ImageState.CONFIRMED, 3)
    assert [(r.fault, r.trigger) for r in device.sim.fault_log] == [("reboot", "at:verified")]


async def test_a_power_cut_in_the_swap_still_brings_the_new_image_up_in_test() -> None:
    device = Device("swap-cut:4")
    await device.update(signed(counter=5))
    assert device.fw.active.data == NEW_IMAGE
    assert device.fw.image_state == ImageState.TEST
    assert device.fw.swap_resumes == 1


async def test_a_power_cut_after_the_swap_before_the_confirm_reverts() -> None:
    device = Device("reboot@cmd:CMD_OTA_CONFIRM")
    await device.update(signed(counter=5))
    assert device.fw.image_state == ImageState.TEST
    device.send(CmdOtaConfirm())
    await asyncio.sleep(30)
    assert device.fw.active.data == OLD_IMAGE
    assert (device.fw.image_state, device.fw.security_counter) == (ImageState.REVERTED, 3)


async def test_a_power_cut_after_the_confirm_keeps_the_confirmed_image() -> None:
    device = Device("reboot@at:confirmed")
    await device.update(signed(counter=5))
    device.send(CmdOtaConfirm())
    await asyncio.sleep(30)
    assert [(r.fault, r.trigger) for r in device.sim.fault_log] == [("reboot", "at:confirmed")]
    assert device.fw.active.data == NEW_IMAGE
    assert (device.fw.image_state, device.fw.security_counter) == (ImageState.CONFIRMED, 5)


async def test_flip_staged_during_the_transfer_is_a_digest_mismatch() -> None:
    device = Device("flip-staged:5000")
    await device.update(signed(counter=5))
    assert device.fw.state == OtaState.ERROR
    assert device.fw.active.data == OLD_IMAGE


async def test_flip_staged_after_done_is_refused_by_the_bootloader() -> None:
    device = Device("no-reset")  # DONE, and the device waits in COMPLETE
    await device.update(signed(counter=5))
    assert device.fw.state == OtaState.COMPLETE
    device.sim.set_faults("flip-staged:100")
    device.sim.reboot()
    await asyncio.sleep(30)
    assert device.fw.active.data == OLD_IMAGE
    assert device.fw.image_state == ImageState.CONFIRMED


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
    ball.fw.staged_flip.append(5_000)
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
    ball.fw.corrupt_staged(100)  # after DONE
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


# --- the swap's timing obligation (timing.json: after_swap_per_page_s) -------------------------


@pytest.mark.parametrize("size", [40, 64 * 1024, DEFAULT_CAPACITY])
async def test_a_swap_meets_the_reset_to_advertising_obligation(size: int) -> None:
    from pytest_smartball import contract
    from smartball_sim.device import RadioTimings

    new = make_image(size, 11, version=(3, 0, 0))
    ball = Ball(timings=FlashTimings(), staging_capacity=DEFAULT_CAPACITY)
    s = ball.fw
    # the staged image, written as a session would have (the transfer is not the point)
    s.flash.write_words(0, new + b"\xff" * (-len(new) % 4))
    s._pending = _pending_for(signed(new))
    boot = RadioTimings().boot_s + ball.reset()
    pages = math.ceil(max(size, len(OLD_IMAGE)) / PAGE_SIZE)
    assert ball.fw.active.data == new
    assert boot <= contract.timing().reset_to_advertising_after_swap_max_s(pages)
    revert = RadioTimings().boot_s + ball.reset()
    assert ball.fw.active.data == OLD_IMAGE
    assert revert <= contract.timing().reset_to_advertising_after_swap_max_s(pages)


def _pending_for(update: SignedImage) -> Any:
    from smartball_sim.firmware.types import _PendingRecord

    return _PendingRecord(len(update.image), p.crc32(update.image), update.head)

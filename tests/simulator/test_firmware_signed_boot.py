"""The simulated SmartBall's signed updates (docs/protocol.md section 16) after FINISH: the
bootloader verifies again, swaps the banks, runs the new image in TEST, persists a confirm
and the counter, and reverts at a reset without one. A power cut in the swap resumes it;
the fault windows of a signed update (docs/faults.md: flip-staged, swap-cut) and the swap's
timing obligation.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import (
    CmdOtaConfirm,
    CmdOtaData,
    CmdOtaFinish,
    ErrorCode,
    ImageState,
    OtaState,
)
from pytest_smartball.contract.manifest import SignedImage
from smartball_sim.firmware.flash import Flash
from smartball_sim.firmware.model import (
    DEFAULT_STAGING_CAPACITY as DEFAULT_CAPACITY,
)
from smartball_sim.firmware.model import PAGE_SIZE, FlashTimings
from smartball_sim.firmware.swap import (
    STEPS_PER_PAGE,
    SwapRecord,
    SwapWear,
    active_bank_of,
    run_swap,
)
from smartball_sim.make_image import make_image

from .signed_ball import (
    CAPACITY,
    CHUNK,
    GOOD,
    NEW_IMAGE,
    OLD_IMAGE,
    TIMINGS,
    TRUSTED,
    Ball,
    manifest_cmd,
    signed,
    start_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


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
    ball.fw.bootloader.corrupt_staged(100)  # after DONE: only the bootloader's own check sees it
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
    assert ball.fw.bootloader.swap_wear.active_bank_erases == pages
    assert ball.fw.bootloader.swap_wear.scratch_erases == pages
    assert seconds >= pages * STEPS_PER_PAGE * TIMINGS.erase_page_s


@pytest.mark.parametrize("cut_after", range(1, 3 * 3))
async def test_a_power_cut_in_the_swap_resumes_it(cut_after: int) -> None:
    ball = Ball()
    await ball.update()
    ball.fw.bootloader.swap_cut_after_steps = cut_after
    ball.reset()
    assert ball.fw.bootloader.swap_resumes == 1
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
    assert device.fw.bootloader.pending_image is None
    assert (device.fw.image_state, device.fw.security_counter) == (ImageState.CONFIRMED, 3)
    assert [(r.fault, r.trigger) for r in device.sim.fault_log] == [("reboot", "at:verified")]


async def test_a_power_cut_in_the_swap_still_brings_the_new_image_up_in_test() -> None:
    device = Device("swap-cut:4")
    await device.update(signed(counter=5))
    assert device.fw.active.data == NEW_IMAGE
    assert device.fw.image_state == ImageState.TEST
    assert device.fw.bootloader.swap_resumes == 1


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

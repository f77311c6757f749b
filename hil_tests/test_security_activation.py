"""The release gate's security tests of what activates and what stays (docs/security.md: each
promise names its tests here): downgrade and replay, confirm, revert and the security counter,
the staged flash changed behind the firmware's back, and power cuts around the activation.

They speak protocol v1 with section 16 over NUS, as an attacker in radio range would, so
they hold on the simulator and on a bench board (``--device=real`` with the key the board
trusts, ``--signing-key``). A firmware that does not advertise SIGNED_IMAGES fails every
one of them: a release gate must not pass a firmware that runs any image it is sent.

The images sent and refused are random bytes that never run. The tests that activate an
image (revert, confirm, counter) flash the release image (``--firmware``; on the simulator
a generated one), which a real board can boot; those that raise the board's security
counter run on the simulator only, or on a board whose counter is already above 0 where
that is enough (a raised counter on a real board is for good: its baseline image could
never be flashed back).
"""

from __future__ import annotations

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.suite_signer import SuiteSigner
from pytest_smartball.targets import Target

from . import conformance as c
from .security import (
    IMAGE,
    PowerCycle,
    back_after_reset,
    confirm,
    counter_raise_allowed,
    err,
    expect_accepted,
    expect_manifest_refused,
    expect_refused,
    lose_link,
    manifest_of,
    raised,
    release_image,
    running,
    signed_only,
    transfer,
    untouched,
    update,
)

pytestmark = pytest.mark.asyncio


# --- 2. downgrade and replay ---------------------------------------------------------------


async def test_a_downgrade_is_refused(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    reset: PowerCycle | None,
    firmware_image: FirmwareImage,
) -> None:
    """A manifest whose counter is below the device's: DOWNGRADE, and START is UNSIGNED.
    A device at counter 0 is raised first (simulator only: see counter_raise_allowed)."""
    signed_only(info)
    link = nus
    if info.security_counter == 0:
        counter_raise_allowed(smartball)
        link, info = await raised(nus, smartball, signer, release_image(firmware_image, info), info)
    try:
        old = signer.manifest_command(IMAGE, counter=info.security_counter - 1)
        await expect_manifest_refused(link, old, err.DOWNGRADE, "a counter below the device's")
        start = p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), c.CHUNK)
        await expect_refused(link, start, err.UNSIGNED, "START after a downgrade")
        await untouched(link, await running(link), smartball, reset)
    finally:
        if link is not nus:
            await link.close()


async def test_a_replayed_older_update_is_refused(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    firmware_image: FirmwareImage,
) -> None:
    """An attacker recorded an update at the device's counter; a newer one (counter + 1)
    is flashed and confirmed; the recording replayed is refused (DOWNGRADE), START too."""
    signed_only(info)
    counter_raise_allowed(smartball)
    recorded = signer.manifest_command(IMAGE, counter=info.security_counter)
    await expect_accepted(nus, recorded, "the update the attacker records")
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    link, confirmed = await raised(
        nus, smartball, signer, release_image(firmware_image, info), info
    )
    async with link:
        assert confirmed.security_counter == info.security_counter + 1, confirmed
        await expect_manifest_refused(link, recorded, err.DOWNGRADE, "the replayed manifest")
        start = p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), c.CHUNK)
        await expect_refused(link, start, err.UNSIGNED, "START of the replayed update")
        assert await running(link) == confirmed


# --- 5. confirm, revert, counter ----------------------------------------------------------


async def test_an_unconfirmed_image_reverts_at_the_next_reset(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    power_cycle: PowerCycle,
    firmware_image: FirmwareImage,
) -> None:
    signed_only(info)
    image = release_image(firmware_image, info)
    command = signer.manifest_command(image, counter=info.security_counter)
    async with await update(nus, smartball, image, command) as link:
        trial = await running(link)
    assert trial.runs(len(image), p.crc32(image)), f"after the update the device runs {trial}"
    assert trial.image_state == p.ImageState.TEST, (
        f"a new image must boot in TEST state (not confirmed): {trial}"
    )
    await power_cycle()
    async with await back_after_reset(smartball) as link:
        back = await running(link)
    assert back.runs(info.active_image_size, info.active_image_crc32), (
        f"a reset before CMD_OTA_CONFIRM must revert to the previous image "
        f"({info.active_image_size} bytes, crc32 {info.active_image_crc32:08x}): the device "
        f"runs {back}"
    )
    assert back.image_state == p.ImageState.REVERTED, f"after a revert: {back}"
    assert back.security_counter == info.security_counter, f"a revert raised the counter: {back}"


async def test_a_confirmed_image_survives_resets(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    power_cycle: PowerCycle,
    firmware_image: FirmwareImage,
) -> None:
    signed_only(info)
    image = release_image(firmware_image, info)
    command = signer.manifest_command(image, counter=info.security_counter)
    async with await update(nus, smartball, image, command) as link:
        confirmed = await confirm(link)
    assert confirmed.runs(len(image), p.crc32(image)), confirmed
    assert confirmed.image_state == p.ImageState.CONFIRMED, f"CONFIRM answered {confirmed}"
    for n in (1, 2):
        await power_cycle()
        async with await back_after_reset(smartball) as link:
            after = await running(link)
        assert after == confirmed, (
            f"reset {n} after CONFIRM: the device runs {after}, not {confirmed}"
        )


async def test_confirm_raises_the_security_counter_for_good(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    power_cycle: PowerCycle,
    firmware_image: FirmwareImage,
) -> None:
    """Not at FINISH, not at the boot in TEST state: at CONFIRM, persisted."""
    signed_only(info)
    counter_raise_allowed(smartball)
    image = release_image(firmware_image, info)
    command = signer.manifest_command(image, counter=info.security_counter + 1)
    async with await update(nus, smartball, image, command) as link:
        trial = await running(link)
        assert trial.security_counter == info.security_counter, (
            f"the counter was raised before CONFIRM: {trial}"
        )
        confirmed = await confirm(link)
    assert confirmed.security_counter == info.security_counter + 1, (
        f"CONFIRM of an image at counter {info.security_counter + 1} answered {confirmed}"
    )
    await power_cycle()
    async with await back_after_reset(smartball) as link:
        after = await running(link)
    assert after.security_counter == info.security_counter + 1, (
        f"after a reset the counter is {after.security_counter}: the raise was not persisted"
    )
    assert after == confirmed, f"after a reset: {after}, not {confirmed}"


# --- the simulator's view: the flash changes behind the firmware's back -------------------


@pytest.mark.sim_only
async def test_a_staging_flip_after_the_transfer_is_caught(
    nus: NusLink, info: p.MsgInfo, signer: SuiteSigner, smartball: Target, power_cycle: PowerCycle
) -> None:
    """The genuine image arrives intact, then a byte of the staged flash flips (its CRC-32
    kept): FINISH must hash the flash, not the bytes as they arrived (DIGEST_MISMATCH)."""
    signed_only(info)
    assert smartball.sim is not None
    signed = signer.sign(IMAGE, counter=info.security_counter)
    await expect_accepted(nus, manifest_of(signed.head), "the genuine manifest")
    smartball.sim.firmware.bootloader.staged_flip.append(len(IMAGE) // 3)
    reply = await transfer(nus, IMAGE)
    assert isinstance(reply, p.MsgError) and reply.code == err.DIGEST_MISMATCH, (
        f"the staged flash differs from the image that arrived: FINISH must answer "
        f"DIGEST_MISMATCH (the SHA-256 of the flash), the device answered {reply}"
    )
    await untouched(nus, info, smartball, power_cycle)


@pytest.mark.sim_only
async def test_the_bootloader_verifies_the_pending_image_again(
    nus: NusLink, info: p.MsgInfo, signer: SuiteSigner, smartball: Target, power_cycle: PowerCycle
) -> None:
    """A verified image is PENDING (the device held in COMPLETE), then its staged flash
    changes before the reset: the bootloader must verify it again and keep the old image."""
    signed_only(info)
    sim = smartball.sim
    assert sim is not None
    sim.set_faults("no-reset")
    signed = signer.sign(IMAGE, counter=info.security_counter)
    await expect_accepted(nus, manifest_of(signed.head), "the genuine manifest")
    reply = await transfer(nus, IMAGE)
    assert reply == p.MsgOtaDone(p.crc32(IMAGE)), f"FINISH of the genuine image: {reply}"
    sim.firmware.bootloader.corrupt_staged(len(IMAGE) // 2)
    await power_cycle()
    async with await back_after_reset(smartball) as link:
        after = await running(link)
    assert after == info, (
        f"the staging bank changed after FINISH and the bootloader ran it: before {info}, "
        f"after the reset {after} (it must check the signature and SHA-256 again)"
    )


# --- power cuts in the windows of a signed update (the simulator's fault plans) -----------


@pytest.mark.faults("reboot@at:verified")
async def test_a_power_cut_between_the_verify_and_pending_keeps_the_old_image(
    nus: NusLink, info: p.MsgInfo, signer: SuiteSigner, smartball: Target
) -> None:
    signed_only(info)
    signed = signer.sign(IMAGE, counter=info.security_counter)
    await expect_accepted(nus, manifest_of(signed.head), "the genuine manifest")
    ready = await c.start(nus, IMAGE, manifest=False)
    await c.stream(nus, IMAGE, ready, len(IMAGE))
    await nus.send(p.CmdOtaFinish())
    await lose_link(nus, "after FINISH's verify")
    async with await back_after_reset(smartball) as link:
        after = await running(link)
    assert after == info, (
        f"PENDING was never persisted: the old image must run, unchanged; before {info}, "
        f"after {after}"
    )


@pytest.mark.faults("swap-cut:4")
async def test_a_power_cut_during_the_swap_resumes_it(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    firmware_image: FirmwareImage,
) -> None:
    """The power fails 4 steps into the bootloader's swap: the next boot resumes it, and
    the new image comes up on trial (never a ball without a bootable image)."""
    signed_only(info)
    image = release_image(firmware_image, info)
    command = signer.manifest_command(image, counter=info.security_counter)
    async with await update(nus, smartball, image, command) as link:
        trial = await running(link)
    assert trial.runs(len(image), p.crc32(image)), f"after the interrupted swap: {trial}"
    assert trial.image_state == p.ImageState.TEST, trial


@pytest.mark.faults("reboot@cmd:CMD_OTA_CONFIRM")
async def test_a_power_cut_before_the_confirm_reverts(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    firmware_image: FirmwareImage,
) -> None:
    signed_only(info)
    image = release_image(firmware_image, info)
    command = signer.manifest_command(image, counter=info.security_counter + 1)
    link = await update(nus, smartball, image, command)
    trial = await running(link)  # a host confirms what it saw running
    assert trial.image_state == p.ImageState.TEST, trial
    await link.send(p.CmdOtaConfirm())
    await lose_link(link, "as CONFIRM arrives")
    await link.close()
    async with await back_after_reset(smartball) as link:
        back = await running(link)
    assert back.runs(info.active_image_size, info.active_image_crc32), back
    assert back.image_state == p.ImageState.REVERTED, back
    assert back.security_counter == info.security_counter, back


@pytest.mark.faults("reboot@at:confirmed")
async def test_a_power_cut_just_after_the_confirm_keeps_it(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    firmware_image: FirmwareImage,
) -> None:
    """CONFIRM persisted the confirm and the raised counter, then the power failed before
    its INFO left: after the reset the new image runs, confirmed, at the raised counter."""
    signed_only(info)
    image = release_image(firmware_image, info)
    command = signer.manifest_command(image, counter=info.security_counter + 1)
    link = await update(nus, smartball, image, command)
    trial = await running(link)  # a host confirms what it saw running
    assert trial.image_state == p.ImageState.TEST, trial
    await link.send(p.CmdOtaConfirm())
    await lose_link(link, "just after the confirm")
    await link.close()
    async with await back_after_reset(smartball) as link:
        after = await running(link)
    assert after.runs(len(image), p.crc32(image)), after
    assert after.image_state == p.ImageState.CONFIRMED, after
    assert after.security_counter == info.security_counter + 1, after

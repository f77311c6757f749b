"""What the release gate's security tests share (docs/security.md): the images they send,
the refusals they expect, a whole signed update and the link back after a reset.

The tests are ``test_security_refusals.py`` (what must be refused before anything
activates) and ``test_security_activation.py`` (downgrade, replay, confirm, revert, the
counter and power cuts around the activation); their fixtures (``info``, ``signer``,
``foreign``, ``reset``) are in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import MANIFEST_SIZE
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.suite_signer import SuiteSigner
from pytest_smartball.targets import Target

from . import conformance as c
from . import helpers as h
from .conformance import TIMING

PowerCycle = Callable[[], Awaitable[None]]
err = p.ErrorCode

#: The sentence a device without SIGNED_IMAGES fails every test here with.
RUNS_ANY_IMAGE = (
    "the device runs any image it is sent: it does not advertise SIGNED_IMAGES in "
    "MSG_INFO.capabilities, so nothing stops anyone in radio range from flashing it "
    "(docs/security.md)"
)
#: Three pages, the last one partly: never activated (each session here is refused).
IMAGE = random.Random(23).randbytes(3 * h.PAGE_SIZE - 100)
#: The pages of a full staging bank: the longest swap.
FULL_BANK_PAGES = -(-contract.flash_layout().staging_capacity // h.PAGE_SIZE)
#: How long a refusal may take: a reply, never an erase (which is 85 ms a page).
REFUSAL_S = TIMING.reply_max_s + c.RADIO_MARGIN_S


async def back_after_reset(smartball: Target) -> NusLink:
    """A link to the device once it is back from a reset. On a signed-only device every
    reset may swap the banks (into a new image, or back in a revert): the swap's limit
    for a full staging bank applies (the scan waits; it measures nothing)."""
    await asyncio.sleep(0)  # (the reset's link loss is delivered first)
    limit = TIMING.reset_to_advertising_after_swap_max_s(FULL_BANK_PAGES)
    link, _ = await h.back_after_reset(smartball, limit)
    return link


def signed_only(info: p.MsgInfo) -> None:
    """Fail (not skip, not error: the gate's verdict on the firmware) on a device without
    SIGNED_IMAGES."""
    if not info.signed_only:
        pytest.fail(RUNS_ANY_IMAGE, pytrace=False)


def manifest_of(signed_head: bytes) -> p.CmdOtaManifest:
    return p.CmdOtaManifest(signed_head[:MANIFEST_SIZE], signed_head[MANIFEST_SIZE:])


# --- what the attacker sends, and what must come back ------------------------------------


async def send_manifest(nus: NusLink, command: p.CmdOtaManifest) -> p.DeviceMessage:
    return await nus.request(command, (p.MsgOtaStatus,), timeout=REFUSAL_S + 5)


async def expect_refused(nus: NusLink, command: p.Command, code: err, what: str) -> None:
    """``command`` gets MSG_ERROR ``code`` at once and nothing else: no erase progress, no
    READY (a refusal comes before anything is erased)."""
    await c.settle(nus)
    await nus.send(command)
    got = await c.collect(nus, (f"MSG_ERROR:{code.name}",), REFUSAL_S)
    assert c.tokens(got) == [f"MSG_ERROR:{code.name}"], (
        f"{what}: expected MSG_ERROR {code.name} alone within {REFUSAL_S:g} s, got {got}"
    )


async def expect_manifest_refused(
    nus: NusLink, command: p.CmdOtaManifest, code: err, what: str
) -> None:
    reply = await send_manifest(nus, command)
    assert isinstance(reply, p.MsgError) and reply.code == code, (
        f"{what}: CMD_OTA_MANIFEST must be refused with {code.name}, the device answered {reply}"
    )


async def expect_accepted(nus: NusLink, command: p.CmdOtaManifest, what: str) -> None:
    reply = await send_manifest(nus, command)
    assert isinstance(reply, p.MsgOtaStatus), f"{what}: the manifest was refused: {reply}"


async def transfer(nus: NusLink, image: bytes) -> p.DeviceMessage:
    """START (no manifest of its own: the test sent it), the whole image, FINISH: FINISH's
    reply."""
    ready = await c.start(nus, image, manifest=False)
    await c.stream(nus, image, ready, len(image))
    return await c.finish(nus)


async def untouched(
    nus: NusLink, before: p.MsgInfo, smartball: Target, power_cycle: PowerCycle | None
) -> None:
    """The active image, counter and image state are as before, now and after a reset
    (where the bench can reset the board)."""
    now = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert now == before, f"the device's INFO changed: before {before}, now {now}"
    if power_cycle is None:
        return
    await power_cycle()
    async with await back_after_reset(smartball) as link:
        after = await link.request(p.CmdInfo(), (p.MsgInfo,))
    assert after == before, (
        f"after a reset the device runs something else: before {before}, after the reset {after}"
    )


# --- a whole signed update, and what it leaves running -----------------------------------


async def update(
    nus: NusLink, smartball: Target, image: bytes, command: p.CmdOtaManifest
) -> NusLink:
    """A whole signed update: MANIFEST, START, the image, FINISH, DONE; the device resets
    into the new image: the link to it then."""
    await expect_accepted(nus, command, "the update's manifest")
    reply = await transfer(nus, image)
    assert isinstance(reply, p.MsgOtaDone), f"FINISH of a genuine signed image: {reply}"
    try:
        async with asyncio.timeout(TIMING.done_to_disconnect_max_s + 5):
            await nus.lost.wait()
    except TimeoutError:
        raise AssertionError("the device did not reset after MSG_OTA_DONE") from None
    return await back_after_reset(smartball)


async def running(link: NusLink) -> p.MsgInfo:
    got = await link.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(got, p.MsgInfo), got
    return got


async def confirm(link: NusLink) -> p.MsgInfo:
    got = await link.request(p.CmdOtaConfirm(), (p.MsgInfo,))
    assert isinstance(got, p.MsgInfo), f"CMD_OTA_CONFIRM must be answered with MSG_INFO: {got}"
    return got


def release_image(firmware_image: FirmwareImage, info: p.MsgInfo) -> bytes:
    """The image an activating test flashes: the release image, which must differ from
    the one the device runs (else a revert cannot be told from a confirm)."""
    if info.runs(firmware_image.size, firmware_image.crc32):
        pytest.skip(
            f"the device runs {firmware_image.source} already: flash its baseline first, "
            "or give --firmware another image, so that the old and new image differ"
        )
    return firmware_image.data


def counter_raise_allowed(smartball: Target) -> None:
    if smartball.sim is None:
        pytest.skip(
            "raises the board's security counter for good (its baseline could never be "
            "flashed back): runs on the simulator only"
        )


async def raised(
    nus: NusLink, smartball: Target, signer: SuiteSigner, image: bytes, info: p.MsgInfo
) -> tuple[NusLink, p.MsgInfo]:
    """Update to ``image`` at the device's counter + 1 and confirm it: the new link and
    the INFO the confirm answered."""
    new = signer.manifest_command(image, counter=info.security_counter + 1)
    link = await update(nus, smartball, image, new)
    trial = await running(link)  # a host confirms what it saw running
    assert trial.runs(len(image), p.crc32(image)), f"after the update: {trial}"
    return link, await confirm(link)


async def lose_link(link: NusLink, what: str) -> None:
    try:
        async with asyncio.timeout(TIMING.done_to_disconnect_max_s + 5):
            await link.lost.wait()
    except TimeoutError:
        raise AssertionError(f"the power cut {what} did not come") from None

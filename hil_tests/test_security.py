"""The release gate's security tests (docs/security.md: each promise names its tests here).

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

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest
import pytest_asyncio

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import MANIFEST_SIZE, Manifest
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.plugin.fixtures import device_signed_only
from pytest_smartball.suite_signer import SuiteSigner
from pytest_smartball.targets import Target

from . import conformance as c
from . import helpers as h
from .conformance import TIMING

pytestmark = pytest.mark.asyncio

PowerCycle = Callable[[], Awaitable[None]]
err = p.ErrorCode

#: The sentence a device without SIGNED_IMAGES fails every test here with.
RUNS_ANY_IMAGE = (
    "the device runs any image it is sent: it does not advertise SIGNED_IMAGES in "
    "MSG_INFO.capabilities, so nothing stops anyone in radio range from flashing it "
    "(docs/security.md)"
)
#: Three pages, the last one partly: never activated (each session here is refused).
IMAGE = random.Random(23).randbytes(3 * 4096 - 100)
#: Another image, for "another image's signature".
OTHER_IMAGE = random.Random(24).randbytes(5000)
#: The pages of a full staging bank: the longest swap.
FULL_BANK_PAGES = -(-contract.flash_layout().staging_capacity // 4096)
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


# --- the device and the keys ------------------------------------------------------------


@pytest_asyncio.fixture
async def info(nus: NusLink, smartball: Target, request: pytest.FixtureRequest) -> p.MsgInfo:
    """The device's MSG_INFO with no session (each test starts with signed_only(info)).
    A simulated ball the run provisioned as a v1 device on purpose (``--sim-trust=none``,
    the rest of the suite's compatibility run) skips: there is no firmware to judge."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    got = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(got, p.MsgInfo), got
    if smartball.sim is not None and not got.signed_only and not device_signed_only(request.config):
        pytest.skip(
            "the run's simulated ball is provisioned as a v1 device (--sim-trust=none): "
            "there is no signed-update firmware to judge"
        )
    return got


def signed_only(info: p.MsgInfo) -> None:
    """Fail (not skip, not error: the gate's verdict on the firmware) on a device without
    SIGNED_IMAGES."""
    if not info.signed_only:
        pytest.fail(RUNS_ANY_IMAGE, pytrace=False)


@pytest.fixture
def signer(smartball_signer: SuiteSigner | None) -> SuiteSigner:
    """The key the device trusts. None only on a board without SIGNED_IMAGES (a
    signed-only board and no --signing-key stop the run at its start): the test then fails
    on signed_only(info), for which any key does."""
    return smartball_signer or SuiteSigner.load(None)


@pytest.fixture(scope="module")
def foreign() -> SuiteSigner:
    """A key no device trusts (made here, seeded: the same key each run)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = random.Random(25).randbytes(32)
    return SuiteSigner(Ed25519PrivateKey.from_private_bytes(seed), "a foreign key")


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


@pytest.fixture
def reset(request: pytest.FixtureRequest) -> PowerCycle | None:
    """The power_cycle fixture where the bench has one; None where it has not (the tests
    then check what they can without a reset)."""
    try:
        return request.getfixturevalue("power_cycle")
    except pytest.skip.Exception:
        return None


# --- 1. only images signed by a trusted key run --------------------------------------------


async def test_an_unsigned_image_is_refused(
    nus: NusLink, info: p.MsgInfo, smartball: Target, reset: PowerCycle | None
) -> None:
    """START with no manifest: UNSIGNED, at once, nothing erased."""
    signed_only(info)
    start = p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), c.CHUNK)
    await expect_refused(nus, start, err.UNSIGNED, "START with no manifest")
    await untouched(nus, info, smartball, reset)


async def test_another_keys_image_is_refused(
    nus: NusLink, info: p.MsgInfo, foreign: SuiteSigner, smartball: Target, reset: PowerCycle | None
) -> None:
    signed_only(info)
    signed = foreign.sign(IMAGE, counter=info.security_counter)
    await expect_manifest_refused(nus, manifest_of(signed.head), err.UNTRUSTED_KEY, "a foreign key")
    start = p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), c.CHUNK)
    await expect_refused(nus, start, err.UNSIGNED, "START after a foreign key's manifest")
    await untouched(nus, info, smartball, reset)


async def test_a_forged_signature_is_refused(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    foreign: SuiteSigner,
    smartball: Target,
    reset: PowerCycle | None,
) -> None:
    """A manifest naming the trusted key, signed by another: BAD_SIGNATURE."""
    signed_only(info)
    manifest = Manifest.describe(IMAGE, (9, 9, 9), info.security_counter, signer.key_id)
    forged = foreign.sign_manifest(manifest)
    await expect_manifest_refused(nus, manifest_of(forged.head), err.BAD_SIGNATURE, "forged")
    start = p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), c.CHUNK)
    await expect_refused(nus, start, err.UNSIGNED, "START after a forged manifest")
    await untouched(nus, info, smartball, reset)


# --- 3. a transfer tampered with anywhere never activates ---------------------------------

TAMPERINGS = ("flip-start", "flip-middle", "flip-end", "truncated", "extra-byte")


@pytest.mark.parametrize("tampering", TAMPERINGS)
async def test_a_tampered_image_is_refused(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    reset: PowerCycle | None,
    tampering: str,
) -> None:
    """The manifest is the genuine one; the image sent is not the one it names. A flipped
    byte comes with its CRC-32 forged to match, so that START and the CRC check pass and
    only the SHA-256 of the staged flash can refuse it (DIGEST_MISMATCH at FINISH); a
    truncated or lengthened image does not match the manifest's size (UNSIGNED at START)."""
    signed_only(info)
    signed = signer.sign(IMAGE, counter=info.security_counter)
    await expect_accepted(nus, manifest_of(signed.head), "the genuine manifest")
    if tampering.startswith("flip-"):
        where = {"flip-start": 0, "flip-middle": len(IMAGE) // 2, "flip-end": len(IMAGE) - 1}
        sent = h.flipped_with_the_same_crc(IMAGE, where[tampering])
        reply = await transfer(nus, sent)
        assert isinstance(reply, p.MsgError) and reply.code == err.DIGEST_MISMATCH, (
            f"an image with a byte flipped at {where[tampering]} (its CRC-32 forged to the "
            f"manifest's): FINISH must answer DIGEST_MISMATCH, the device answered {reply}"
        )
        status = await c.ask_status(nus)
        assert status.state == p.OtaState.ERROR, f"after DIGEST_MISMATCH: {status}"
    else:
        sent = IMAGE[:-4] if tampering == "truncated" else IMAGE + b"\0"
        start = p.CmdOtaStart(len(sent), p.crc32(sent), c.CHUNK)
        await expect_refused(nus, start, err.UNSIGNED, f"START of the {tampering} image")
    await untouched(nus, info, smartball, reset)


#: Each field of the manifest (and the signature) changed after signing: the code each
#: must be refused with (docs/protocol.md section 16's order of checks).
MANIFEST_CHANGES: dict[str, err] = {
    "magic": err.BAD_MANIFEST,
    "format": err.BAD_MANIFEST,
    "version": err.BAD_SIGNATURE,
    "counter": err.BAD_SIGNATURE,
    "size": err.BAD_SIGNATURE,
    "crc32": err.BAD_SIGNATURE,
    "key-id": err.UNTRUSTED_KEY,
    "sha256": err.BAD_SIGNATURE,
    "signature": err.BAD_SIGNATURE,
}


@pytest.mark.parametrize("field", sorted(MANIFEST_CHANGES))
async def test_a_changed_manifest_field_is_refused(
    nus: NusLink,
    info: p.MsgInfo,
    signer: SuiteSigner,
    smartball: Target,
    reset: PowerCycle | None,
    field: str,
) -> None:
    """The genuine manifest is accepted first; the changed one is refused, and with it no
    manifest is accepted any more: START of the image is UNSIGNED."""
    signed_only(info)
    signed = signer.sign(IMAGE, counter=info.security_counter)
    await expect_accepted(nus, manifest_of(signed.head), "the genuine manifest")
    body, signature = bytearray(signed.manifest_bytes), bytearray(signed.signature)
    if field == "magic":
        body[0] ^= 0x20
    elif field == "format":
        body[4] ^= 0x02
    elif field == "signature":
        signature[17] ^= 0x01
    else:
        body[:] = h.changed_manifest(signed.manifest, field).encode()
    code = MANIFEST_CHANGES[field]
    await expect_manifest_refused(
        nus,
        p.CmdOtaManifest(bytes(body), bytes(signature)),
        code,
        f"the manifest's {field} changed",
    )
    start = p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), c.CHUNK)
    await expect_refused(nus, start, err.UNSIGNED, f"START after a refused manifest ({field})")
    await untouched(nus, info, smartball, reset)


async def test_another_images_signature_is_refused(
    nus: NusLink, info: p.MsgInfo, signer: SuiteSigner, smartball: Target, reset: PowerCycle | None
) -> None:
    signed_only(info)
    mine = signer.sign(IMAGE, counter=info.security_counter)
    theirs = signer.sign(OTHER_IMAGE, counter=info.security_counter)
    command = p.CmdOtaManifest(mine.manifest_bytes, theirs.signature)
    await expect_manifest_refused(nus, command, err.BAD_SIGNATURE, "another image's signature")
    start = p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), c.CHUNK)
    await expect_refused(nus, start, err.UNSIGNED, "START after another image's signature")
    await untouched(nus, info, smartball, reset)


# --- 4. nothing is erased before the manifest is checked ---------------------------------


async def test_nothing_is_erased_before_the_manifest_is_checked(
    nus: NusLink, info: p.MsgInfo, signer: SuiteSigner, foreign: SuiteSigner, smartball: Target
) -> None:
    """The staging bank holds part of an image (a session aborted); then START with no
    manifest, and START after a refused manifest: each refused at once with no erase
    progress (on hardware that is what shows an erase: a page takes 85 ms) and, on the
    simulator, the staging bank's bytes and erase count exactly as they were."""
    signed_only(info)
    ready = await c.start(nus, IMAGE)
    await c.stream(nus, IMAGE, ready, 2 * 4096)
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    sim = smartball.sim
    flash = sim.firmware.flash if sim is not None else None
    staged = flash.read(0, flash.size) if flash is not None else b""
    erases = flash.erases if flash is not None else 0
    start = p.CmdOtaStart(len(IMAGE), p.crc32(IMAGE), c.CHUNK)
    await expect_refused(nus, start, err.UNSIGNED, "START with no manifest")
    foreign_head = foreign.sign(IMAGE, counter=info.security_counter).head
    await expect_manifest_refused(nus, manifest_of(foreign_head), err.UNTRUSTED_KEY, "foreign")
    await expect_refused(nus, start, err.UNSIGNED, "START after a refused manifest")
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    if flash is not None:
        assert flash.erases == erases, (
            f"refused sessions erased {flash.erases - erases} staging page(s): the staging "
            "bank must not be touched before a manifest is accepted"
        )
        assert flash.read(0, flash.size) == staged, "refused sessions changed the staging bank"


# --- 2. downgrade and replay ---------------------------------------------------------------


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
    smartball.sim.firmware.staged_flip.append(len(IMAGE) // 3)
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
    sim.firmware.corrupt_staged(len(IMAGE) // 2)
    await power_cycle()
    async with await back_after_reset(smartball) as link:
        after = await running(link)
    assert after == info, (
        f"the staging bank changed after FINISH and the bootloader ran it: before {info}, "
        f"after the reset {after} (it must check the signature and SHA-256 again)"
    )


# --- power cuts in the windows of a signed update (the simulator's fault plans) -----------


async def lose_link(link: NusLink, what: str) -> None:
    try:
        async with asyncio.timeout(TIMING.done_to_disconnect_max_s + 5):
            await link.lost.wait()
    except TimeoutError:
        raise AssertionError(f"the power cut {what} did not come") from None


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

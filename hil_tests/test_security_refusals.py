"""The release gate's security tests of what must be refused (docs/security.md: each promise
names its tests here): unsigned, foreign-key, forged, tampered and changed-manifest images, and
no erase before the manifest is checked.

They speak protocol v1 with section 16 over NUS, as an attacker in radio range would, so
they hold on the simulator and on a bench board (``--device=real`` with the key the board
trusts, ``--signing-key``). A firmware that does not advertise SIGNED_IMAGES fails every
one of them: a release gate must not pass a firmware that runs any image it is sent.

The images sent and refused are random bytes that never run; the tests that activate an
image are in ``test_security_activation.py``.
"""

from __future__ import annotations

import random

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import Manifest, crc_preserving_flip
from pytest_smartball.link import NusLink
from pytest_smartball.suite_signer import SuiteSigner
from pytest_smartball.targets import Target

from . import conformance as c
from . import helpers as h
from .security import (
    IMAGE,
    PowerCycle,
    err,
    expect_accepted,
    expect_manifest_refused,
    expect_refused,
    manifest_of,
    signed_only,
    transfer,
    untouched,
)

pytestmark = pytest.mark.asyncio

#: Another image, for "another image's signature".
OTHER_IMAGE = random.Random(24).randbytes(5000)


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
        sent = crc_preserving_flip(IMAGE, where[tampering])
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
    await c.stream(nus, IMAGE, ready, 2 * h.PAGE_SIZE)
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

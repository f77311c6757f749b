"""``manifest.json``: signed heads (manifest + signature, what CMD_OTA_MANIFEST carries)
made with the repository's test key, and what a signed-only device provisioned with that
key answers to each (docs/protocol.md section 16.1): accepted, or the error code of the
first check that refuses it. The answers are the reference firmware model's."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import MANIFEST_SIZE, Manifest

from ..firmware.model import SmartBallFirmware

#: The device of every vector: the test key, security counter 3, 20 KiB of staging.
COUNTER = 3
STAGING_CAPACITY = 5 * 4096
#: The image the manifests describe (the 40 bytes of device.json's sessions), and another.
IMAGE = bytes((i * 7 + 3) & 0xFF for i in range(40))
OTHER_IMAGE = bytes(range(64))
VERSION = (2, 0, 1)


def _head(image: bytes = IMAGE, counter: int = 5, **fields: Any) -> bytes:
    kid = signing.test_trusted_key().key_id
    manifest = replace(Manifest.describe(image, VERSION, counter, kid), **fields)
    body = manifest.encode()
    return body + signing.test_key().sign(body)


def _changed(head: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(head)
    out[offset : offset + len(value)] = value
    return bytes(out)


def _flip_signature(head: bytes) -> bytes:
    return _changed(head, MANIFEST_SIZE + 10, bytes([head[MANIFEST_SIZE + 10] ^ 1]))


def _cases() -> list[tuple[str, str, bytes]]:
    good = _head()
    other = _head(OTHER_IMAGE)
    flipped_signature = _flip_signature(good)
    return [
        ("accepted", "the image's manifest, counter 5 above the device's 3", good),
        ("accepted_counter_equal", "counter 3, the device's own: accepted", _head(counter=3)),
        ("short", "104 bytes: a manifest without the end of its signature", good[:104]),
        ("bad_magic", "magic XBM1", _changed(good, 0, b"XBM1")),
        ("bad_format", "format_version 2", _changed(good, 4, b"\x02")),
        ("size_zero", "image_size 0, signed", _head(image_size=0)),
        ("too_large", "image_size above the staging capacity, signed", _head(image_size=20481)),
        (
            "untrusted_key",
            "key_id of a key the device does not trust (signature irrelevant: not checked)",
            _changed(good, 20, (0x12345678).to_bytes(4, "little")),
        ),
        ("signature_bit_flipped", "one bit of the signature changed", flipped_signature),
        (
            "counter_changed",
            "security_counter raised to 99 after signing",
            _changed(good, 8, b"\x63"),
        ),
        ("size_changed", "image_size changed after signing", _changed(good, 12, b"\x2c")),
        ("crc_changed", "image_crc32 changed after signing", _changed(good, 16, b"\x00")),
        ("digest_changed", "image_sha256 changed after signing", _changed(good, 24, bytes(32))),
        ("version_changed", "fw_major changed after signing", _changed(good, 5, b"\x09")),
        (
            "other_images_signature",
            "this image's manifest with another image's signature",
            good[:MANIFEST_SIZE] + other[MANIFEST_SIZE:],
        ),
        ("downgrade", "signed, counter 2 below the device's 3", _head(counter=2)),
        # the order of the checks: the first failing one answers
        (
            "downgrade_and_bad_signature",
            "counter 2 and a changed signature: the signature is checked first",
            _flip_signature(_head(counter=2)),
        ),
        (
            "too_large_and_untrusted_key",
            "image_size above the staging capacity under an untrusted key id: size first",
            _changed(_head(image_size=20481), 20, (0x12345678).to_bytes(4, "little")),
        ),
        (
            "bad_format_and_untrusted_key",
            "format 2 under an untrusted key id: the format first",
            _changed(_changed(good, 4, b"\x02"), 20, (0x12345678).to_bytes(4, "little")),
        ),
    ]


def _answer(head: bytes) -> str:
    """What the reference model, provisioned as the vectors' device, answers."""
    replies: list[p.Message] = []
    decoder = p.FrameDecoder()

    def sent(frame: bytes) -> None:
        replies.extend(p.parse_message(f) for f in decoder.feed(frame))

    async def ask() -> None:
        fw = SmartBallFirmware(
            active_image=bytes(range(256)) * 12,
            staging_capacity=STAGING_CAPACITY,
            send=sent,
            trusted_keys=[signing.test_trusted_key()],
            security_counter=COUNTER,
        )
        fw.receive(p.encode_frame(p.MsgType.CMD_OTA_MANIFEST, head))

    asyncio.run(ask())
    (reply,) = replies
    if isinstance(reply, p.MsgError):
        return reply.code_name
    assert isinstance(reply, p.MsgOtaStatus), reply
    return "accepted"


def manifest_vectors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, about, head in _cases():
        vector: dict[str, Any] = {"name": name, "about": about, "head": head.hex(" ")}
        vector["device_answers"] = _answer(head)
        out.append(vector)
    return out


def manifest_header() -> dict[str, Any]:
    """The key and the device every vector assumes."""
    key = signing.test_trusted_key()
    return {
        "key": {
            "algorithm": "Ed25519 (RFC 8032)",
            "public_key": signing.raw_public(key.public).hex(" "),
            "key_id": f"{key.key_id:08x}",
            "file": "pytest_smartball/contract/keys/TEST-ONLY-signing-key.pub.pem",
        },
        "device": {
            "trusted_key_ids": [f"{key.key_id:08x}"],
            "security_counter": COUNTER,
            "staging_capacity": STAGING_CAPACITY,
            "state": "IDLE, image CONFIRMED",
        },
        "image": {"hex": IMAGE.hex(" "), "version": list(VERSION)},
    }

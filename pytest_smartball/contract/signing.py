"""Ed25519 keys and signatures for signed updates (docs/protocol.md section 16, threat model
in docs/security.md), on the ``cryptography`` package: the host signs, and the simulated
SmartBall verifies the way a firmware's crypto library would.

The repository holds one key pair, the **test key** (``contract/keys/``): every test and the
simulator's default trust use it, and it must never sign anything shipped. Release keys
are made with ``smartball-ota keygen`` and stay out of the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .manifest import (
    MANIFEST_SIZE,
    SIGNED_HEAD_SIZE,
    Manifest,
    ManifestError,
    SignedImage,
    key_id,
)

#: The test key's file names in ``pytest_smartball/contract/keys/``.
TEST_KEY_NAME = "TEST-ONLY-signing-key.pem"
TEST_PUBLIC_KEY_NAME = "TEST-ONLY-signing-key.pub.pem"


class KeyFileError(ValueError):
    """A key file that cannot be used (missing, not Ed25519, not PEM)."""


class SignatureRefused(ValueError):
    """A manifest a device must refuse; ``reason`` names the protocol's error code."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key a device (or a host checking before it sends) trusts, with its id."""

    public: Ed25519PublicKey
    key_id: int

    @classmethod
    def of(cls, public: Ed25519PublicKey) -> TrustedKey:
        return cls(public, key_id(raw_public(public)))

    @classmethod
    def from_raw(cls, raw: bytes) -> TrustedKey:
        return cls.of(Ed25519PublicKey.from_public_bytes(raw))


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_key_pair(key: Ed25519PrivateKey, path: Path) -> Path:
    """Write the private key to ``path`` (PEM, PKCS#8, owner-only) and the public key beside
    it (``<path>.pub.pem``); returns the public key's path. Refuses to overwrite."""
    public_path = path.with_name(path.name.removesuffix(".pem") + ".pub.pem")
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(public_pem)
    return public_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public(path: Path) -> TrustedKey:
    """A public key file, or the public half of a private key file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from exc
    if b"PRIVATE KEY" in data:
        return TrustedKey.of(load_private(path).public_key())
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, not an Ed25519 key")
    return TrustedKey.of(key)


def _test_key_file(name: str) -> bytes:
    return resources.files("pytest_smartball.contract").joinpath("keys", name).read_bytes()


def test_key() -> Ed25519PrivateKey:
    """The repository's test key: for tests and the simulator only, never a release."""
    key = serialization.load_pem_private_key(_test_key_file(TEST_KEY_NAME), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def test_trusted_key() -> TrustedKey:
    key = serialization.load_pem_public_key(_test_key_file(TEST_PUBLIC_KEY_NAME))
    assert isinstance(key, Ed25519PublicKey)
    return TrustedKey.of(key)


def sign(
    image: bytes,
    key: Ed25519PrivateKey,
    version: tuple[int, int, int],
    security_counter: int,
) -> SignedImage:
    """The signed image of ``image``: its manifest, signed by ``key``."""
    kid = key_id(raw_public(key.public_key()))
    manifest = Manifest.describe(image, version, security_counter, kid)
    manifest_bytes = manifest.encode()
    return SignedImage(manifest, manifest_bytes, key.sign(manifest_bytes), image)


def verify(head: bytes, trusted: list[TrustedKey]) -> Manifest:
    """What a device does with CMD_OTA_MANIFEST's payload, in the protocol's order (section
    16): the format, then the key, then the signature. Returns the manifest; raises
    SignatureRefused naming the error code. Counter and size are the caller's checks."""
    if len(head) < SIGNED_HEAD_SIZE:
        raise SignatureRefused("BAD_FRAME", f"{len(head)} bytes, a signed manifest is 120")
    try:
        manifest = Manifest.decode(head)
    except ManifestError as exc:
        raise SignatureRefused("BAD_MANIFEST", str(exc)) from exc
    for candidate in trusted:
        if candidate.key_id == manifest.key_id:
            try:
                candidate.public.verify(head[MANIFEST_SIZE:SIGNED_HEAD_SIZE], head[:MANIFEST_SIZE])
            except InvalidSignature:
                raise SignatureRefused(
                    "BAD_SIGNATURE", "not the trusted key's signature of this manifest"
                ) from None
            return manifest
    raise SignatureRefused("UNTRUSTED_KEY", f"key {manifest.key_id:#010x} is not trusted")

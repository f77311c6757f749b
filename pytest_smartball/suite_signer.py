"""The key the release gate signs its test images with (``--signing-key``; on the simulator
the repository's test key), and the manifests it makes with it: the right ones for the
sessions the suite opens, and, for the security tests, deliberately wrong ones.

Loaded only when a test asks for the ``smartball_signer`` fixture: a run that does not use
it never imports the crypto library.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .contract import codec as p
from .contract.manifest import Manifest, SignedImage, key_id
from .contract.signing import load_private, raw_public, test_key

#: The version a manifest names for an image that is only a session's payload (random
#: bytes with no version descriptor: the simulator reads 0.0.0 from them too).
NO_VERSION = (0, 0, 0)


@dataclass(frozen=True, slots=True)
class SuiteSigner:
    """A private key and where it came from (for the sentences that name it)."""

    key: Ed25519PrivateKey
    source: str

    @classmethod
    def load(cls, path: str | None) -> SuiteSigner:
        """``path``'s key, or the repository's test key when None."""
        if path is None:
            return cls(test_key(), "the repository's test key")
        return cls(load_private(Path(path)), path)

    @property
    def key_id(self) -> int:
        return key_id(raw_public(self.key.public_key()))

    def sign(
        self, image: bytes, *, counter: int, version: tuple[int, int, int] = NO_VERSION
    ) -> SignedImage:
        """The signed image of ``image`` (its manifest names its size, CRC-32 and SHA-256)."""
        manifest = Manifest.describe(image, version, counter, self.key_id)
        return self.sign_manifest(manifest, image)

    def sign_manifest(self, manifest: Manifest, image: bytes = b"") -> SignedImage:
        """``manifest`` as it is (whatever it names), signed by this key."""
        manifest_bytes = manifest.encode()
        return SignedImage(manifest, manifest_bytes, self.key.sign(manifest_bytes), image)

    def manifest_command(
        self,
        image: bytes,
        *,
        counter: int,
        crc32: int | None = None,
        version: tuple[int, int, int] = NO_VERSION,
    ) -> p.CmdOtaManifest:
        """CMD_OTA_MANIFEST for a session of ``image`` announced with ``crc32`` (a test that
        sends a wrong CRC on purpose gets a manifest naming that CRC: START must match the
        manifest, and FINISH then finds the CRC wrong as it would without signing)."""
        manifest = Manifest.describe(image, version, counter, self.key_id)
        if crc32 is not None:
            manifest = replace(manifest, image_crc32=crc32)
        signed = self.sign_manifest(manifest)
        return p.CmdOtaManifest(signed.manifest_bytes, signed.signature)

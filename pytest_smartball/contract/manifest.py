"""The signed image of protocol v1's signed updates (docs/protocol.md section 16): a pure
codec, no crypto library (``pytest_smartball.contract.signing`` signs and verifies).

A manifest is 56 bytes, little-endian::

    0   4   magic             b"SBM1"
    4   u8  format_version    1
    5   u8  fw_major          the image's version (MSG_INFO after it runs)
    6   u8  fw_minor
    7   u8  fw_patch
    8   u32 security_counter  no image below the device's counter ever runs
    12  u32 image_size        = CMD_OTA_START.image_size
    16  u32 image_crc32       = CMD_OTA_START.image_crc32 (CRC-32/IEEE of the image)
    20  u32 key_id            which key signed it: key_id(public key)
    24  32  image_sha256      SHA-256 of the image's image_size bytes

The signature is Ed25519 (RFC 8032) over those 56 bytes: 64 bytes. A signed image file
(``.sbi``, what ``smartball-ota sign`` writes) is the manifest, the signature, then the
image: 120 + image_size bytes. CMD_OTA_MANIFEST carries the first 120 bytes.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"SBM1"
FORMAT_VERSION = 1
MANIFEST_SIZE = 56
SIGNATURE_SIZE = 64
#: The manifest and its signature: the head of a signed image file and CMD_OTA_MANIFEST.
SIGNED_HEAD_SIZE = MANIFEST_SIZE + SIGNATURE_SIZE
#: An Ed25519 public key in its raw form (RFC 8032).
PUBLIC_KEY_SIZE = 32
_LAYOUT = struct.Struct("<4sBBBBIIII32s")
assert _LAYOUT.size == MANIFEST_SIZE


class ManifestError(ValueError):
    """Bytes that are not a manifest or a signed image of this format."""


def key_id(public_key: bytes) -> int:
    """A key's id: the first 4 bytes of SHA-256 over its 32 raw bytes, little-endian. It
    names a key, it proves nothing: the device still checks the signature with the key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ManifestError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    return int.from_bytes(hashlib.sha256(public_key).digest()[:4], "little")


def key_id_text(kid: int) -> str:
    """How people see a key id: its 4 bytes in hex, as they are on the wire."""
    return kid.to_bytes(4, "little").hex()


@dataclass(frozen=True, slots=True)
class Manifest:
    fw_major: int
    fw_minor: int
    fw_patch: int
    security_counter: int
    image_size: int
    image_crc32: int
    key_id: int
    image_sha256: bytes
    format_version: int = FORMAT_VERSION

    @classmethod
    def describe(
        cls, image: bytes, version: tuple[int, int, int], security_counter: int, kid: int
    ) -> Manifest:
        """The manifest of ``image`` (its size, CRC-32 and SHA-256 computed here)."""
        return cls(
            *version,
            security_counter=security_counter,
            image_size=len(image),
            image_crc32=zlib.crc32(image),
            key_id=kid,
            image_sha256=hashlib.sha256(image).digest(),
        )

    @property
    def version(self) -> str:
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"

    def encode(self) -> bytes:
        try:
            return _LAYOUT.pack(
                MAGIC,
                self.format_version,
                self.fw_major,
                self.fw_minor,
                self.fw_patch,
                self.security_counter,
                self.image_size,
                self.image_crc32,
                self.key_id,
                self.image_sha256,
            )
        except struct.error as exc:
            raise ManifestError(f"cannot encode {self}: {exc}") from exc

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """The manifest in the first 56 bytes; ManifestError for another magic or format."""
        if len(data) < MANIFEST_SIZE:
            raise ManifestError(f"a manifest is {MANIFEST_SIZE} bytes, not {len(data)}")
        magic, fmt, major, minor, patch, counter, size, crc, kid, digest = _LAYOUT.unpack_from(data)
        if magic != MAGIC:
            raise ManifestError(f"not a SmartBall manifest (magic {magic!r}, not {MAGIC!r})")
        if fmt != FORMAT_VERSION:
            raise ManifestError(f"manifest format {fmt}, this tool knows {FORMAT_VERSION}")
        return cls(major, minor, patch, counter, size, crc, kid, digest, fmt)

    def describes(self, image: bytes) -> bool:
        """Whether ``image`` is the image this manifest names (size, CRC-32 and SHA-256)."""
        return (
            len(image) == self.image_size
            and zlib.crc32(image) == self.image_crc32
            and hashlib.sha256(image).digest() == self.image_sha256
        )


@dataclass(frozen=True, slots=True)
class SignedImage:
    """A signed image file: what CMD_OTA_MANIFEST carries, and the image itself."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    image: bytes

    @property
    def head(self) -> bytes:
        """The manifest and its signature, as CMD_OTA_MANIFEST and the file carry them."""
        return self.manifest_bytes + self.signature

    def encode(self) -> bytes:
        return self.head + self.image

    @classmethod
    def decode(cls, data: bytes) -> SignedImage:
        """A signed image file; ManifestError when it is not one or its image is not the
        one its manifest names. The signature is checked by ``signing.verify``."""
        if len(data) < SIGNED_HEAD_SIZE:
            raise ManifestError(
                f"a signed image is at least {SIGNED_HEAD_SIZE} bytes, this is {len(data)}"
            )
        manifest = Manifest.decode(data)
        image = data[SIGNED_HEAD_SIZE:]
        if len(image) != manifest.image_size:
            raise ManifestError(
                f"the manifest names a {manifest.image_size}-byte image, the file holds "
                f"{len(image)} bytes after it"
            )
        if not manifest.describes(image):
            raise ManifestError(
                "the image after the manifest is not the one the manifest names (its CRC-32 "
                "or SHA-256 differs): the file was changed after it was signed"
            )
        return cls(manifest, data[:MANIFEST_SIZE], data[MANIFEST_SIZE:SIGNED_HEAD_SIZE], image)


def is_signed_image(data: bytes) -> bool:
    """Whether ``data`` starts like a signed image file (its magic)."""
    return data[:4] == MAGIC


def crc_preserving_flip(data: bytes, offset: int) -> bytes:
    """``data`` with the byte at ``offset`` flipped and four neighbouring bytes changed so
    that its CRC-32 is the same: a tampering only a cryptographic hash notices (CRC-32 is
    affine over GF(2), so 32 free bits can cancel any change)."""
    size = len(data)
    if size < 8:
        raise ValueError(f"a {size}-byte image is too short to keep its CRC-32 through a flip")
    offset = min(max(offset, 0), size - 1)
    fix = offset + 1 if offset + 5 <= size else offset - 4  # four bytes that are not the flip
    zero = zlib.crc32(bytes(size))

    def effect(position: int, value: int) -> int:
        change = bytearray(size)
        change[position] = value
        return zlib.crc32(bytes(change)) ^ zero

    target = effect(offset, 0xFF)
    # Gaussian elimination over the 32 bits of the four fixing bytes.
    basis: list[tuple[int, int]] = []  # (crc effect, bit mask of fixing bits)
    for bit in range(32):
        vector, combo = effect(fix + bit // 8, 1 << (bit % 8)), 1 << bit
        for pivot_vector, pivot_combo in basis:
            if vector ^ pivot_vector < vector:
                vector, combo = vector ^ pivot_vector, combo ^ pivot_combo
        if vector:
            basis.append((vector, combo))
            basis.sort(reverse=True)
    residue, chosen = target, 0
    for pivot_vector, pivot_combo in basis:
        if residue ^ pivot_vector < residue:
            residue, chosen = residue ^ pivot_vector, chosen ^ pivot_combo
    if residue:
        raise AssertionError("CRC-32 cannot be kept: the fixing bits do not span it")
    tampered = bytearray(data)
    tampered[offset] ^= 0xFF
    for i in range(4):
        tampered[fix + i] ^= (chosen >> (8 * i)) & 0xFF
    return bytes(tampered)

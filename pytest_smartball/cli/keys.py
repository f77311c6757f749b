"""``smartball-ota keygen`` and ``smartball-ota sign``: the offline half of signed updates
(docs/protocol.md section 16). Neither touches Bluetooth; both answer every bad key, file
or argument with one sentence and an exit code (:mod:`.errors`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..contract import signing
from ..contract.manifest import SIGNED_HEAD_SIZE, key_id_text
from ..contract.signing import KeyFileError
from ..image import ImageError, load_image
from . import output as out
from .args import PROG, Context
from .errors import EXIT_BAD_INPUT, EXIT_BAD_KEY, EXIT_OK, CliError


def public_key_path(private: Path) -> Path:
    """Where ``signing.write_key_pair`` puts the public half of ``private``."""
    return private.with_name(private.name.removesuffix(".pem") + ".pub.pem")


def cmd_keygen(ctx: Context) -> int:
    """A new Ed25519 key pair: the private key owner-only, the public key beside it."""
    path = Path(ctx.args.keyfile)
    public = public_key_path(path)
    for existing in (path, public):
        if existing.exists() or existing.is_symlink():
            raise CliError(
                EXIT_BAD_INPUT,
                f"{existing} exists: keygen never overwrites a key (an image signed with the "
                "old one could no longer be checked); choose another name or move it away",
            )
    if not path.parent.is_dir():
        raise CliError(EXIT_BAD_INPUT, f"{path}: the folder {path.parent} does not exist")
    key = signing.generate()
    try:
        signing.write_key_pair(key, path)
    except OSError as exc:
        raise CliError(
            EXIT_BAD_INPUT, f"{path}: cannot write the key: {exc.strerror or exc}"
        ) from None
    kid = key_id_text(signing.TrustedKey.of(key.public_key()).key_id)
    if ctx.json:
        out.emit_json(
            {
                "command": "keygen",
                "ok": True,
                "exit_code": EXIT_OK,
                "key_id": kid,
                "private_key": str(path),
                "public_key": str(public),
            }
        )
    else:
        print(f"key id {kid}")
        print(f"  private key  {path} (owner-only: keep it secret and out of the repository)")
        print(f"  public key   {public} (what a SmartBall is provisioned to trust)")
    return EXIT_OK


def parse_version(text: str) -> tuple[int, int, int]:
    """``X.Y.Z``, each a byte (the manifest's fw_major, fw_minor, fw_patch)."""
    parts = text.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"--version {text!r}: give the firmware version as X.Y.Z, e.g. 1.4.0")
    major, minor, patch = (int(part) for part in parts)
    if max(major, minor, patch) > 255:
        raise ValueError(f"--version {text!r}: each of X, Y and Z is 0 to 255 (one byte each)")
    return major, minor, patch


def parse_counter(text: str) -> int:
    """The security counter: an unsigned 32-bit number."""
    if not text.isdigit() or int(text) > 0xFFFF_FFFF:
        raise ValueError(
            f"--counter {text!r}: the security counter is a whole number 0 to 4294967295"
        )
    return int(text)


def cmd_sign(ctx: Context) -> int:
    """Sign what would be flashed: the image load_image reads from IMAGE (any format; of a
    signed image, the image inside it), with the manifest naming its size, CRC-32 and
    SHA-256. The output is written whole or not at all."""
    a = ctx.args
    try:
        version = parse_version(a.fw_version)
        counter = parse_counter(a.counter)
    except ValueError as exc:
        raise CliError(EXIT_BAD_INPUT, str(exc)) from None
    source, target = Path(a.image), Path(a.output)
    try:
        image = load_image(source)
    except ImageError as exc:
        raise CliError(EXIT_BAD_INPUT, str(exc)) from None
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise CliError(
            EXIT_BAD_INPUT, f"-o {target} is the image itself: write the signed image elsewhere"
        )
    key_path = Path(a.key)
    try:
        text = key_path.read_bytes()
    except OSError as exc:
        raise CliError(EXIT_BAD_KEY, f"--key {key_path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" not in text and b"PUBLIC KEY" in text:
        raise CliError(
            EXIT_BAD_KEY,
            f"--key {key_path} is a public key: sign with the private key that "
            "`smartball-ota keygen` wrote beside it",
        )
    try:
        key = signing.load_private(key_path)
    except KeyFileError as exc:
        raise CliError(EXIT_BAD_KEY, f"--key {exc}") from None
    signed = signing.sign(image.data, key, version, counter)
    encoded = signed.encode()
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(encoded)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CliError(
            EXIT_BAD_INPUT, f"-o {target}: cannot write: {exc.strerror or exc}"
        ) from None
    m = signed.manifest
    kid = key_id_text(m.key_id)
    is_test_key = m.key_id == signing.test_trusted_key().key_id
    if is_test_key:
        print(
            f"{PROG}: warning: signed with the repository's TEST key: for tests and the "
            "simulator only, never for a release",
            file=sys.stderr,
        )
    if ctx.json:
        out.emit_json(
            {
                "command": "sign",
                "ok": True,
                "exit_code": EXIT_OK,
                "image": str(source),
                "image_format": image.format.value,
                "image_size": image.size,
                "image_crc32": f"{m.image_crc32:08x}",
                "image_sha256": m.image_sha256.hex(),
                "firmware": m.version,
                "security_counter": m.security_counter,
                "key_id": kid,
                "test_key": is_test_key,
                "output": str(target),
                "output_size": len(encoded),
            }
        )
    else:
        print(f"Signed {source} ({image.described}) as {target}:")
        print(f"  firmware          {m.version}")
        print(f"  security counter  {m.security_counter}")
        print(f"  key id            {kid}")
        print(f"  image             {m.image_size} bytes, crc32 {m.image_crc32:08x}")
        print(f"  sha-256           {m.image_sha256.hex()}")
        print(
            f"  file              {len(encoded)} bytes "
            f"({SIGNED_HEAD_SIZE}-byte signed head + image)"
        )
    return EXIT_OK

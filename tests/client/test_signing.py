"""``smartball-ota keygen`` and ``smartball-ota sign``: keys made and used, signed images
that verify with the key and load as what would be flashed, and every bad key, file or
argument answered with one sentence and its exit code (no Bluetooth anywhere)."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest
from intelhex import IntelHex

from pytest_smartball.cli.errors import EXIT_BAD_INPUT, EXIT_BAD_KEY, EXIT_OK
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import SIGNED_HEAD_SIZE, SignedImage, key_id_text
from pytest_smartball.image import load_image
from pytest_smartball.image_formats import ImageFormat

from .cli_runs import one_error_line, run

TEST_KEY = Path(signing.__file__).parent / "keys" / signing.TEST_KEY_NAME
IMAGE = random.Random(23).randbytes(12_345)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(IMAGE)
    return path


def sign(
    capsys: pytest.CaptureFixture[str], image: Path, out: Path, *extra: str, key: Path = TEST_KEY
) -> tuple[int, str, str]:
    args = ["sign", str(image), "--key", str(key), "--version", "1.4.2", "--counter", "7"]
    return run(capsys, *args, "-o", str(out), *extra)


# --- keygen ----------------------------------------------------------------------------------


def test_keygen_writes_an_owner_only_private_key_and_its_public_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = tmp_path / "release.pem"
    code, out, _ = run(capsys, "keygen", str(key))
    assert code == EXIT_OK
    public = tmp_path / "release.pub.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    trusted = signing.load_public(public)
    assert signing.load_public(key).key_id == trusted.key_id
    assert f"key id {key_id_text(trusted.key_id)}" in out


def test_keygen_never_overwrites_a_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = tmp_path / "release.pem"
    assert run(capsys, "keygen", str(key))[0] == EXIT_OK
    before = key.read_bytes()
    code, out, err = run(capsys, "keygen", str(key))
    assert code == EXIT_BAD_INPUT and out == ""
    assert "exists: keygen never overwrites a key" in one_error_line(err)
    assert key.read_bytes() == before


def test_keygen_never_overwrites_a_public_key_either(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "k.pub.pem").write_text("someone's public key")
    code, _, err = run(capsys, "keygen", str(tmp_path / "k.pem"))
    assert code == EXIT_BAD_INPUT and "k.pub.pem exists" in one_error_line(err)
    assert not (tmp_path / "k.pem").exists()


def test_keygen_into_a_missing_folder_is_one_sentence(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "keygen", str(tmp_path / "nope" / "k.pem"))
    assert code == EXIT_BAD_INPUT and "does not exist" in one_error_line(err)


def test_keygen_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "keygen", str(tmp_path / "k.pem"), "--json")
    payload = json.loads(out)
    assert code == EXIT_OK and payload["ok"] and len(payload["key_id"]) == 8


# --- sign ------------------------------------------------------------------------------------


def test_sign_writes_a_signed_image_the_trusted_key_verifies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path
) -> None:
    out_path = tmp_path / "fw.sbi"
    code, out, err = sign(capsys, image, out_path)
    assert code == EXIT_OK
    assert "TEST key" in err  # the test key never signs a release without a word
    signed = SignedImage.decode(out_path.read_bytes())
    manifest = signing.verify(signed.head, [signing.test_trusted_key()])
    assert manifest.version == "1.4.2" and manifest.security_counter == 7
    assert signed.image == IMAGE
    assert out_path.stat().st_size == SIGNED_HEAD_SIZE + len(IMAGE)
    loaded = load_image(out_path)
    assert loaded.format is ImageFormat.SIGNED and loaded.data == IMAGE
    assert "security counter  7" in out


def test_a_signed_image_verifies_with_its_key_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path
) -> None:
    key = tmp_path / "mine.pem"
    run(capsys, "keygen", str(key))
    out_path = tmp_path / "fw.sbi"
    code, _, err = sign(capsys, image, out_path, key=key)
    assert code == EXIT_OK and "TEST key" not in err
    head = out_path.read_bytes()[:SIGNED_HEAD_SIZE]
    assert signing.verify(head, [signing.load_public(tmp_path / "mine.pub.pem")])
    with pytest.raises(signing.SignatureRefused) as refused:
        signing.verify(head, [signing.test_trusted_key()])
    assert refused.value.reason == "UNTRUSTED_KEY"


def test_what_is_signed_is_what_would_be_flashed_whatever_the_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A hex file's image (its bytes at their addresses), not the hex text."""
    ih = IntelHex()
    ih.frombytes(IMAGE, offset=0x27000)
    hex_path = tmp_path / "fw.hex"
    ih.write_hex_file(str(hex_path))
    out_path = tmp_path / "fw.sbi"
    assert sign(capsys, hex_path, out_path)[0] == EXIT_OK
    assert SignedImage.decode(out_path.read_bytes()).image == load_image(hex_path).data


def test_signing_a_signed_image_signs_the_image_inside(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path
) -> None:
    first, second = tmp_path / "a.sbi", tmp_path / "b.sbi"
    assert sign(capsys, image, first)[0] == EXIT_OK
    assert sign(capsys, first, second)[0] == EXIT_OK
    assert SignedImage.decode(second.read_bytes()).image == IMAGE


@pytest.mark.parametrize(
    ("version", "counter", "words"),
    [
        ("1.4", "7", "give the firmware version as X.Y.Z"),
        ("1.4.x", "7", "give the firmware version as X.Y.Z"),
        ("1.256.0", "7", "each of X, Y and Z is 0 to 255"),
        ("1.4.2", "-1", "a whole number 0 to 4294967295"),
        ("1.4.2", "4294967296", "a whole number 0 to 4294967295"),
        ("1.4.2", "seven", "a whole number 0 to 4294967295"),
    ],
)
def test_bad_versions_and_counters_are_bad_input_and_write_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    image: Path,
    version: str,
    counter: str,
    words: str,
) -> None:
    out_path = tmp_path / "fw.sbi"
    args = ["sign", str(image), "--key", str(TEST_KEY), "--version", version]
    code, _, err = run(capsys, *args, "--counter", counter, "-o", str(out_path))
    assert code == EXIT_BAD_INPUT and words in one_error_line(err)
    assert not out_path.exists()


def test_a_missing_argument_is_bad_input_with_the_usage(
    capsys: pytest.CaptureFixture[str], image: Path
) -> None:
    code, _, err = run(capsys, "sign", str(image), "--key", str(TEST_KEY))
    assert code == EXIT_BAD_INPUT and "required" in err


def test_a_bad_image_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = sign(capsys, tmp_path / "nope.bin", tmp_path / "fw.sbi")
    assert code == EXIT_BAD_INPUT and "no such file" in one_error_line(err)


def test_signing_onto_the_image_itself_is_refused(
    capsys: pytest.CaptureFixture[str], image: Path
) -> None:
    code, _, err = sign(capsys, image, image)
    assert code == EXIT_BAD_INPUT and "is the image itself" in one_error_line(err)
    assert image.read_bytes() == IMAGE


def _rsa_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.mark.parametrize(
    ("make_key", "words"),
    [
        (lambda d: d / "missing.pem", "No such file"),
        (lambda d: (d / "junk.pem", (d / "junk.pem").write_text("junk"))[0], "not an unencrypted"),
        (lambda d: _rsa_key(d / "rsa.pem"), "not an Ed25519 key"),
        (
            lambda d: TEST_KEY.with_name(signing.TEST_PUBLIC_KEY_NAME),
            "is a public key: sign with the private key",
        ),
    ],
    ids=["missing", "not-pem", "rsa", "public"],
)
def test_a_bad_key_is_its_own_exit_code_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path, make_key: object, words: str
) -> None:
    key = make_key(tmp_path)  # type: ignore[operator]
    out_path = tmp_path / "fw.sbi"
    code, out, err = sign(capsys, image, out_path, key=key)
    assert code == EXIT_BAD_KEY and out == ""
    assert words in one_error_line(err)
    assert not out_path.exists()


def test_sign_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path) -> None:
    code, out, _ = sign(capsys, image, tmp_path / "fw.sbi", "--json")
    payload = json.loads(out)
    assert code == EXIT_OK and payload["security_counter"] == 7 and payload["test_key"]
    assert payload["key_id"] == key_id_text(signing.test_trusted_key().key_id)


def test_help_lists_the_signing_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sign", "--help")
    assert code == 0
    for line in ("7    reverted", "8    the device runs only signed", "13   bad key file"):
        assert line in out

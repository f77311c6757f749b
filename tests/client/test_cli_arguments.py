"""The ``smartball-ota`` command line's help, arguments and bad input: each mistake is one
sentence and exit 2, before any Bluetooth.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from intelhex import IntelHex

from .cli_runs import STAGING, image_file, one_error_line, run, run_json

# --- help and arguments -----------------------------------------------------------------


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "exit codes:" in out
    for line in ("0    success", "2    bad input", "3    device not found", "4    update failed"):
        assert line in out
    assert "5    the device refused" in out
    code, out, _ = run(capsys, "flash", "--help")
    assert code == 0
    assert "--max-attempts" in out and "exit codes:" in out


def test_usage_error_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert "invalid choice" in err
    code, _, err = run(capsys, "flash", "--sim", "x.bin", "--max-attempts", "0")
    assert code == 2
    assert "--max-attempts" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("flash", "--sim", "x.bin", "--max-attempts", "0"),
        ("flash", "--sim"),
        ("frobnicate",),
        ("info", "--faults", "field-linux"),
        ("status", "--sim", "--faults", "drop@erase:150%"),
        ("info", "--scan-timeout", "-1"),
    ],
)
def test_a_bad_argument_is_one_sentence_and_the_usage_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("smartball-ota: ") and lines[0].count(". ") == 0, lines
    assert len(lines) <= 2, f"one sentence plus the usage line, got {err!r}"
    if len(lines) == 2:
        assert lines[1].startswith("usage: smartball-ota") and "\n" not in lines[1]


@pytest.mark.parametrize(
    "argv",
    [
        ("flash", "--sim", "x.bin", "--max-attempts", "0"),
        ("flash", "--sim"),
        ("info", "--faults", "field-linux"),
        ("frobnicate",),
    ],
)
def test_json_with_a_bad_argument_prints_one_object(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, data, err = run_json(capsys, *argv)
    assert code == 2
    assert data["ok"] is False and data["exit_code"] == 2 and data["error"]
    assert data["error"] in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"smartball-ota {version('pytest-smartball')}"


@pytest.mark.parametrize(
    ("segments", "name", "sentence"),
    [
        ({0xFFFFFFF0: b"\x01"}, "far.hex", "data at 0xFFFFFFF0 is outside"),
        ({0x27000: bytes(300), 0x10000000: b"\x02"}, "merged.hex", "data at 0x10000000 is outside"),
        ({0x26000: bytes(300)}, "hex-text.bin", "data at 0x00026000 lies below the application's"),
    ],
)
def test_image_problems_are_bad_input_before_any_bluetooth(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    segments: dict[int, bytes],
    name: str,
    sentence: str,
) -> None:
    """Without --sim: exit 2, not 3 (no BlueZ here) or 4, so nothing was probed or connected."""
    ih = IntelHex()
    for address, data in segments.items():
        ih.frombytes(data, offset=address)
    path = tmp_path / name
    ih.write_hex_file(str(path))
    code, out, err = run(capsys, "flash", str(path))
    assert code == 2 and out == ""
    assert sentence in one_error_line(err)


def test_faults_without_sim_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "info", "--faults", "field-linux")
    assert code == 2
    assert "--faults" in one_error_line(err) and "--sim" in err
    assert out == ""


def test_bad_fault_spec_is_exit_2_with_the_parsers_sentence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "status", "--sim", "--faults", "drop@erase:150%")
    assert code == 2
    line = one_error_line(err)
    assert "bad --faults" in line and "must be 0% to 100%" in line


def test_options_before_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, data, _ = run_json(capsys, "--sim", "--seed", "3", "info")
    assert code == 0
    assert data["simulated"] is True


# --- flash: bad input ---------------------------------------------------------------------


def test_missing_image_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(
        capsys, "flash", "--sim", "--sim-trust", "none", str(tmp_path / "nope.bin")
    )
    assert code == 2
    assert "no such file" in one_error_line(err)
    assert out == ""


def test_missing_image_fails_before_any_radio_activity(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No --sim and no BlueZ here: the image is checked first, so the answer is 2, not 3.
    code, _, err = run(capsys, "flash", str(tmp_path / "nope.bin"))
    assert code == 2
    assert "no such file" in one_error_line(err)


def test_empty_image_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    code, _, err = run(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 2
    assert "empty" in one_error_line(err)


def test_malformed_hex_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.hex"
    path.write_text(":10000000ZZ\n:00000001FF\n")
    code, _, err = run(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 2
    assert "not a valid Intel HEX" in one_error_line(err)


def test_image_larger_than_staging_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = image_file(tmp_path, STAGING + 1)
    code, data, err = run_json(capsys, "flash", "--sim", "--sim-trust", "none", str(path))
    assert code == 2
    assert data["ok"] is False and data["exit_code"] == 2
    assert f"staging area holds {STAGING} bytes" in one_error_line(err)
    assert "sim_active_image" not in data  # refused before any connect (issue 21)


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (("--faults", "lose:+3"), "'+3' is not a positive whole number"),
        (("--faults", "lose:1_000"), "'1_000' is not a positive whole number"),
        (("--faults", "lose:-1"), "'-1' is not a positive whole number"),
        (("--faults", "lose:bogus"), "unknown message type 'bogus'"),
        (("--scan-timeout", "inf"), "'inf' is not a finite number of seconds"),
        (("--scan-timeout", "nan"), "'nan' is not a finite number of seconds"),
        (("--erase-time", "inf"), "'inf' is not a finite number of seconds"),
        (("--sim-address", "notanaddress"), "'notanaddress' is not a Bluetooth address"),
        (("--sim-address", "C0:FF:EE:00:00"), "'C0:FF:EE:00:00' is not a Bluetooth address"),
    ],
)
def test_bad_values_are_named_for_what_they_are(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], sentence: str
) -> None:
    code, out, err = run(capsys, "status", "--sim", *argv)
    assert code == 2 and out == ""
    assert sentence in err.splitlines()[0], err
    assert "unknown message type" not in err or "bogus" in err
    assert "must be more than 0" not in err


def test_a_sim_address_that_is_an_address_is_the_devices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, data, _ = run_json(capsys, "status", "--sim", "--sim-address", "C0:FF:EE:00:00:42")
    assert code == 0 and data["device"]["address"] == "C0:FF:EE:00:00:42"


def test_a_tampered_signed_image_is_exit_2_before_any_radio_activity(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No --sim and no BlueZ here: a signed file whose image is not its manifest's is
    refused before anything is probed (2, not 3), in one sentence."""
    from pytest_smartball.contract import signing

    raw = bytearray(signing.sign(bytes(4096), signing.test_key(), (1, 0, 0), 1).encode())
    raw[-10] ^= 0x01
    path = tmp_path / "fw.sbi"
    path.write_bytes(raw)
    code, out, err = run(capsys, "flash", str(path))
    assert code == 2 and out == ""
    assert "changed after it was signed" in one_error_line(err)

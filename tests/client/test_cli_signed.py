"""``smartball-ota`` and signed updates against the simulated SmartBall (docs/protocol.md
section 16): ``--sim`` is a signed-only ball trusting the test key unless ``--sim-trust
none``; every outcome has its exit code and one sentence, and says what the ball holds."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball.cli import main
from pytest_smartball.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_REVERTED,
    EXIT_UNHEALTHY,
    EXIT_UNSIGNED,
    EXIT_UNTRUSTED_KEY,
)
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import key_id_text

from .cli_runs import run, run_json

IMAGE = random.Random(5).randbytes(20_000)
TEST_KID = key_id_text(signing.test_trusted_key().key_id)


def failure_line(err: str, what: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"smartball-ota: {what}")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def unsigned(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(IMAGE)
    return path


def signed_file(tmp_path: Path, *, key: Any = None, counter: int = 1, name: str = "fw.sbi") -> Path:
    path = tmp_path / name
    key = key or signing.test_key()
    path.write_bytes(signing.sign(IMAGE, key, (1, 2, 0), counter).encode())
    return path


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    return signed_file(tmp_path)


def test_a_signed_image_is_flashed_confirmed_and_the_result_says_so(
    capsys: pytest.CaptureFixture[str], signed: Path
) -> None:
    code, data, _ = run_json(capsys, "flash", "--sim", str(signed))
    assert code == EXIT_OK and data["outcome"] == "succeeded"
    assert data["image_state"] == "confirmed"
    after = data["info_after"]
    assert after["signed_only"] and after["image_state"] == "confirmed"
    assert after["security_counter"] == 1 and after["trusted_key_id"] == TEST_KID
    assert data["sim_active_image"]["size"] == len(IMAGE)
    kinds = [event["kind"] for event in data["events"]]
    assert kinds.index("manifest") < kinds.index("ready") < kinds.index("confirmed")


def test_human_output_says_confirmed(capsys: pytest.CaptureFixture[str], signed: Path) -> None:
    code, out, _ = run(capsys, "flash", "--sim", str(signed))
    assert code == EXIT_OK
    assert f"runs {signed} (confirmed)." in out
    assert "image state confirmed, security counter 1" in out


def test_an_unsigned_image_to_the_signed_only_ball_is_refused_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str], unsigned: Path
) -> None:
    code, data, _ = run_json(capsys, "flash", "--sim", str(unsigned))
    assert code == EXIT_UNSIGNED and data["failure"] == "unsigned"
    assert "the device runs only signed images" in data["error"]
    assert "sign it with `smartball-ota sign`" in data["error"]
    assert data["bytes_sent"] == 0 and data["sim_active_image"]["size"] != len(IMAGE)
    kinds = [event["kind"] for event in data["events"]]
    assert "manifest" not in kinds and "ready" not in kinds
    code, _, err = run(capsys, "flash", "--sim", str(unsigned))
    assert code == EXIT_UNSIGNED
    assert "keeps its old image" in failure_line(err, "update failed: ")


def test_another_keys_image_is_refused_with_its_own_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = signed_file(tmp_path, key=signing.generate())
    code, data, _ = run_json(capsys, "flash", "--sim", str(path))
    assert code == EXIT_UNTRUSTED_KEY and data["failure"] == "untrusted-key"
    assert f"the device trusts key {TEST_KID}" in data["error"]
    assert data["bytes_sent"] == 0


def test_no_confirm_leaves_the_image_on_trial(
    capsys: pytest.CaptureFixture[str], signed: Path
) -> None:
    code, data, _ = run_json(capsys, "flash", "--sim", "--no-confirm", str(signed))
    assert code == EXIT_OK and data["image_state"] == "test"
    assert "confirmed" not in [event["kind"] for event in data["events"]]
    code, out, _ = run(capsys, "flash", "--sim", "--no-confirm", str(signed))
    assert "on trial (not confirmed" in out


def test_a_passing_health_check_comes_before_the_confirm(
    capsys: pytest.CaptureFixture[str], signed: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "env.txt"
    check = f'echo "$SMARTBALL_FIRMWARE $SMARTBALL_IMAGE_CRC32" > {seen}'
    code, data, _ = run_json(capsys, "flash", "--sim", "--health-check", check, str(signed))
    assert code == EXIT_OK and data["image_state"] == "confirmed"
    kinds = [event["kind"] for event in data["events"]]
    assert kinds.index("health-check") < kinds.index("confirmed")
    assert seen.read_text().split() == ["1.2.0", f"{data['image_crc32']}"]


def test_a_failing_health_check_leaves_the_image_unconfirmed(
    capsys: pytest.CaptureFixture[str], signed: Path
) -> None:
    code, data, _ = run_json(capsys, "flash", "--sim", "--health-check", "exit 3", str(signed))
    assert code == EXIT_UNHEALTHY and data["failure"] == "unhealthy"
    assert "`exit 3` exited with 3" in data["error"]
    assert "runs it on trial and returns to its old image" in data["error"]
    assert data["image_state"] == "test"  # what the ball holds now: the new image, on trial


def test_a_health_check_that_hangs_is_stopped_by_its_timeout(
    capsys: pytest.CaptureFixture[str], signed: Path
) -> None:
    t0 = time.monotonic()
    argv = ("flash", "--sim", "--health-check", "sleep 30", "--health-check-timeout", "0.5")
    code, data, _ = run_json(capsys, *argv, str(signed))
    assert code == EXIT_UNHEALTHY and "did not finish within 0.5 s" in data["error"]
    assert time.monotonic() - t0 < 20  # the wall-clock bound, not the 30 s sleep


def test_no_confirm_and_a_health_check_are_one_or_the_other(
    capsys: pytest.CaptureFixture[str], signed: Path
) -> None:
    code, _, err = run(
        capsys, "flash", "--sim", "--no-confirm", "--health-check", "true", str(signed)
    )
    assert code == EXIT_BAD_INPUT and "give one or the other" in err


def test_a_reset_before_the_confirm_is_reverted_with_its_own_exit_code(
    capsys: pytest.CaptureFixture[str], signed: Path
) -> None:
    argv = ("flash", "--sim", "--faults", "reboot@cmd:CMD_OTA_CONFIRM#1", str(signed))
    code, data, _ = run_json(capsys, *argv)
    assert code == EXIT_REVERTED and data["outcome"] == "reverted"
    assert "reset before it was confirmed" in data["error"]
    assert data["image_state"] == "reverted"
    old = data["info_after"]["active_image_crc32"]
    assert f"runs its old image (firmware 1.0.0, crc32 {old}) again" in data["error"]
    assert data["sim_active_image"]["crc32"] == old
    code, out, err = run(capsys, *argv)
    assert code == EXIT_REVERTED and "Update REVERTED" in out
    assert failure_line(err, "update reverted: ")


def test_a_v1_ball_gets_a_signed_image_with_a_warning(
    capsys: pytest.CaptureFixture[str], signed: Path
) -> None:
    code, data, _ = run_json(capsys, "flash", "--sim", "--sim-trust", "none", str(signed))
    assert code == EXIT_OK and data["image_state"] is None
    warnings = [e["detail"] for e in data["events"] if e["kind"] == "warning"]
    assert any("it checks no signature" in w for w in warnings)
    assert "manifest" not in [event["kind"] for event in data["events"]]


def test_info_shows_the_balls_trust(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", "--sim")
    assert code == EXIT_OK
    assert "signed only       yes" in out
    assert f"trusted key id    {TEST_KID}" in out
    assert "security counter  0" in out and "image state       confirmed" in out
    code, data, _ = run_json(capsys, "info", "--sim")
    assert data["signed_only"] and data["trusted_key_id"] == TEST_KID
    assert data["image_state"] == "confirmed" and data["security_counter"] == 0
    code, out, _ = run(capsys, "info", "--sim", "--sim-trust", "none")
    assert "signed only       no" in out and "trusted key id" not in out


def test_confirm_on_a_confirmed_ball_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, data, _ = run_json(capsys, "confirm", "--sim")
    assert code == EXIT_OK and data["image_state"] == "confirmed"


def test_confirm_on_a_v1_ball_says_there_is_nothing_to_confirm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A v1 device answers CMD_OTA_CONFIRM with UNKNOWN_COMMAND at once: that is the
    sentence, not a reply that never came (a link failure's exit code)."""
    code, _, err = run(capsys, "confirm", "--sim", "--sim-trust", "none")
    assert code == EXIT_REFUSED, err
    assert "v1 device without signed updates" in err and "within" not in err


def test_sim_trust_is_for_the_simulator_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "info", "--sim-trust", "none")
    assert code == EXIT_BAD_INPUT and "--sim-trust only works with --sim" in err


@pytest.mark.parametrize(
    ("faults", "code", "outcome", "words"),
    [
        ("flip-staged:5000", 5, "failed", "DIGEST_MISMATCH (the SHA-256 of the staged flash"),
        (
            "flip-staged:100@msg:MSG_OTA_DONE",
            EXIT_REVERTED,
            "reverted",
            "the device refused the new image (crc32 ",
        ),
        ("reboot@at:verified", EXIT_OK, "succeeded", ""),
        ("reboot@at:confirmed", EXIT_OK, "succeeded", ""),
        ("swap-cut:4", EXIT_OK, "succeeded", ""),
    ],
)
def test_the_windows_of_a_signed_update_end_as_they_are(
    capsys: pytest.CaptureFixture[str],
    signed: Path,
    faults: str,
    code: int,
    outcome: str,
    words: str,
) -> None:
    """A staged byte changed behind an unchanged CRC-32 (refused at FINISH; after DONE, by
    the bootloader: reverted), a power cut between the verify and PENDING (the update runs
    again), just after the confirm (it stands), in the swap (it resumes)."""
    got, data, _ = run_json(capsys, "flash", "--sim", "--faults", faults, str(signed))
    assert (got, data["outcome"]) == (code, outcome), data["error"]
    assert words in data["error"]
    holds_new = data["sim_active_image"]["size"] == len(IMAGE)
    assert holds_new == (outcome == "succeeded")
    if outcome == "succeeded":
        assert data["image_state"] == "confirmed"


# --- the README's quick start ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start")
    block = readme[
        readme.index("```sh\n", start) + 6 : readme.index("```", readme.index("```sh\n", start) + 6)
    ]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_quick_start_is_two_commands_and_the_first_flashes_a_signed_image(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first command, run here step by step (the venv and pip steps left out: this is
    that environment), signs build/demo.bin with the test key and flashes the .sbi onto the
    default (signed-only) simulated ball under field-linux, which ends confirmed."""
    import shlex

    from smartball_sim import make_image

    first, second = _quick_start()
    assert second == ".ci/run"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pytest_smartball").symlink_to(ROOT / "pytest_smartball")
    steps = first.split(" && ")
    assert steps[0].startswith("python3 -m venv") and "pip install " in steps[1]
    ran = []
    for step in steps[2:]:
        argv = shlex.split(step)
        if argv[:3] == [".venv/bin/python", "-m", "smartball_sim.make_image"]:
            assert make_image.main(argv[3:]) == 0
        else:
            assert argv[0] == ".venv/bin/smartball-ota"
            ran.append(argv[1])
            code = main([*argv[1:], "--json"])
            out = capsys.readouterr().out
            assert code == EXIT_OK, out
    assert ran == ["sign", "flash"]
    data = json.loads(out.strip().splitlines()[-1])
    assert data["image_format"] == "signed image" and "--sim" in first and "field-linux" in first
    assert data["image_state"] == "confirmed" and data["resumes"] >= 1
    assert data["info_after"]["trusted_key_id"] == TEST_KID

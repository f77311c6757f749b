"""``smartball-ota`` in a shell pipeline: a reader that goes away (``| head -1``), a closed
stdout (``>&-``) or stderr (``2>&-``) changes neither the update nor its exit code.

Each test runs the real command in a subprocess (the streams are the process's own file
descriptors). Where the pipeline alone could let every write land before the reader goes
(a race), the reading end is closed before the command starts instead: then every write to
it fails, every time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes and descriptors")

CLI = [sys.executable, "-m", "pytest_smartball.cli"]
#: A plan that gets nowhere: every connect times out; two attempts without progress.
HOPELESS = ("--faults", "connect-timeout:50", "--max-attempts", "2")
OLD_IMAGE = "keeps its old image"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(random.Random(3).randbytes(20_000))
    return path


def flash(image: Path, *extra: str) -> list[str]:
    return [*CLI, "flash", "--sim", "--sim-trust", "none", *extra, str(image)]


def assert_quiet(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert "BrokenPipeError" not in stderr, stderr


@pytest.fixture
def dead_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is already gone: every write raises EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    yield write_end
    os.close(write_end)


def piped_to_head(argv: list[str], *head_args: str) -> tuple[int, str, str]:
    """``argv | head ARGS``: the command's exit code and stderr, and what head printed."""
    head = shutil.which("head")
    if head is None:
        pytest.skip("no head(1) on this machine")
    producer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert producer.stdout is not None and producer.stderr is not None
    reader = subprocess.run(
        [head, *head_args], stdin=producer.stdout, capture_output=True, text=True, timeout=60
    )
    producer.stdout.close()  # only head reads it now, as in a shell pipeline
    err = producer.stderr.read()
    producer.stderr.close()
    return producer.wait(timeout=60), reader.stdout, err


# --- | head ------------------------------------------------------------------------------


def test_a_failed_update_piped_to_head_keeps_its_exit_code_and_sentence(image: Path) -> None:
    code, first_line, err = piped_to_head(flash(image, *HOPELESS), "-1")
    assert code == 4, err
    assert first_line.startswith("Update FAILED (link)"), first_line
    assert OLD_IMAGE in err
    assert_quiet(err)


def test_a_successful_update_piped_to_head_exits_0(image: Path) -> None:
    code, first_line, err = piped_to_head(flash(image), "-1")
    assert code == 0, err
    assert first_line.startswith("Update succeeded"), first_line
    assert_quiet(err)


def test_json_piped_to_head_c_10_is_quiet_with_the_real_exit_code(image: Path) -> None:
    code, head, err = piped_to_head(flash(image, "--json", *HOPELESS), "-c", "10")
    assert code == 4
    assert head == '{"command"'
    assert OLD_IMAGE in err  # stderr still says it; the object on stdout did too
    assert_quiet(err)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [((), 0), (HOPELESS, 4), (("--json",), 0), (("--json", *HOPELESS), 4)],
    ids=["success", "failure", "json-success", "json-failure"],
)
def test_a_reader_gone_before_the_first_write_changes_nothing(
    image: Path, dead_pipe: int, extra: tuple[str, ...], expected: int
) -> None:
    proc = subprocess.run(
        flash(image, *extra), stdout=dead_pipe, stderr=subprocess.PIPE, text=True, timeout=60
    )
    assert proc.returncode == expected, proc.stderr
    assert_quiet(proc.stderr)
    if expected and "--json" not in extra:
        assert OLD_IMAGE in proc.stderr


def test_a_bad_argument_to_a_gone_reader_is_still_exit_2(dead_pipe: int) -> None:
    proc = subprocess.run(
        [*CLI, "--help"], stdout=dead_pipe, stderr=subprocess.PIPE, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert_quiet(proc.stderr)
    proc = subprocess.run(
        [*CLI, "flash", "--sim", "--json", "missing.bin"],
        stdout=dead_pipe,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr
    assert_quiet(proc.stderr)


# --- closed descriptors -------------------------------------------------------------------


def with_closed(fd: int, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as a shell would with ``>&-`` (fd 1) or ``2>&-`` (fd 2)."""
    return subprocess.run(
        argv,
        stdout=subprocess.PIPE if fd != 1 else None,
        stderr=subprocess.PIPE if fd != 2 else None,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(fd),  # the child closes it, as `>&-` does
    )


def test_with_stderr_closed_the_update_finishes(image: Path) -> None:
    proc = with_closed(2, flash(image))
    assert proc.returncode == 0
    assert "Update succeeded" in proc.stdout
    assert "(the new image)" in proc.stdout  # what the simulated device holds


def test_with_stderr_closed_a_failure_says_so_on_stdout(image: Path) -> None:
    proc = with_closed(2, flash(image, *HOPELESS))
    assert proc.returncode == 4
    assert "Update FAILED (link)" in proc.stdout
    assert "update failed: " in proc.stdout and OLD_IMAGE in proc.stdout


def test_with_stderr_closed_json_is_one_object(image: Path) -> None:
    proc = with_closed(2, flash(image, "--json", *HOPELESS))
    assert proc.returncode == 4
    data = json.loads(proc.stdout)  # one object, nothing else
    assert data["exit_code"] == 4 and OLD_IMAGE in data["error"]


def test_with_stdout_closed_the_update_finishes_and_says_how(image: Path) -> None:
    proc = with_closed(1, flash(image))
    assert proc.returncode == 0
    assert_quiet(proc.stderr)
    # The outcome goes where it can: the summary's stdout is gone, stderr is not.
    assert "smartball-ota: update succeeded: " in proc.stderr
    assert "runs " + str(image) in proc.stderr
    proc = with_closed(1, flash(image, *HOPELESS))
    assert proc.returncode == 4
    assert OLD_IMAGE in proc.stderr
    assert_quiet(proc.stderr)


# --- the display never raises into the engine ------------------------------------------------


class _BrokenTerminal:
    """A stderr that fails in a way no stream wrapper expects."""

    def isatty(self) -> bool:
        raise RuntimeError("the terminal went away")

    def write(self, text: str) -> int:
        raise RuntimeError("the terminal went away")

    def flush(self) -> None:
        raise RuntimeError("the terminal went away")


def test_a_failing_display_is_switched_off_instead_of_failing_the_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_smartball.cli.output import ProgressDisplay
    from pytest_smartball.ota import EventKind, OtaEvent

    display = ProgressDisplay(bars=True, lines=True, virtual=True)
    monkeypatch.setattr(sys, "stderr", _BrokenTerminal())
    display.on_progress("erase", 10, 100)  # would raise into the engine's wait for READY
    display.on_event(OtaEvent(1.0, EventKind.LINK_LOST, "device disconnected"))
    display.close()
    assert (display.bars, display.lines) == (False, False)


def test_a_broken_stdout_in_process_keeps_the_exit_code(
    monkeypatch: pytest.MonkeyPatch, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_smartball.cli import main

    class GonePipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stdout", GonePipe())
    code = main(["flash", "--sim", "--sim-trust", "none", *HOPELESS, str(image)])
    err = capsys.readouterr().err
    assert code == 4
    assert OLD_IMAGE in err
    assert_quiet(err)


# --- Ctrl-C ------------------------------------------------------------------------------


class _InterruptingImport:
    """A meta-path finder that stands for a Ctrl-C arriving while the CLI is imported."""

    def find_spec(self, name: str, *_: object) -> None:
        if name == "pytest_smartball.cli":
            raise KeyboardInterrupt


def test_ctrl_c_while_the_cli_is_still_starting_is_one_sentence_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console script's own entry point (as installed), interrupted in its imports
    (about a second on a busy machine): no KeyboardInterrupt traceback."""
    from importlib.metadata import entry_points

    [script] = entry_points(group="console_scripts", name="smartball-ota")
    for name in [m for m in sys.modules if m.split(".")[:2] == ["pytest_smartball", "cli"]]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_InterruptingImport(), *sys.meta_path])
    try:
        code = script.load()()
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C while the CLI was being imported ended in a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted while starting" in err, err

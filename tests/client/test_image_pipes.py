"""Image intake (issue 21) from pipes and devices: read in bounded time and memory, or
refused unopened.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball import image as image_module
from pytest_smartball.image import STAGING_CAPACITY, load_image
from pytest_smartball.image_formats import ImageFormat

from .. import arm_build
from .image_intake import image_error

# --- pipes and devices: bounded time and memory -------------------------------------------


def test_dev_zero_is_refused_unopened(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: `flash /dev/zero` allocated without bound (2.5 GB in 3 s)."""
    opened: list[str] = []
    original = os.open

    def recording(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording)
    message = image_error(Path("/dev/zero"))
    assert "is a character device, not a file: it is not read" in message
    assert "/dev/zero" not in opened


def test_a_fifo_nobody_writes_to_is_given_up_on(tmp_path: Path) -> None:
    """Issue 21: a FIFO hung silently. Opened without blocking, then waited on for at most
    the silence bound (here 0 s, so the test does not wait at all)."""
    fifo = tmp_path / "fw.fifo"
    os.mkfifo(fifo)
    message = image_error(fifo, pipe_silence_s=0)
    assert "nothing came through the pipe for 0 s (is anything writing to it?)" in message
    assert image_module.PIPE_SILENCE_S == 10.0 and image_module.PIPE_TOTAL_S == 60.0


def test_a_dash_for_standard_input_gets_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cat fw.hex | smartball-ota flash -` is the Unix habit; the image's path is read."""
    monkeypatch.chdir(tmp_path)  # no file named "-" here
    assert (
        image_error(Path("-")) == "-: no such file (to read the image from a pipe, give /dev/stdin)"
    )


def test_an_image_from_a_pipe_is_read(build: arm_build.Build) -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, build.hex.read_bytes())  # fits the pipe's buffer
        os.close(write_end)
        image = load_image(Path(f"/dev/fd/{read_end}"))
    finally:
        os.close(read_end)
    assert image.data == build.image and image.format is ImageFormat.INTEL_HEX


@pytest.mark.parametrize("head", [b"", b"\x7fELF"], ids=["raw", "elf"])
def test_an_endless_pipe_is_read_no_further_than_the_bound(head: bytes) -> None:
    """Raw bytes: the staging area + 1; an ELF from a pipe: MAX_CONTAINER_BYTES + 1."""
    read_end, write_end = os.pipe()
    written = 0
    limit = 64 * 1024 * 1024  # the writer's own bound, far beyond what may be read

    def writer() -> None:
        nonlocal written
        chunk = bytes(1 << 16)
        try:
            written += os.write(write_end, head)
            while written < limit:
                written += os.write(write_end, chunk)
        except BrokenPipeError:
            pass  # the reader closed: it read all it was going to
        finally:
            os.close(write_end)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        message = image_error(Path(f"/dev/fd/{read_end}"), pipe_silence_s=60)
    finally:
        os.close(read_end)
        thread.join(timeout=60)
    assert not thread.is_alive()
    bound = STAGING_CAPACITY if not head else image_module.MAX_CONTAINER_BYTES
    assert f"more than {bound} bytes" in message
    if head:
        assert "an ELF from a pipe is read whole" in message
        assert "give the ELF file's path" in message
    # What the writer got rid of: what was read, plus at most the pipe's buffer and a chunk.
    assert written <= bound + 1 + 2 * (1 << 16) + 1024 * 1024
    assert written < limit

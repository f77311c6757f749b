"""stdout and stderr as a pipeline treats them: best-effort.

``smartball-ota flash ... | head -1`` closes the pipe after one line; ``2>&-`` starts the
command with no stderr at all; a terminal may go away mid-update. None of that may change
what the update does or its exit code: a write that cannot be made is dropped, the stream
is switched off for the rest of the run, and the update goes on. This is Python's recipe
for SIGPIPE (point the dead descriptor at ``/dev/null`` so the flush at exit is quiet)
extended to the whole run, because an OTA update must not be abandoned for want of a
reader: the device would be left mid-session for no reason of its own.

:func:`best_effort` installs the wrappers for the duration of ``main``;
:func:`say` writes a sentence the user must see (the outcome, an error) wherever it can
still go.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import TextIO

#: What a write to a closed or broken stream raises: EPIPE/EBADF (OSError) or a closed
#: file object (ValueError).
STREAM_ERRORS = (OSError, ValueError)


class BestEffortStream(io.TextIOBase):
    """A text stream that never raises on write or flush: the first failure switches it
    off (``dead``), and its file descriptor is pointed at /dev/null so that nothing later
    (the interpreter's flush at exit, a C library) fails on it either."""

    def __init__(self, stream: TextIO | None, name: str) -> None:
        super().__init__()
        self._stream = stream
        self._name = name
        #: The stream was missing from the start (``2>&-``) or a write to it failed.
        self.dead = stream is None

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self.dead and self._stream is not None:
            try:
                self._stream.write(text)
            except STREAM_ERRORS:
                self._die()
        return len(text)

    def flush(self) -> None:
        if not self.dead and self._stream is not None:
            try:
                self._stream.flush()
            except STREAM_ERRORS:
                self._die()

    def fileno(self) -> int:
        """The wrapped stream's descriptor (tqdm reads the terminal's width through it)."""
        if self._stream is None:
            raise OSError("no such stream: it was closed when the command started")
        return self._stream.fileno()

    def isatty(self) -> bool:
        if self.dead or self._stream is None:
            return False
        try:
            return self._stream.isatty()
        except STREAM_ERRORS:
            return False

    def _die(self) -> None:
        self.dead = True
        stream = self._stream
        if stream is None:
            return
        # A stream without a descriptor (io.StringIO, a test's stand-in) has nothing to
        # point elsewhere: AttributeError or io.UnsupportedOperation (an OSError).
        with contextlib.suppress(AttributeError, *STREAM_ERRORS):
            fd = stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)  # what is still buffered drains into /dev/null
            finally:
                os.close(devnull)


@contextlib.contextmanager
def best_effort() -> Iterator[tuple[BestEffortStream, BestEffortStream]]:
    """Replace ``sys.stdout`` and ``sys.stderr`` with best-effort wrappers while the
    command runs; restore them after, flushed (or drained into /dev/null)."""
    _reserve_closed_descriptors()
    old_out, old_err = sys.stdout, sys.stderr
    out = BestEffortStream(old_out, "<stdout>")
    err = BestEffortStream(old_err, "<stderr>")
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        out.flush()
        err.flush()
        sys.stdout, sys.stderr = old_out, old_err


def _reserve_closed_descriptors() -> None:
    """A command started with fd 1 or 2 closed would hand that number to the next file or
    socket it opens, and a stray write to "stderr" would land in it: keep them on
    /dev/null."""
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                opened = os.open(os.devnull, os.O_WRONLY)
                if opened != fd:
                    os.dup2(opened, fd)
                    os.close(opened)


def _dead(stream: object) -> bool:
    return stream is None or bool(getattr(stream, "dead", False))


def say(sentence: str, *, stdout_too: bool = True) -> None:
    """A sentence the user must see (an error, the update's outcome): on stderr, or on
    stdout when stderr is gone (unless ``stdout_too`` is False: --json keeps stdout to its
    one object)."""
    print(sentence, file=sys.stderr)
    sys.stderr.flush()
    if _dead(sys.stderr) and stdout_too:
        print(sentence, file=sys.stdout)


def stdout_gone() -> bool:
    """stdout took nothing more (closed with ``>&-``, or its reader is gone), as far as a
    flush can tell: then an outcome said only there is said on stderr too."""
    with contextlib.suppress(*STREAM_ERRORS):
        sys.stdout.flush()
    return _dead(sys.stdout)

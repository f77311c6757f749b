"""The ``smartball-ota`` console script: :func:`pytest_smartball.cli.main` behind a guard.

Importing the CLI (bleak, the engine, the contract) takes a moment, and a Ctrl-C in it
would otherwise end in a KeyboardInterrupt traceback. This module imports nothing heavy,
so the guard is in place before any of that starts.
"""

from __future__ import annotations

import contextlib
import sys

#: As :data:`pytest_smartball.cli.errors.EXIT_INTERRUPTED` (not imported: that is the point).
EXIT_INTERRUPTED = 130
STARTING_SENTENCE = (
    "smartball-ota: interrupted while starting, before it looked for any device: nothing was done"
)


def main() -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError):  # no stderr (2>&-): stdout, or none
            print(STARTING_SENTENCE, file=sys.stderr)
        return EXIT_INTERRUPTED
    return cli_main()

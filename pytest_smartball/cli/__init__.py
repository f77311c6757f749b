"""``smartball-ota``: scan for, inspect and update SmartBalls from the command line.

The same code paths as the pytest plugin: :class:`~pytest_smartball.ota.OtaEngine` over a
:class:`~pytest_smartball.link.NusLink`, against a real radio (bleak on BlueZ) or, with
``--sim``, an in-process simulated SmartBall on a virtual clock (a 30 s erase costs
milliseconds; ``--realtime`` runs at device speed instead).

The package's rooms: :mod:`.args` (parsing and the settings derived from it),
:mod:`.targets` (which device: the only place that imports the simulator), :mod:`.commands`
and :mod:`.output`. Every expected failure ends as one sentence on stderr and an exit code
(:mod:`.errors`); with ``--json`` also as one JSON object on stdout. Tracebacks are left
for bugs.
"""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import Any

from ..image import ImageError, load_image
from . import output as out
from . import streams
from .args import PROG, Context, parse_args
from .commands import cmd_abort, cmd_confirm, cmd_flash, cmd_info, cmd_scan, cmd_status
from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, CliError, interrupted_sentence
from .keys import cmd_keygen, cmd_sign
from .targets import check_fault_spec, run

__all__ = ["main"]

COMMANDS = {
    "scan": cmd_scan,
    "info": cmd_info,
    "status": cmd_status,
    "abort": cmd_abort,
    "confirm": cmd_confirm,
}
#: Commands that never touch Bluetooth: no loop, no device.
OFFLINE = {"keygen": cmd_keygen, "sign": cmd_sign}


def _fail(error: CliError, *, json: bool, command: str | None) -> int:
    streams.say(f"{PROG}: {error}", stdout_too=not json)
    if error.usage:
        print(error.usage, file=sys.stderr)
    if json:
        out.emit_json(
            {"command": command, "ok": False, "exit_code": error.code, "error": str(error)}
        )
    return error.code


def main(argv: list[str] | None = None) -> int:
    """The ``smartball-ota`` entry point; returns the exit code (see ``errors.EXIT_CODES``).

    stdout and stderr are best-effort (:mod:`.streams`): a closed pipe (``| head -1``) or
    a missing stderr (``2>&-``) changes neither the update nor the exit code."""
    with streams.best_effort():
        return _main(sys.argv[1:] if argv is None else argv)


def _main(raw: list[str]) -> int:
    wants_json = "--json" in raw
    try:
        args = parse_args(raw)
    except SystemExit as exc:  # --help or --version: printed, nothing more to do
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except CliError as exc:
        command = next((word for word in raw if not word.startswith("-")), None)
        return _fail(exc, json=wants_json, command=command)
    ctx = Context(args)
    uninstall_logging = out.install_logging(args.verbose)
    try:
        if args.command in OFFLINE:
            return OFFLINE[args.command](ctx)
        check_fault_spec(ctx)
        coro: Coroutine[Any, Any, int]
        if args.command == "flash":
            try:
                image = load_image(args.image)
            except ImageError as exc:
                raise CliError(EXIT_BAD_INPUT, str(exc)) from None
            coro = cmd_flash(ctx, image)
        else:
            coro = COMMANDS[args.command](ctx)
        return run(ctx, coro)
    except CliError as exc:
        return _fail(exc, json=ctx.json, command=args.command)
    except KeyboardInterrupt:
        sentence = interrupted_sentence(ctx.device_in_process, switch_asked=ctx.switch_asked)
        error = CliError(EXIT_INTERRUPTED, sentence)
        return _fail(error, json=ctx.json, command=args.command)
    finally:
        uninstall_logging()


if __name__ == "__main__":
    sys.exit(main())

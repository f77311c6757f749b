"""``python -m smartball_sim.bluez check``: exit 1 (listing them) if a dbus-daemon started by the
emulated BlueZ's launcher is still running; CI runs it after the test runs.

``python -m smartball_sim.bluez serve [...]``: simulated SmartBalls behind the emulated
bluetoothd in a process of their own (:mod:`.serve`; ``serve --help``)."""

from __future__ import annotations

import sys

from .launcher import leftover_daemons

USAGE = "usage: python -m smartball_sim.bluez {check | serve [--help | OPTIONS]}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        from .serve import serve

        return serve(args[1:])
    if args != ["check"]:
        print(USAGE, file=sys.stderr)
        return 2
    pids = leftover_daemons()
    if pids:
        print(f"emulated BlueZ: dbus-daemon still running: pids {pids}", file=sys.stderr)
        return 1
    print("emulated BlueZ: no dbus-daemon left running")
    return 0


if __name__ == "__main__":
    sys.exit(main())

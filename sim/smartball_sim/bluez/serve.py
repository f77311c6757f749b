"""``python -m smartball_sim.bluez serve``: simulated SmartBalls behind the emulated bluetoothd,
in a process of their own, so that they outlive the host that updates them.

``--sim`` and ``--bluez=emulated`` run the simulated device inside the CLI: when the CLI dies,
the device dies with it, and the field's most common recovery (the script or the laptop died
mid-update; run it again and it resumes) cannot be shown. This server keeps the device (its
firmware model, its OTA session, its flash) alive across host processes::

    python -m smartball_sim.bluez serve --address-file build/bus.txt &
    smartball-ota flash IMAGE --bluez=emulated --bus "$(cat build/bus.txt)"

It starts the private ``dbus-daemon`` and the emulated bluetoothd (:class:`.launcher.
EmulatedBluez`, in real time), prints ``DBUS_SYSTEM_BUS_ADDRESS=ADDRESS`` on stdout (and
writes ADDRESS to ``--address-file``, whole, once it is listening), and serves until

* SIGTERM or SIGINT (a clean stop: emulator, daemon, temporary files);
* the process that started it ends (``--parent PID``, by default its parent: polled, so a
  parent killed with SIGKILL counts too);
* ``--lifetime`` seconds have passed (default 600: a bound on anything a test forgets).

The dbus-daemon dies with the server even when the server is killed outright (it is started
with ``PR_SET_PDEATHSIG``), so ``python -m smartball_sim.bluez check`` stays green.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from pytest_smartball.contract import codec as p
from smartball_sim.device import DEFAULT_ADDRESS, RadioTimings
from smartball_sim.faults import FaultPlan, FaultSpecError
from smartball_sim.firmware.model import FlashTimings

from .launcher import (
    EMULATED_BOOT_S,
    EMULATED_CONNECT_S,
    DbusDaemonMissing,
    EmulatedBluez,
    emulated_smartball,
)

log = logging.getLogger("smartball_sim.bluez.serve")

#: The longest a server lives unless told otherwise: nothing a test forgets outlives CI.
DEFAULT_LIFETIME_S = 600.0
#: How often the server looks whether its parent is still there.
PARENT_POLL_S = 0.2
#: What the server prints first on stdout, followed by the bus address.
ADDRESS_PREFIX = "DBUS_SYSTEM_BUS_ADDRESS="


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smartball_sim.bluez serve",
        description="Serve simulated SmartBalls behind an emulated bluetoothd on a private "
        "D-Bus, in real time, until stopped (SIGTERM/SIGINT), until its parent ends, or "
        "until --lifetime runs out.",
    )
    parser.add_argument("--name", default=p.DEFAULT_NAME, help="the advertised name")
    parser.add_argument(
        "--sim-address", default=DEFAULT_ADDRESS, metavar="ADDR", help="the device's address"
    )
    parser.add_argument("--faults", default=None, metavar="SPEC", help="docs/faults.md")
    parser.add_argument("--seed", type=int, default=0, metavar="N")
    parser.add_argument(
        "--erase-time",
        type=float,
        default=None,
        metavar="S",
        help="the whole staging erase takes S seconds (default: 5 ms per page)",
    )
    parser.add_argument(
        "--boot-time",
        type=float,
        default=None,
        metavar="S",
        help="a reset keeps the device silent (not advertising) for S seconds (default: "
        f"{EMULATED_BOOT_S:g})",
    )
    parser.add_argument(
        "--address-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the bus address to PATH (replaced whole once the bus listens)",
    )
    parser.add_argument(
        "--parent",
        type=int,
        default=None,
        metavar="PID",
        help="stop when this process ends (default: the process that started the server)",
    )
    parser.add_argument(
        "--lifetime",
        type=float,
        default=DEFAULT_LIFETIME_S,
        metavar="S",
        help=f"stop after S seconds whatever happens (default: {DEFAULT_LIFETIME_S:g})",
    )
    return parser


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _write_whole(path: Path, text: str) -> None:
    """A reader polling ``path`` never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def serve(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    parent = args.parent if args.parent is not None else os.getppid()
    options: dict[str, object] = {}
    if args.erase_time:
        options["flash"] = FlashTimings(erase_total_s=args.erase_time)
    if args.boot_time is not None:
        options["radio"] = RadioTimings(boot_s=args.boot_time, connect_s=EMULATED_CONNECT_S)
    try:
        faults = FaultPlan.parse(args.faults) if args.faults else None
    except FaultSpecError as exc:
        print(f"emulated BlueZ: bad --faults: {exc}", file=sys.stderr)
        return 2
    device = emulated_smartball(
        args.name, args.sim_address, faults=faults, seed=args.seed, **options
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bluez = EmulatedBluez([device], set_environment=False)
    try:
        bluez.start()
    except (DbusDaemonMissing, OSError, RuntimeError) as exc:
        print(f"emulated BlueZ: cannot start: {exc}", file=sys.stderr)
        return 3
    try:
        address = bluez.bus.address
        if args.address_file is not None:
            _write_whole(args.address_file, address + "\n")
        print(f"{ADDRESS_PREFIX}{address}", flush=True)
        deadline = time.monotonic() + args.lifetime
        why = "stopped"
        while not stop.wait(PARENT_POLL_S):
            orphaned = args.parent is None and os.getppid() != parent
            if orphaned or not _alive(parent):
                why = f"its parent (pid {parent}) ended"
                break
            if time.monotonic() >= deadline:
                why = f"its lifetime of {args.lifetime:g} s ran out"
                break
        print(f"emulated BlueZ: {why}; stopping", file=sys.stderr, flush=True)
    finally:
        bluez.stop()
        if args.address_file is not None:
            with contextlib.suppress(OSError):
                args.address_file.unlink()
    return 0

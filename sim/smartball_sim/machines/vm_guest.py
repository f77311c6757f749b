"""Inside the VM of :mod:`smartball_sim.machines.vm`: the Linux Bluetooth stack up, COMMAND run,
down.

Run by the VM's init as root, in the host's directory, with the host's filesystem as a
read-only root (tmpfs overlays on ``/etc``, ``/var``, ``/tmp``; ``--out`` shared with the
host). In order, each step bounded:

1. create the boot marker (the host's proof that this accelerator boots the kernel);
2. ``modprobe bluetooth hci_vhci`` (``/dev/vhci`` appears);
3. a fresh ``/var/lib/bluetooth`` (tmpfs: no pairing or GATT cache of the host leaks in),
   the system ``dbus-daemon``, ``btmon -w btmon.btsnoop`` (before bluetoothd, so the trace
   holds every management and HCI exchange), ``bluetoothd -n`` with a configuration
   file of our own (BlueZ's defaults; see :data:`MAIN_CONF`);
4. waits until bluetoothd owns ``org.bluez`` on the system bus, prints the kernel and
   BlueZ versions, writes them to ``.vm/guest.json``;
5. runs COMMAND with ``SMARTBALL_VM_OUT`` set to the output folder and the host Python's
   ``bin`` first on ``PATH``; writes its exit code to ``.vm/exit-code``;
6. stops bluetoothd, btmon and dbus (TERM, then KILL), saves ``dmesg``, exits with
   COMMAND's code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from .vm_plan import BLUETOOTHD_PATHS, STATE_DIR

#: bluetoothd's configuration in the VM: BlueZ's defaults, written out so that a host's
#: own /etc/bluetooth/main.conf (the VM sees the host's /etc) cannot change the run.
MAIN_CONF = """\
# smartball VM: BlueZ's defaults (nothing overridden)
[General]
"""

#: Bounds for each step. Software emulation on a busy 2-core machine is slow (a step that
#: takes 1 s with KVM may take 10); these only end a set-up that is stuck.
MODPROBE_TIMEOUT_S = 60.0
DBUS_TIMEOUT_S = 60.0
BTMON_TIMEOUT_S = 60.0
BLUEZ_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
SYSTEM_BUS_SOCKET = Path("/run/dbus/system_bus_socket")


class SetupFailed(Exception):
    """A step of the set-up failed; the message says which and why."""


def say(line: str) -> None:
    print(f"smartball vm: {line}", flush=True)


def bluetoothd_path() -> str:
    for path in BLUETOOTHD_PATHS:
        if Path(path).exists():
            return path
    raise SetupFailed("bluetoothd is not installed (apt-get install -y bluez)")


def run_bounded(cmd: Sequence[str], timeout: float, what: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SetupFailed(f"{what} did not finish within {timeout:g} s") from None
    if out.returncode != 0:
        raise SetupFailed(f"{what} failed (exit code {out.returncode}): {out.stderr.strip()}")
    return out.stdout


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SetupFailed(f"{what} within {timeout:g} s")
        time.sleep(0.1)


async def _bluez_owned() -> bool:
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(
        bus_address=f"unix:path={SYSTEM_BUS_SOCKET}", bus_type=BusType.SYSTEM
    ).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="NameHasOwner",
                signature="s",
                body=["org.bluez"],
            )
        )
    finally:
        bus.disconnect()
    return reply.message_type == MessageType.METHOD_RETURN and bool(reply.body[0])


def bluez_owned() -> bool:
    try:
        return asyncio.run(asyncio.wait_for(_bluez_owned(), 5.0))
    except (OSError, TimeoutError, EOFError):
        return False


class Stack:
    """The daemons this guest started, stopped in reverse order."""

    def __init__(self, out: Path, bluetoothd_debug: bool) -> None:
        self.out = out
        self.debug = bluetoothd_debug
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.files: list[IO[bytes]] = []

    def _spawn(self, name: str, cmd: list[str], log: Path | None) -> subprocess.Popen[bytes]:
        sink: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            sink = log.open("wb")
            self.files.append(sink)
        process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
        self.processes.append((name, process))
        return process

    def start(self) -> dict[str, str]:
        run_bounded(["modprobe", "bluetooth"], MODPROBE_TIMEOUT_S, "modprobe bluetooth")
        run_bounded(["modprobe", "hci_vhci"], MODPROBE_TIMEOUT_S, "modprobe hci_vhci")
        wait_until(Path("/dev/vhci").exists, MODPROBE_TIMEOUT_S, "/dev/vhci did not appear")
        state = Path("/var/lib/bluetooth")
        state.mkdir(parents=True, exist_ok=True)
        run_bounded(["mount", "-t", "tmpfs", "tmpfs", str(state)], 10, "mount /var/lib/bluetooth")
        SYSTEM_BUS_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        dbus = self._spawn(
            "dbus-daemon",
            ["dbus-daemon", "--system", "--nofork", "--nopidfile"],
            self.out / "dbus-daemon.log",
        )
        wait_until(
            lambda: SYSTEM_BUS_SOCKET.exists() or dbus.poll() is not None,
            DBUS_TIMEOUT_S,
            "the system dbus-daemon did not listen",
        )
        if dbus.poll() is not None:
            raise SetupFailed("the system dbus-daemon exited; see dbus-daemon.log")
        trace = self.out / "btmon.btsnoop"
        trace.unlink(missing_ok=True)
        btmon = self._spawn("btmon", ["btmon", "-w", str(trace)], self.out / "btmon.log")
        wait_until(
            lambda: trace.exists() or btmon.poll() is not None,
            BTMON_TIMEOUT_S,
            "btmon did not open its trace",
        )
        conf = Path("/tmp/smartball-bluetoothd.conf")
        conf.write_text(MAIN_CONF)
        daemon = bluetoothd_path()
        cmd = [daemon, "-n", "-f", str(conf)] + (["-d"] if self.debug else [])
        bluetoothd = self._spawn("bluetoothd", cmd, self.out / "bluetoothd.log")
        wait_until(
            lambda: bluez_owned() or bluetoothd.poll() is not None,
            BLUEZ_TIMEOUT_S,
            "bluetoothd did not take org.bluez on the system bus",
        )
        if bluetoothd.poll() is not None:
            raise SetupFailed("bluetoothd exited at start; see bluetoothd.log")
        version = run_bounded([daemon, "--version"], 10, "bluetoothd --version").strip()
        return {"kernel": platform.release(), "bluez": version}

    def stop(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    say(f"{name} ignored SIGTERM for {STOP_TIMEOUT_S:g} s: killed")
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
        self.processes.clear()
        for handle in self.files:
            with contextlib.suppress(OSError):
                handle.close()


def save_dmesg(out: Path) -> None:
    with contextlib.suppress(Exception):
        text = subprocess.run(
            ["dmesg"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        (out / "dmesg.txt").write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartball_sim.machines.vm_guest")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--accel", required=True)
    parser.add_argument("--bluetoothd-debug", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    out: Path = args.out
    state = out / STATE_DIR
    (state / args.marker).touch()
    (state / "exit-code").unlink(missing_ok=True)
    stack = Stack(out, args.bluetoothd_debug)
    started = time.monotonic()
    code = 125
    try:
        try:
            versions = stack.start()
        except SetupFailed as exc:
            say(f"ERROR the Bluetooth stack did not come up: {exc}")
            return code
        setup_s = time.monotonic() - started
        say(
            f"kernel {versions['kernel']}, BlueZ {versions['bluez']} (bluetoothd), "
            f"{args.accel.upper()}; stack up in {setup_s:.1f} s"
        )
        env = dict(os.environ)
        env["SMARTBALL_VM_OUT"] = str(out)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        command_started = time.monotonic()
        try:
            code = subprocess.run(command, env=env, check=False).returncode
        except OSError as exc:
            say(f"ERROR cannot run {command[0]}: {exc}")
            code = 127
        info = {
            **versions,
            "accel": args.accel,
            "stack_setup_s": round(setup_s, 1),
            "command_s": round(time.monotonic() - command_started, 1),
            "command_exit_code": code,
        }
        (state / "guest.json").write_text(json.dumps(info, indent=2) + "\n")
        return code
    finally:
        stack.stop()
        save_dmesg(out)
        (state / "exit-code").write_text(f"{code}\n")


if __name__ == "__main__":
    sys.exit(main())

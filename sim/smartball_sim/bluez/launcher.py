"""Start a private ``dbus-daemon``, the emulated BlueZ on it, and point bleak at them.

:class:`EmulatedBluez` is what the pytest plugin (``--bluez=emulated``), the CLI
(``smartball-ota --bluez=emulated``) and the tests use::

    with EmulatedBluez([emulated_smartball()]) as bluez:
        ...  # bleak's BlueZ backend now talks to bluez.emulator over a real D-Bus

On entry it

* starts ``dbus-daemon --nofork`` with a permissive config on a socket in a temporary
  directory (``--print-address=1``, with its value: without one, the option's optional
  value swallows whatever option follows it);
* runs :class:`~smartball_sim.bluez.emulator.BluezEmulator` on an event loop of its own, in a daemon
  thread of this process, on its own bus connection (bleak's loops, one per test, come and
  go; the emulator's stays);
* sets ``DBUS_SYSTEM_BUS_ADDRESS`` (dbus-fast reads it for ``BusType.SYSTEM``) and puts a
  fake ``bluetoothctl`` printing the emulated BlueZ version first on ``PATH``: bleak runs
  ``bluetoothctl --version`` before its first connect and refuses BlueZ < 5.55, and this
  project's version check reads it too (pitfall 10).

On exit (also after a failure, Ctrl-C, or, through ``atexit``, an interpreter exit without
it) it stops the emulator, kills the daemon by its pid, removes the directory and restores
the environment. Nothing else is touched: no system bus, no ``bluetoothd``, no hardware.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytest_smartball.contract import codec as p
from smartball_sim.device import DEFAULT_ADDRESS, RadioTimings, SimDevice
from smartball_sim.firmware.model import FlashTimings
from smartball_sim.fronts.background_loop import BackgroundLoop

from .emulator import BluezEmulator, EmulatorTiming

#: The version the fake bluetoothctl reports (no known GATT bugs, see pytest_smartball.bluez).
DEFAULT_BLUEZ_VERSION = "5.72"

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


#: Names the test run that starts daemons (``.ci/run`` sets it), so that two runs on one
#: machine check only their own leftovers.
RUN_ID_VARIABLE = "SMARTBALL_RUN_ID"


def _daemon_tag() -> bytes:
    run = os.environ.get(RUN_ID_VARIABLE, "")
    return f"smartball-bluez-{run}-".encode() if run else b"smartball-bluez-"


def leftover_daemons() -> list[int]:
    """Pids of dbus-daemons a launcher of this run (``SMARTBALL_RUN_ID``; without it, of any
    run) started and nobody stopped, read from /proc (no procps needed). CI checks this is
    empty after the runs."""
    tag = _daemon_tag()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"dbus-daemon") and tag in b" ".join(cmdline):
            found.append(int(proc.name))
    return found


def _die_with_parent() -> None:
    """In the daemon's child, before exec: SIGTERM it when the process that started it dies,
    even by SIGKILL (Linux prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def fake_bluetoothctl(version: str = DEFAULT_BLUEZ_VERSION) -> Path:
    """A new temporary folder holding a ``bluetoothctl`` that prints ``version`` (put it
    first on ``PATH``; the caller removes the folder)."""
    folder = Path(tempfile.mkdtemp(prefix="smartball-bluetoothctl-"))
    fake = folder / "bluetoothctl"
    fake.write_text(f"#!/bin/sh\n# emulated BlueZ (sim/bluez)\necho {version}\n", encoding="utf-8")
    fake.chmod(0o755)
    return folder


class DbusDaemonMissing(RuntimeError):
    """No ``dbus-daemon`` on this machine; the message says how to install it."""


#: The real-time device's reset-to-advertising and connect times (short: see below).
EMULATED_BOOT_S = 0.3
EMULATED_CONNECT_S = 0.02


def emulated_smartball(
    name: str = p.DEFAULT_NAME,
    address: str = DEFAULT_ADDRESS,
    *,
    faults: Any = None,
    seed: int = 0,
    **options: Any,
) -> SimDevice:
    """The simulated SmartBall for real-time runs: the same firmware model and faults as
    ``--device=sim``, with short timings (5 ms per erased page, 0.3 s boot, 20 ms connect)
    so a real-time HIL suite stays short."""
    options.setdefault("flash", FlashTimings(erase_page_s=0.005))
    options.setdefault("radio", RadioTimings(boot_s=EMULATED_BOOT_S, connect_s=EMULATED_CONNECT_S))
    return SimDevice(name, address, faults=faults, seed=seed, **options)


class PrivateBus:
    """A ``dbus-daemon`` of our own, on a socket in a temporary directory."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.address: str = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 10.0) -> str:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise DbusDaemonMissing(
                "the emulated BlueZ needs dbus-daemon, which is not installed; install it "
                "(Debian/Ubuntu: apt-get install -y dbus-daemon, or the dbus package)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix=_daemon_tag().decode()))
        config = self.dir / "system-bus.conf"
        socket_path = self.dir / "system_bus_socket"
        config.write_text(_CONFIG.replace("{socket}", str(socket_path)), encoding="utf-8")
        with (self.dir / "dbus-daemon.log").open("wb") as daemon_log:
            self.process = subprocess.Popen(
                [exe, "--nofork", f"--config-file={config}", "--print-address=1"],
                stdout=subprocess.PIPE,
                stderr=daemon_log,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # a plain prctl: safe before exec
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()  # printed once listening
        if not line:
            code = self.process.poll()
            log_text = (self.dir / "dbus-daemon.log").read_text(errors="replace").strip()
            self.stop()
            raise RuntimeError(f"dbus-daemon did not start (exit code {code}): {log_text}")
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.address = line
        return line

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=3)
            if process.stdout is not None:
                process.stdout.close()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class EmulatedBluez(BackgroundLoop):
    """A private D-Bus with the emulated BlueZ serving ``devices``; see the module doc."""

    what = "the emulated BlueZ"

    def __init__(
        self,
        devices: Iterable[SimDevice] | None = None,
        *,
        adapter: str = "hci0",
        bluez_version: str = DEFAULT_BLUEZ_VERSION,
        timing: EmulatorTiming | None = None,
        set_environment: bool = True,
    ) -> None:
        super().__init__()
        self.devices = list(devices) if devices is not None else [emulated_smartball()]
        self.adapter = adapter
        self.bluez_version = bluez_version
        self.timing = timing
        self.set_environment = set_environment
        self.bus = PrivateBus()
        self.emulator: BluezEmulator | None = None
        self._saved_env: dict[str, str | None] = {}
        self._bin: Path | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> EmulatedBluez:
        try:
            address = self.bus.start()
            self._bin = fake_bluetoothctl(self.bluez_version)
            self.emulator = BluezEmulator(
                address, self.devices, adapter=self.adapter, timing=self.timing
            )
            self._start_loop("emulated-bluez", timeout=10)
            atexit.register(self.stop)
            if self.set_environment:
                self._apply_env(self.environment())
        except BaseException:
            self.stop()
            raise
        return self

    def environment(self) -> dict[str, str]:
        """What a process needs to use this BlueZ: the bus, and the fake bluetoothctl."""
        assert self._bin is not None
        return {
            "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address,
            "PATH": f"{self._bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    async def _on_loop_start(self) -> None:
        assert self.emulator is not None
        await self.emulator.start()

    async def _on_loop_stop(self) -> None:
        if self.emulator is not None:
            await self.emulator.stop()

    def stop(self) -> None:
        """Idempotent: emulator, thread, daemon (by pid), temporary files, environment."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self._stop_loop(timeout=10)
        self.bus.stop()
        if self._bin is not None:
            shutil.rmtree(self._bin, ignore_errors=True)
            self._bin = None
        self._restore_env()

    def __enter__(self) -> EmulatedBluez:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def daemon_pid(self) -> int | None:
        return self.bus.pid

    # --- the emulator's loop: run() and call() come from BackgroundLoop -------------------

    @property
    def device(self) -> SimDevice:
        """The first (usually the only) simulated device."""
        return self.devices[0]

    # --- environment -------------------------------------------------------------------

    def _apply_env(self, env: dict[str, str]) -> None:
        for key, value in env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_env(self) -> None:
        saved, self._saved_env = self._saved_env, {}
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

"""A labgrid board farm on loopback: simulated SmartBalls, each behind a labgrid place.

``python -m pytest_smartball.targets.labgrid_loopback [--balls 2] -- COMMAND ...`` is what
``.ci/run``'s labgrid stage uses, and what a developer uses to try the farm without a lab::

    python -m pytest_smartball.targets.labgrid_loopback -- sh -c \\
        'pytest --device=real hil_tests -n 2 --lg-env "$LG_ENV" --lg-coordinator "$LG_COORDINATOR"'

For as long as COMMAND runs it keeps, all on 127.0.0.1 and all its own:

* an emulated bluetoothd on a private ``dbus-daemon`` (:mod:`smartball_sim.bluez`) serving
  one simulated SmartBall per place (COMMAND gets ``DBUS_SYSTEM_BUS_ADDRESS`` and the fake
  ``bluetoothctl``, so ``--device=real`` reaches them through bleak's BlueZ backend);
* a small HTTP power switch in labgrid's ``simplerest`` dialect: ``GET /power/N/0`` cuts
  ball N's power, ``GET /power/N/1`` restores it, ``GET /power/N`` says ``1`` or ``0``;
* a real ``labgrid-coordinator`` (gRPC) on a free port, and a real ``labgrid-exporter``
  exporting one resource group per ball: a ``SmartBallDevice`` (its address, name and the
  adapter that reaches it) and a ``NetworkPowerPort`` (``simplerest``, the switch above);
* one place per ball (``smartball-1``, ``smartball-2``, ...) matching its group, created with
  ``labgrid-client``, and an environment file with one target per place whose
  ``NetworkPowerDriver`` is the power path the power-cut tests take.

COMMAND gets ``LG_ENV`` (that file), ``LG_COORDINATOR`` (``127.0.0.1:PORT``) and
``SMARTBALL_LG_PLACES`` (the place names). When it ends (or fails, or Ctrl-C), the exporter
and the coordinator are stopped by their pids, then the emulator; the exit code is
COMMAND's. The daemons are also started with ``PR_SET_PDEATHSIG``, so even a SIGKILL of this
process takes them along, and ``python -m pytest_smartball.targets.labgrid_loopback check``
lists any that a run of this ``SMARTBALL_RUN_ID`` left behind.

The simulated SmartBall has no powered-off state: cutting the power resets it (the link
drops, its RAM is lost) and restoring the power resets it again, after which it boots and
advertises. A ball left "off" longer than its boot time (0.3 s) therefore advertises again;
the places' power drivers switch back on after 0.1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from smartball_sim.bluez.launcher import (
    RUN_ID_VARIABLE,
    DbusDaemonMissing,
    EmulatedBluez,
    emulated_smartball,
)
from smartball_sim.device import SimDevice

from ..contract import codec as p
from ..image import ImageError, load_image

log = logging.getLogger("pytest_smartball.targets.labgrid_loopback")

#: The simulated balls' addresses: ball N (1-based) is C0:FF:EE:00:01:0N.
ADDRESS_PREFIX = "C0:FF:EE:00:01:"
#: Names of the places and of the exporter's resource groups: smartball-1, smartball-2, ...
PLACE_PREFIX = "smartball-"
#: How long the power driver keeps a ball off in a cycle (labgrid's default is 2 s).
POWER_OFF_S = 0.1
#: Bounds on starting the daemons: a coordinator that does not answer, an exporter whose
#: resources do not show, end the run with a sentence instead of a hang.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
#: Ports tried for the coordinator (another process may take a free port first).
COORDINATOR_ATTEMPTS = 3
#: Every daemon this module starts carries this variable (the run id) in its environment,
#: so ``check`` finds the ones of this run only.
FARM_VARIABLE = "SMARTBALL_LABGRID_FARM"


class FarmUnavailable(RuntimeError):
    """The loopback farm could not start (one sentence: what failed)."""


def ball_address(number: int) -> str:
    return f"{ADDRESS_PREFIX}{number:02X}"


def place_name(number: int) -> str:
    return f"{PLACE_PREFIX}{number}"


# --- the power switch ------------------------------------------------------------------------


class PowerSwitch:
    """A loopback HTTP power switch in labgrid's ``simplerest`` dialect, one port per ball
    (port N is the Nth device, 1-based); switching resets the ball on the emulator's loop."""

    def __init__(self, bluez: EmulatedBluez) -> None:
        self.bluez = bluez
        self.powered = {n: True for n in range(1, len(bluez.devices) + 1)}
        #: What was switched, in order: (port, on), for the tests and the log.
        self.switched: list[tuple[int, bool]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The ``host`` of a ``NetworkPowerPort`` (simplerest fills in index and value)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/power/{{index}}/{{value}}"

    def switch(self, port: int, on: bool) -> None:
        device = self.bluez.devices[port - 1]
        with self._lock:
            self.powered[port] = on
            self.switched.append((port, on))
        log.info("power port %d (%s): %s", port, device.address, "on" if on else "off")
        # Off: the ball loses power mid-whatever (a reset); on: it boots from scratch.
        self.bluez.call(device.reboot)

    def start(self) -> PowerSwitch:
        switch = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = switch.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("power switch: " + format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="smartball-power-switch", daemon=True
        )
        self._thread.start()
        return self

    def answer(self, path: str) -> tuple[int, bytes]:
        """(HTTP status, body) for ``/power/N`` (read) or ``/power/N/0|1`` (switch)."""
        parts = path.strip("/").split("/")
        if len(parts) not in (2, 3) or parts[0] != "power" or not parts[1].isdigit():
            return 404, b"expected /power/PORT or /power/PORT/0|1\n"
        port = int(parts[1])
        if port not in self.powered:
            return 404, f"no power port {port}: ports 1..{len(self.powered)}\n".encode()
        if len(parts) == 3:
            if parts[2] not in ("0", "1"):
                return 400, b"switch with 0 (off) or 1 (on)\n"
            self.switch(port, parts[2] == "1")
        return 200, b"1" if self.powered[port] else b"0"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            self._thread = None


# --- labgrid's daemons -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In a daemon's child, before exec: SIGTERM when the process that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _labgrid_tool(name: str) -> str:
    """A labgrid console script of this interpreter's environment (else from PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FarmUnavailable(
            f"{name} is not installed: install labgrid (pip install 'pytest-smartball[labgrid]')"
        )
    return found


def free_port() -> int:
    """A TCP port nobody listens on at this moment (the OS picks it, so two runs differ)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_id() -> str:
    return os.environ.get(RUN_ID_VARIABLE) or f"pid-{os.getpid()}"


@dataclass(slots=True)
class Daemon:
    """A labgrid daemon this farm started, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)


@dataclass(slots=True)
class LoopbackFarm:
    """The running farm: see the module doc. Use as a context manager (or start/stop)."""

    balls: int = 2
    name: str = p.DEFAULT_NAME
    active_image: bytes | None = None
    adapter: str = "hci0"
    dir: Path | None = None
    bluez: EmulatedBluez | None = None
    power: PowerSwitch | None = None
    coordinator_address: str = ""
    daemons: list[Daemon] = field(default_factory=list)
    env_file: Path | None = None

    @property
    def places(self) -> list[str]:
        return [place_name(n) for n in range(1, self.balls + 1)]

    @property
    def exporter_name(self) -> str:
        return f"smartball-bench-{_run_id()}"

    @property
    def devices(self) -> list[SimDevice]:
        assert self.bluez is not None
        return self.bluez.devices

    def start(self) -> LoopbackFarm:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"smartball-labgrid-{_run_id()}-"))
        options = {} if self.active_image is None else {"active_image": self.active_image}
        devices = [
            emulated_smartball(self.name, ball_address(n), seed=n, **options)
            for n in range(1, self.balls + 1)
        ]
        try:
            self.bluez = EmulatedBluez(devices, adapter=self.adapter, set_environment=False)
            self.bluez.start()
        except (DbusDaemonMissing, OSError, RuntimeError) as exc:
            raise FarmUnavailable(f"cannot start the emulated BlueZ: {exc}") from None
        self.power = PowerSwitch(self.bluez).start()
        self._start_coordinator()
        exporter_yaml = self.dir / "exporter.yaml"
        exporter_yaml.write_text(self.exporter_config(), encoding="utf-8")
        exporter = self._spawn(
            "labgrid-exporter",
            [
                _labgrid_tool("labgrid-exporter"),
                "--coordinator",
                self.coordinator_address,
                "--name",
                self.exporter_name,
                "--hostname",
                "127.0.0.1",
                str(exporter_yaml),
            ],
            cwd=self.dir,
        )
        expected = {f"{self.exporter_name}/{place}/SmartBallDevice" for place in self.places}
        self._wait(
            f"labgrid-exporter's resources on {self.coordinator_address}",
            exporter,
            lambda: expected <= set(self._client("resources").split()),
        )
        for place in self.places:
            self._client("-p", place, "create")
            self._client("-p", place, "add-match", f"{self.exporter_name}/{place}/*")
        self.env_file = self.dir / "env.yaml"
        self.env_file.write_text(self.environment_config(), encoding="utf-8")

    def _start_coordinator(self) -> None:
        """On a free port; again on another if a process took that port before ours bound
        it (the port is free when picked, then released for the coordinator to take)."""
        assert self.dir is not None
        for attempt in range(1, COORDINATOR_ATTEMPTS + 1):
            port = free_port()
            self.coordinator_address = f"127.0.0.1:{port}"
            # The coordinator keeps places.yaml and resources.yaml in its working directory.
            coordinator_dir = self.dir / f"coordinator-{attempt}"
            coordinator_dir.mkdir()
            coordinator = self._spawn(
                "labgrid-coordinator",
                [_labgrid_tool("labgrid-coordinator"), "--listen", self.coordinator_address],
                cwd=coordinator_dir,
            )
            try:
                self._wait(
                    f"labgrid-coordinator on {self.coordinator_address}",
                    coordinator,
                    functools.partial(_listening, port),
                )
                return
            except FarmUnavailable:
                if coordinator.alive() or attempt == COORDINATOR_ATTEMPTS:
                    raise
                log.warning("labgrid-coordinator could not listen on port %d; another port", port)

    def exporter_config(self) -> str:
        """The bench host's exporter configuration: a resource group per ball."""
        assert self.power is not None
        groups = []
        for number, place in enumerate(self.places, start=1):
            groups.append(
                f"{place}:\n"
                f"  SmartBallDevice:\n"
                f"    address: '{ball_address(number)}'\n"
                f"    advertised_name: '{self.name}'\n"
                f"    adapter: '{self.adapter}'\n"
                f"  NetworkPowerPort:\n"
                f"    model: simplerest\n"
                f"    host: '{self.power.url}'\n"
                f"    index: {number}\n"
            )
        return "".join(groups)

    def environment_config(self) -> str:
        """The test run's labgrid environment: a target per place, its drivers bound."""
        # imports: so that labgrid-client and labgrid's own fixtures know the SmartBall classes.
        lines = ["imports:", "  - pytest_smartball.plugin.farm.lab", "targets:"]
        for place in self.places:
            lines += [
                f"  {place}:",
                "    resources:",
                "      RemotePlace:",
                f"        name: {place}",
                "    drivers:",
                "      SmartBallDriver: {}",
                "      NetworkPowerDriver:",
                f"        delay: {POWER_OFF_S}",
            ]
        return "\n".join(lines) + "\n"

    def environment(self) -> dict[str, str]:
        """What COMMAND needs: the emulated BlueZ, the coordinator, the environment file."""
        assert self.bluez is not None and self.env_file is not None
        return {
            **self.bluez.environment(),
            "LG_ENV": str(self.env_file),
            "LG_COORDINATOR": self.coordinator_address,
            "SMARTBALL_LG_PLACES": ",".join(self.places),
        }

    def client(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """``labgrid-client -x COORDINATOR ARGS`` (as another ``user`` if given)."""
        # Not the run's LG_ENV: the client would pick a place from it.
        env = {k: v for k, v in os.environ.items() if k not in ("LG_ENV", "LG_PLACE")}
        if user is not None:
            env["LG_USERNAME"] = user
        return subprocess.run(
            [_labgrid_tool("labgrid-client"), "-x", self.coordinator_address, *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            env=env,
            check=False,
        )

    def _client(self, *args: str) -> str:
        done = self.client(*args)
        if done.returncode != 0:
            raise FarmUnavailable(
                f"labgrid-client {' '.join(args)} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    def _spawn(self, name: str, argv: Sequence[str], *, cwd: Path) -> Daemon:
        assert self.dir is not None
        log_path = self.dir / f"{name}.log"
        env = {**os.environ, FARM_VARIABLE: _run_id(), "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # a plain prctl: safe before exec
            )
        daemon = Daemon(name, process, log_path)
        self.daemons.append(daemon)
        return daemon

    def _wait(self, what: str, daemon: Daemon, ready: Callable[[], bool]) -> None:
        """Until ``ready()``; a daemon that exits or a start beyond START_TIMEOUT_S fails."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not daemon.alive():
                raise FarmUnavailable(
                    f"{daemon.name} exited (code {daemon.process.returncode}) before "
                    f"{what} was ready: {daemon.log_tail()}"
                )
            with contextlib.suppress(FarmUnavailable, subprocess.TimeoutExpired):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise FarmUnavailable(
                    f"{what} was not ready within {START_TIMEOUT_S:.0f} s: {daemon.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Idempotent: exporter, coordinator (by pid), switch, emulator, files."""
        for daemon in reversed(self.daemons):
            with contextlib.suppress(Exception):
                daemon.stop()
        if self.power is not None:
            self.power.stop()
        if self.bluez is not None:
            self.bluez.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def still_running(self) -> list[str]:
        """The daemons of this farm that are still alive (empty after :meth:`stop`)."""
        return [f"{d.name} (pid {d.process.pid})" for d in self.daemons if d.alive()]

    def __enter__(self) -> LoopbackFarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_farm(balls: int = 2, active_image: bytes | None = None) -> Iterator[LoopbackFarm]:
    with LoopbackFarm(balls=balls, active_image=active_image) as farm:
        yield farm


def leftover_daemons() -> list[int]:
    """Pids of processes a farm of this run (``SMARTBALL_RUN_ID``) started that still run,
    read from /proc (their environment carries the run id)."""
    marker = f"{FARM_VARIABLE}={_run_id()}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append(int(proc.name))
    return found


# --- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_smartball.targets.labgrid_loopback",
        description="Run COMMAND against a labgrid farm of simulated SmartBalls on loopback "
        "(coordinator, exporter, one place per ball, power through labgrid); 'check' lists "
        "daemons a farm of this SMARTBALL_RUN_ID left running.",
    )
    parser.add_argument("--balls", type=int, default=2, help="simulated SmartBalls (default 2)")
    parser.add_argument(
        "--baseline-firmware",
        metavar="PATH",
        default=None,
        help="the image the balls run at the start (default: the simulator's)",
    )
    parser.add_argument("command", nargs="*", help="'check', or -- COMMAND ARGS...")
    args = parser.parse_args(argv)
    if args.command == ["check"]:
        pids = leftover_daemons()
        if pids:
            print(f"labgrid farm: daemons still running: pids {pids}", file=sys.stderr)
            return 1
        print("labgrid farm: no coordinator or exporter left running")
        return 0
    if not args.command:
        parser.error("give a COMMAND to run against the farm (after --), or 'check'")
    if args.balls < 1:
        parser.error("--balls: one ball or more")
    active_image = None
    if args.baseline_firmware:
        try:
            active_image = load_image(args.baseline_firmware).data
        except ImageError as exc:
            parser.error(f"--baseline-firmware: {exc}")
    logging.basicConfig(level=logging.WARNING, format="labgrid farm: %(message)s")
    started = time.monotonic()
    farm = LoopbackFarm(balls=args.balls, active_image=active_image)
    try:
        farm.start()
    except FarmUnavailable as exc:
        print(f"labgrid farm: {exc}", file=sys.stderr)
        return 125
    try:
        print(
            f"labgrid farm: coordinator {farm.coordinator_address}, exporter "
            f"{farm.exporter_name}, places {', '.join(farm.places)} (balls "
            f"{', '.join(ball_address(n) for n in range(1, farm.balls + 1))}); "
            f"up in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        env = {**os.environ, **farm.environment()}
        try:
            code = subprocess.run(args.command, env=env, check=False).returncode
        except KeyboardInterrupt:
            code = 130
        assert farm.power is not None
        cuts = sum(1 for _, on in farm.power.switched if not on)
        print(f"labgrid farm: {cuts} power cuts through the places' power drivers", flush=True)
    finally:
        farm.stop()
    left = farm.still_running()
    if left:
        print(f"labgrid farm: still running after the stop: {', '.join(left)}", file=sys.stderr)
        return 1 if code == 0 else code
    return code


if __name__ == "__main__":
    sys.exit(main())

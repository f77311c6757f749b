"""``python -m smartball_sim.machines.vm -- COMMAND``: run COMMAND inside a QEMU VM that boots
Debian's kernel with the Linux Bluetooth stack (``hci_vhci``) and a real ``bluetoothd``.

For a machine without Bluetooth and without ``/dev/vhci`` (a CI container): the VM gives
COMMAND a real kernel Bluetooth subsystem and a real BlueZ, so ``pytest --device=real
--bluez=vhci hil_tests`` exercises bleak's BlueZ backend against the real daemon, with a
simulated SmartBall behind a virtual controller (:mod:`smartball_sim.machines.vhci`).

What it does, in order:

1. checks the tools it needs (``vng`` from virtme-ng, ``qemu-system-x86_64``, a kernel
   image under ``/boot``, ``bluetoothd``, ``btmon``, ``dbus-daemon``, ``busybox``) and says in
   one sentence what is missing (exit code 125);
2. boots the kernel with the host's filesystem as the guest's read-only root (the
   current directory is an overlay: the guest may write to it, the host never sees it),
   and the output folder (``--out``) shared read-write at the same path;
3. KVM or software emulation, decided by trying: with ``--accel auto`` it boots with KVM
   when ``/dev/kvm`` can be opened and falls back to TCG if the guest has not started its
   first program within :data:`KVM_BOOT_TIMEOUT_S` (some ``/dev/kvm`` cannot boot a stock
   kernel: a PVM host's fails at once or hangs without a word). Each try is bounded; a
   guest that does not boot under TCG within :data:`TCG_BOOT_TIMEOUT_S` is an error;
4. inside (:mod:`smartball_sim.machines.vm_guest`): loads ``bluetooth`` and ``hci_vhci``, starts the
   system ``dbus-daemon``, ``btmon`` (HCI trace) and ``bluetoothd``, prints the kernel and
   BlueZ versions, runs COMMAND in the current directory, and stops them again;
5. returns COMMAND's exit code, and leaves in the output folder whatever COMMAND wrote
   there (``$SMARTBALL_VM_OUT`` names it inside the guest; ``--junitxml`` and
   ``--smartball-report`` paths under it come back), plus ``console.log`` (everything the
   VM printed), ``bluetoothd.log``, ``btmon.btsnoop`` (``btmon -r`` reads it),
   ``dmesg.txt``, ``dbus-daemon.log`` and ``vm.json`` (versions, accelerator, boot and
   run times, exit code).

Exit codes: COMMAND's own; 124 when ``--timeout`` ran out (the VM is killed); 125 when
the VM could not be set up or booted (the sentence says why); 130 when interrupted.

Clean-up: QEMU and ``vng`` run in a process group of their own, killed (TERM, then KILL)
whenever the runner ends: COMMAND done, a failure, a timeout, Ctrl-C, SIGTERM or SIGHUP.
Only a SIGKILL of the runner itself can leave a VM behind; ``python -m smartball_sim.machines.vm
check`` lists such orphans (exit code 1) and CI runs it. Two runs at once do not meet:
each has its own VM, its own kernel, D-Bus and bluetoothd, its own output folder (by
default a new one under ``build/vm/``) and its own temporary files.

Why virtme-ng and not a hand-written QEMU command line: booting a distribution kernel
with the host's root filesystem needs an initramfs with the 9p/virtiofs modules of that
very kernel, a guest init that mounts ``/proc``, ``/sys``, ``/dev``, tmpfs overlays for
``/etc``, ``/var`` and ``/tmp``, the requested shared folders, and a channel that carries
the command's output and exit code back. virtme-ng (maintained by the kernel's own
testing community, on PyPI) does exactly that, for any kernel image, in one call; by hand
it would be a few hundred lines of initramfs building and init scripting to keep up with
Debian's kernel packaging.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from .vm_plan import (
    DEFAULT_TIMEOUT_S,
    QEMU,
    STATE_DIR,
    VM_NAME_PREFIX,
    Attempt,
    VmConfig,
    VmError,
    attempts_for,
    booted_marker,
    check_paths,
    default_out_dir,
    find_vng,
    missing_tools,
    newest_kernel,
    vng_command,
)

#: How long QEMU gets to exit after SIGTERM before SIGKILL.
KILL_GRACE_S = 5.0

EXIT_TIMEOUT = 124
EXIT_VM_FAILED = 125
EXIT_INTERRUPTED = 130


def kvm_openable(path: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


# --- the host side --------------------------------------------------------------------------


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C does: through the clean-up."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class _Tee(threading.Thread):
    """Copies the VM's output to our stdout and to console.log as it comes."""

    def __init__(self, source: IO[bytes], log: IO[bytes], sink: IO[bytes]) -> None:
        super().__init__(name="vm-output", daemon=True)
        self.source, self.log, self.sink = source, log, sink

    def run(self) -> None:
        fd = self.source.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            self.log.write(chunk)
            self.log.flush()
            with contextlib.suppress(OSError, ValueError):
                self.sink.write(chunk)
                self.sink.flush()


class VmRun:
    """One VM run: tries, output, clean-up. ``run()`` returns the exit code."""

    def __init__(self, config: VmConfig, say: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.say = say or _say
        self.process: subprocess.Popen[bytes] | None = None
        self.attempts: list[Attempt] = []
        self.started = time.monotonic()

    def run(self) -> int:
        config = self.config
        (config.out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        result_code: int | None = None
        with _signals_raise(), (config.out / "console.log").open("ab") as console:
            try:
                result_code = self._boot_and_run(console)
                return result_code
            except VmError as exc:
                self.say(f"ERROR {exc}")
                result_code = EXIT_VM_FAILED
                return result_code
            except (KeyboardInterrupt, _Interrupted) as exc:
                why = exc.args[0] if isinstance(exc, _Interrupted) else "Ctrl-C"
                self.say(f"interrupted ({why}): the VM and everything in it are stopped")
                result_code = EXIT_INTERRUPTED
                return result_code
            finally:
                self._kill()
                self._write_summary(result_code)

    def _boot_and_run(self, console: IO[bytes]) -> int:
        config = self.config
        deadline = self.started + config.timeout_s
        plan = attempts_for(config.accel, kvm_openable(), config)
        for index, attempt in enumerate(plan):
            self.attempts.append(attempt)
            self.say(
                f"booting {config.kernel.name} with {attempt.accel.value.upper()} "
                f"(bounded: {attempt.boot_timeout_s:g} s)"
            )
            booted = self._start(attempt, index, console)
            if booted:
                break
            self._kill()
            if index + 1 < len(plan):
                self.say(f"{attempt.failure}; trying {plan[index + 1].accel.value.upper()}")
        else:
            last = self.attempts[-1]
            raise VmError(f"the VM did not boot: {last.failure}")
        self.say(
            f"booted with {attempt.accel.value.upper()} in {attempt.booted_after_s:.1f} s; "
            f"running: {shlex.join(config.command)}"
        )
        assert self.process is not None
        remaining = deadline - time.monotonic()
        try:
            code = self.process.wait(timeout=max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            self.say(
                f"ERROR the run did not finish within --timeout {config.timeout_s:g} s; "
                "the VM is killed (its logs so far are in the output folder)"
            )
            return EXIT_TIMEOUT
        guest_code = _read_int(config.out / STATE_DIR / "exit-code")
        if guest_code is None:
            # The guest never got to write it: a kernel panic, or its set-up failed.
            self.say(f"the VM ended without the command's exit code (vng exit code {code})")
            return code if code not in (0, None) else EXIT_VM_FAILED
        return guest_code

    def _start(self, attempt: Attempt, index: int, console: IO[bytes]) -> bool:
        """Start one try; True once the guest runs its first program."""
        config = self.config
        marker = booted_marker(config.out, index)
        marker.unlink(missing_ok=True)
        env = dict(os.environ)
        # vng runs virtme-run from PATH: the venv's bin first.
        env["PATH"] = f"{Path(config.vng).parent}{os.pathsep}{env.get('PATH', '')}"
        started = time.monotonic()
        self.process = subprocess.Popen(
            vng_command(config, attempt, index),
            stdin=subprocess.DEVNULL,
            # Pipes, never a file: QEMU opens the stdout it is given once per virtio
            # console, and on a regular file each would write at its own offset.
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=config.cwd,
            start_new_session=True,  # QEMU joins this group; _kill ends the group
        )
        assert self.process.stdout is not None
        _Tee(self.process.stdout, console, sys.stdout.buffer).start()
        deadline = started + attempt.boot_timeout_s
        while time.monotonic() < deadline:
            if marker.exists():
                attempt.booted_after_s = time.monotonic() - started
                return True
            code = self.process.poll()
            if code is not None:
                attempt.failure = (
                    f"{attempt.accel.value.upper()} could not boot the kernel "
                    f"(vng exited with code {code}; console.log has QEMU's words)"
                )
                return False
            time.sleep(0.1)
        attempt.failure = (
            f"{attempt.accel.value.upper()} did not boot the kernel within "
            f"{attempt.boot_timeout_s:g} s"
        )
        return False

    def _kill(self) -> None:
        """End vng and QEMU (the whole process group), TERM first, then KILL."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None or _group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + KILL_GRACE_S
            while time.monotonic() < deadline and _group_alive(process.pid):
                with contextlib.suppress(ChildProcessError):
                    process.poll()
                time.sleep(0.05)
            if _group_alive(process.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=KILL_GRACE_S)

    def _write_summary(self, code: int | None) -> None:
        config = self.config
        guest = _read_json(config.out / STATE_DIR / "guest.json")
        summary = {
            "command": list(config.command),
            "kernel_image": str(config.kernel),
            "attempts": [
                {
                    "accel": a.accel.value,
                    "boot_timeout_s": a.boot_timeout_s,
                    "booted_after_s": a.booted_after_s,
                    "failure": a.failure,
                }
                for a in self.attempts
            ],
            "qemu": _first_line([QEMU, "--version"]),
            "exit_code": code,
            "wall_s": round(time.monotonic() - self.started, 1),
            **guest,
        }
        with contextlib.suppress(OSError):
            (config.out / "vm.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.say(f"wall time {summary['wall_s']} s; logs and trace in {config.out}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _first_line(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.stdout else None


def _say(line: str) -> None:
    print(f"smartball vm: {line}", flush=True)


# --- orphans ----------------------------------------------------------------------------------


def orphans(proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """QEMUs started by a runner that no longer exists: (pid, name)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(QEMU.encode()):
            continue
        args = [a.decode(errors="replace") for a in argv]
        for flag, value in itertools.pairwise(args):
            if flag == "-name" and value.startswith(VM_NAME_PREFIX):
                owner = value.removeprefix(VM_NAME_PREFIX)
                if not (owner.isdigit() and Path(proc, owner).exists()):
                    found.append((int(entry.name), value))
    return found


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m smartball_sim.machines.vm",
        description="Run COMMAND in a QEMU VM with Debian's kernel, hci_vhci and a real "
        "bluetoothd; bring its logs, HCI trace and results back.",
        epilog="'python -m smartball_sim.machines.vm check' lists VMs whose runner died (exit 1).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the results, logs and trace (default: a new one under build/vm/)",
    )
    parser.add_argument(
        "--kernel", type=Path, default=None, help="kernel image (default: newest /boot/vmlinuz-*)"
    )
    parser.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto: KVM if it really boots the kernel (bounded try), else software emulation",
    )
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", default="2G")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="bound on the whole run, boot included (default %(default)g)",
    )
    parser.add_argument(
        "--bluetoothd-debug", action="store_true", help="bluetoothd -d (a much longer log)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error(
            "no command: python -m smartball_sim.machines.vm [options] -- COMMAND [ARGS...]"
        )
    return args


def config_from_args(args: argparse.Namespace) -> VmConfig:
    """Check the machine and build the run's configuration (VmError: one sentence)."""
    python = sys.executable
    vng = find_vng(python)
    if vng is None:
        raise VmError(
            "virtme-ng is not installed (no vng next to this Python nor on PATH); "
            "install it with pip install virtme-ng"
        )
    packages = missing_tools()
    if packages:
        raise VmError(
            f"the VM needs tools this machine lacks; install them with apt-get install -y "
            f"{' '.join(packages)}"
        )
    kernel = args.kernel or newest_kernel()
    if kernel is None:
        raise VmError(
            "no kernel image in /boot; install one with apt-get install -y linux-image-amd64 "
            "(or pass --kernel PATH)"
        )
    if not os.access(kernel, os.R_OK):
        raise VmError(f"cannot read the kernel image {kernel}; run as root or pass --kernel")
    out = (args.out or default_out_dir(Path("build/vm"))).resolve()
    config = VmConfig(
        command=tuple(args.command),
        out=out,
        kernel=kernel,
        cwd=Path.cwd().resolve(),
        vng=vng,
        python=python,
        accel=args.accel,
        cpus=args.cpus,
        memory=args.memory,
        timeout_s=args.timeout,
        bluetoothd_debug=args.bluetoothd_debug,
    )
    check_paths(config)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["check"]:
        left = orphans()
        for pid, name in left:
            print(f"smartball vm: QEMU {name} (pid {pid}) outlived its runner", file=sys.stderr)
        if not left:
            print("smartball vm: no VM left running")
        return 1 if left else 0
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except VmError as exc:
        _say(f"ERROR {exc}")
        return EXIT_VM_FAILED
    return VmRun(config).run()


if __name__ == "__main__":
    sys.exit(main())

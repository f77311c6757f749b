"""What the VM runner (:mod:`.vm`) decides before anything starts, as pure functions: its
settings (``VmConfig``), which accelerators to try (``attempts_for``), the ``vng`` command line
of each try, where the guest leaves its markers, which kernel and which missing tools. The
guest (:mod:`.vm_guest`) reads its paths from here too, without the host side's machinery."""

from __future__ import annotations

import enum
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: A kernel under KVM reaches its first program in 1-5 s; a PVM host's /dev/kvm fails at
#: once (qemu: "failed to set MSR") or hangs after "Probing EDD" without a word.
KVM_BOOT_TIMEOUT_S = 20.0
#: Software emulation (TCG) boots Debian's kernel in 15-20 s on a 2-core machine.
TCG_BOOT_TIMEOUT_S = 180.0
#: The whole run (boot + COMMAND) unless --timeout says otherwise.
DEFAULT_TIMEOUT_S = 1800.0

#: ``-name`` of every QEMU this runner starts (with the runner's pid): ``check`` finds
#: the orphans by it.
VM_NAME_PREFIX = "smartball-vm-"
#: The folder inside ``--out`` where the guest leaves its markers.
STATE_DIR = ".vm"

QEMU = "qemu-system-x86_64"
#: Debian packages that provide each tool (the sentence for a missing one names them).
TOOLS = {
    QEMU: "qemu-system-x86",
    "busybox": "busybox-static",
    "dbus-daemon": "dbus",
    "btmon": "bluez",
    "modprobe": "kmod",
}
BLUETOOTHD_PATHS = ("/usr/libexec/bluetooth/bluetoothd", "/usr/lib/bluetooth/bluetoothd")


class Accel(enum.Enum):
    KVM = "kvm"
    TCG = "tcg"


class VmError(Exception):
    """The VM could not be set up or booted; the message is one sentence."""


@dataclass(frozen=True, slots=True)
class VmConfig:
    command: tuple[str, ...]
    out: Path
    kernel: Path
    cwd: Path
    vng: str
    python: str
    accel: str = "auto"  # auto, kvm or tcg
    cpus: int = 2
    memory: str = "2G"
    timeout_s: float = DEFAULT_TIMEOUT_S
    kvm_boot_timeout_s: float = KVM_BOOT_TIMEOUT_S
    tcg_boot_timeout_s: float = TCG_BOOT_TIMEOUT_S
    bluetoothd_debug: bool = False
    name: str = field(default_factory=lambda: f"{VM_NAME_PREFIX}{os.getpid()}")


@dataclass(slots=True)
class Attempt:
    accel: Accel
    boot_timeout_s: float
    booted_after_s: float | None = None
    failure: str | None = None


def attempts_for(accel: str, kvm_openable: bool, config: VmConfig) -> list[Attempt]:
    """Which accelerators to try, in order, each with its boot bound."""
    kvm = Attempt(Accel.KVM, config.kvm_boot_timeout_s)
    tcg = Attempt(Accel.TCG, config.tcg_boot_timeout_s)
    if accel == "tcg":
        return [tcg]
    if accel == "kvm":
        # Asked for explicitly: one try, bounded like a software boot (no fallback).
        return [Attempt(Accel.KVM, config.tcg_boot_timeout_s)]
    return [kvm, tcg] if kvm_openable else [tcg]


def vng_command(config: VmConfig, attempt: Attempt, index: int) -> list[str]:
    """The ``vng`` invocation for one try: the guest runs :mod:`smartball_sim.machines.vm_guest`."""
    guest = [
        config.python,
        "-m",
        "smartball_sim.machines.vm_guest",
        "--out",
        str(config.out),
        "--marker",
        booted_marker(config.out, index).name,
        "--accel",
        attempt.accel.value,
    ]
    if config.bluetoothd_debug:
        guest.append("--bluetoothd-debug")
    guest += ["--", *config.command]
    cmd = [
        config.vng,
        "--run",
        str(config.kernel),
        "--name",
        config.name,
        "--cpus",
        str(config.cpus),
        "--memory",
        config.memory,
        "--user",
        "root",
        # The current directory (usually the repository) is writable in the guest and
        # unchanged on the host: __pycache__, .hypothesis and the like vanish with the VM.
        "--overlay-rwdir",
        str(config.cwd),
        "--rwdir",
        str(config.out),
        "--cwd",
        str(config.cwd),
    ]
    if attempt.accel is Accel.TCG:
        cmd.append("--disable-kvm")
    cmd += ["--exec", shlex.join(guest)]
    return cmd


def booted_marker(out: Path, index: int) -> Path:
    """The file the guest creates first thing (one per try, so a late try cannot fool
    the next one)."""
    return out / STATE_DIR / f"booted-{index}"


def default_out_dir(base: Path, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return base / f"{stamp}-{os.getpid()}"


def newest_kernel(boot: Path = Path("/boot")) -> Path | None:
    """The newest ``vmlinuz-*`` under /boot (Debian's linux-image-amd64 puts it there)."""

    def version_key(path: Path) -> list[int | str]:
        release = path.name.removeprefix("vmlinuz-")
        return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", release)]

    found = [p for p in boot.glob("vmlinuz-*") if p.is_file()]
    return max(found, key=version_key) if found else None


def missing_tools(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """The Debian packages to install for the tools this machine lacks."""
    packages = [pkg for tool, pkg in TOOLS.items() if which(tool) is None]
    if not any(Path(p).exists() for p in BLUETOOTHD_PATHS) and "bluez" not in packages:
        packages.append("bluez")
    return sorted(set(packages))


def find_vng(python: str) -> str | None:
    """``vng`` next to this interpreter (the venv's bin), else on PATH. virtme-ng's ``vng``
    calls ``virtme-run``, so that must be on PATH too (:func:`run` puts the venv first)."""
    beside = Path(python).parent / "vng"
    if beside.exists():
        return str(beside)
    return shutil.which("vng")


def check_paths(config: VmConfig) -> None:
    """vng's --rwdir/--overlay-rwdir take ``guest=host``: a path with '=' or ',' or
    blanks would be misread."""
    for what, path in (("--out", config.out), ("the current directory", config.cwd)):
        if re.search(r"[=,\s]", str(path)):
            raise VmError(
                f"{what} {path} contains '=', ',' or a blank, which virtme-ng cannot share "
                "with the VM; use a plain path"
            )

"""The VM runner's host side (smartball_sim.machines.vm) without a VM: a stand-in ``vng`` plays the
guest (it makes the boot marker and runs COMMAND on this machine) or fails the way a
KVM that cannot boot the kernel fails. The real VM runs in .ci/run's VM stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smartball_sim.machines import vm, vm_plan

#: The stand-in for virtme-ng's ``vng``. FAKE_VNG_KVM: "fail" (exit 255 at once, like
#: QEMU on a PVM host), "hang" (never boots), "boot". With --disable-kvm it always boots.
#: It starts a child that stands for QEMU (same process group), as vng does.
FAKE_VNG = textwrap.dedent(
    """\
    #!{python}
    import os, shlex, subprocess, sys, time
    args = sys.argv[1:]
    guest = shlex.split(args[args.index("--exec") + 1])
    tcg = "--disable-kvm" in args
    mode = os.environ.get("FAKE_VNG_KVM", "fail")
    qemu = subprocess.Popen(["sleep", "600"])  # stands for QEMU: killed with the group
    with open(os.environ["FAKE_VNG_LOG"], "a") as log:
        log.write(("tcg" if tcg else "kvm") + " " + str(qemu.pid) + "\\n")
    if not tcg and mode == "fail":
        print("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69", flush=True)
        sys.exit(255)
    if not tcg and mode == "hang":
        time.sleep(600)
    out = guest[guest.index("--out") + 1]
    marker = guest[guest.index("--marker") + 1]
    command = guest[guest.index("--") + 1:]
    open(os.path.join(out, ".vm", marker), "w").close()
    env = dict(os.environ, SMARTBALL_VM_OUT=out)
    code = subprocess.run(command, env=env).returncode
    open(os.path.join(out, ".vm", "exit-code"), "w").write(str(code))
    sys.exit(code)
    """
)


@pytest.fixture
def fake_vng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bin" / "vng"
    path.parent.mkdir()
    path.write_text(FAKE_VNG.replace("{python}", sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_VNG_LOG", str(tmp_path / "vng.log"))
    return path


def config(tmp_path: Path, vng: Path, *command: str, **kw: object) -> vm_plan.VmConfig:
    options: dict[str, object] = {
        "command": command,
        "out": tmp_path / "out",
        "kernel": Path("/boot/vmlinuz-test"),
        "cwd": tmp_path,
        "vng": str(vng),
        "python": sys.executable,
        "kvm_boot_timeout_s": 3.0,
        "tcg_boot_timeout_s": 10.0,
    }
    options.update(kw)
    return vm_plan.VmConfig(**options)  # type: ignore[arg-type]


def tries(tmp_path: Path) -> list[str]:
    return [line.split()[0] for line in (tmp_path / "vng.log").read_text().splitlines()]


def group_pids(tmp_path: Path) -> list[int]:
    return [int(line.split()[1]) for line in (tmp_path / "vng.log").read_text().splitlines()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours is dead for this purpose.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def run(
    cfg: vm_plan.VmConfig, monkeypatch: pytest.MonkeyPatch, *, kvm: bool
) -> tuple[int, list[str]]:
    said: list[str] = []
    monkeypatch.setattr(vm, "kvm_openable", lambda path="/dev/kvm": kvm)
    code = vm.VmRun(cfg, say=said.append).run()
    return code, said


# --- pure decisions ----------------------------------------------------------------------


def test_auto_tries_kvm_then_tcg_each_bounded(tmp_path: Path) -> None:
    cfg = config(tmp_path, Path("vng"), "true")
    plan = vm_plan.attempts_for("auto", True, cfg)
    assert [(a.accel, a.boot_timeout_s) for a in plan] == [
        (vm_plan.Accel.KVM, 3.0),
        (vm_plan.Accel.TCG, 10.0),
    ]
    assert [a.accel for a in vm_plan.attempts_for("auto", False, cfg)] == [vm_plan.Accel.TCG]
    assert [a.accel for a in vm_plan.attempts_for("tcg", True, cfg)] == [vm_plan.Accel.TCG]
    assert [a.accel for a in vm_plan.attempts_for("kvm", False, cfg)] == [vm_plan.Accel.KVM]


def test_vng_command_shares_the_output_folder_and_runs_the_guest_module(tmp_path: Path) -> None:
    cfg = config(tmp_path, Path("/venv/bin/vng"), "pytest", "-k", "a b")
    tcg = vm_plan.vng_command(cfg, vm_plan.Attempt(vm_plan.Accel.TCG, 10), 1)
    kvm = vm_plan.vng_command(cfg, vm_plan.Attempt(vm_plan.Accel.KVM, 3), 0)
    assert "--disable-kvm" in tcg and "--disable-kvm" not in kvm
    assert tcg[tcg.index("--rwdir") + 1] == str(cfg.out)
    assert tcg[tcg.index("--overlay-rwdir") + 1] == str(tmp_path)
    assert tcg[tcg.index("--name") + 1].startswith(vm_plan.VM_NAME_PREFIX)
    guest = tcg[tcg.index("--exec") + 1]
    assert "smartball_sim.machines.vm_guest" in guest and "--marker booted-1" in guest
    assert guest.endswith("-- pytest -k 'a b'")


def test_missing_tools_name_the_debian_packages() -> None:
    assert vm_plan.missing_tools(lambda tool: None) == [
        "bluez",
        "busybox-static",
        "dbus",
        "kmod",
        "qemu-system-x86",
    ]
    assert vm_plan.missing_tools(lambda tool: f"/usr/bin/{tool}") in ([], ["bluez"])


def test_newest_kernel_compares_versions_not_strings(tmp_path: Path) -> None:
    for release in ("6.1.0-9-amd64", "6.1.0-57-amd64", "5.10.0-30-amd64"):
        (tmp_path / f"vmlinuz-{release}").write_bytes(b"")
    assert vm_plan.newest_kernel(tmp_path) == tmp_path / "vmlinuz-6.1.0-57-amd64"
    assert vm_plan.newest_kernel(tmp_path / "none") is None


def test_a_path_vng_cannot_share_is_refused_in_one_sentence(tmp_path: Path) -> None:
    cfg = config(tmp_path, Path("vng"), "true", out=tmp_path / "a=b")
    with pytest.raises(vm_plan.VmError, match="cannot share"):
        vm_plan.check_paths(cfg)


def test_without_a_command_the_usage_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        vm.parse_args(["--accel", "tcg"])
    assert exc.value.code == 2
    assert "no command" in capsys.readouterr().err


# --- runs with the stand-in vng ----------------------------------------------------------


def test_kvm_that_cannot_boot_falls_back_to_tcg_and_the_exit_code_comes_back(
    tmp_path: Path, fake_vng: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(
        tmp_path, fake_vng, "sh", "-c", 'echo result > "$SMARTBALL_VM_OUT/junit.xml"; exit 3'
    )
    code, said = run(cfg, monkeypatch, kvm=True)
    assert code == 3
    assert tries(tmp_path) == ["kvm", "tcg"]
    assert any("KVM could not boot" in line and "trying TCG" in line for line in said), said
    assert (cfg.out / "junit.xml").read_text() == "result\n"
    console = (cfg.out / "console.log").read_text()
    assert "failed to set MSR" in console  # QEMU's words are kept
    summary = json.loads((cfg.out / "vm.json").read_text())
    assert [a["accel"] for a in summary["attempts"]] == ["kvm", "tcg"]
    assert summary["attempts"][1]["booted_after_s"] is not None
    assert summary["exit_code"] == 3
    assert not any(alive(pid) for pid in group_pids(tmp_path))


def test_kvm_that_hangs_is_given_up_after_its_bound(
    tmp_path: Path, fake_vng: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VNG_KVM", "hang")
    cfg = config(tmp_path, fake_vng, "true", kvm_boot_timeout_s=1.0)
    started = time.monotonic()
    code, said = run(cfg, monkeypatch, kvm=True)
    assert code == 0
    assert tries(tmp_path) == ["kvm", "tcg"]
    assert any("did not boot the kernel within 1 s" in line for line in said), said
    assert time.monotonic() - started < 1.0 + vm.KILL_GRACE_S + 8
    assert not any(alive(pid) for pid in group_pids(tmp_path))


def test_without_usable_kvm_only_tcg_is_tried(
    tmp_path: Path, fake_vng: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _ = run(config(tmp_path, fake_vng, "true"), monkeypatch, kvm=False)
    assert code == 0 and tries(tmp_path) == ["tcg"]


def test_a_run_over_its_timeout_is_killed_with_124(
    tmp_path: Path, fake_vng: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path, fake_vng, "sleep", "600", timeout_s=2.0)
    code, said = run(cfg, monkeypatch, kvm=False)
    assert code == vm.EXIT_TIMEOUT
    assert any("--timeout 2 s" in line for line in said), said
    assert not any(alive(pid) for pid in group_pids(tmp_path))


def start_runner(tmp_path: Path, fake_vng: Path, out: Path, *command: str) -> subprocess.Popen[str]:
    """A runner in a process of its own (signals go to it, not to pytest)."""
    code = (
        "import sys; from pathlib import Path; from smartball_sim.machines import vm, vm_plan\n"
        "vm.kvm_openable = lambda path='/dev/kvm': False\n"
        f"cfg = vm_plan.VmConfig(command={command!r}, out=Path({str(out)!r}), "
        f"kernel=Path('/boot/k'), cwd=Path({str(tmp_path)!r}), vng={str(fake_vng)!r}, "
        "python=sys.executable)\n"
        "sys.exit(vm.VmRun(cfg).run())\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_runs_at_once_keep_their_own_output(tmp_path: Path, fake_vng: Path) -> None:
    script = 'sleep 1; echo "$SMARTBALL_VM_OUT" > "$SMARTBALL_VM_OUT/who"'
    runners = [
        start_runner(tmp_path, fake_vng, tmp_path / name, "sh", "-c", script) for name in "ab"
    ]
    assert [r.wait(timeout=60) for r in runners] == [0, 0]
    for runner in runners:
        runner.communicate()
    for name in "ab":
        assert (tmp_path / name / "who").read_text().strip() == str(tmp_path / name)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_the_vm_and_every_process_it_started(
    tmp_path: Path, fake_vng: Path, signum: int
) -> None:
    out = tmp_path / "out"
    runner = start_runner(tmp_path, fake_vng, out, "sleep", "600")
    deadline = time.monotonic() + 30
    while not (out / ".vm" / "booted-0").exists():
        assert time.monotonic() < deadline, "the stand-in VM never booted"
        time.sleep(0.05)
    runner.send_signal(signum)
    output, _ = runner.communicate(timeout=30)
    assert runner.returncode == vm.EXIT_INTERRUPTED, output
    assert "interrupted" in output
    pids = group_pids(tmp_path)
    assert pids and not any(alive(pid) for pid in pids), "the QEMU stand-in outlived the run"


def test_check_lists_vms_whose_runner_is_gone(tmp_path: Path) -> None:
    proc = tmp_path / "proc"

    def fake(pid: int, argv: list[str]) -> None:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv))

    fake(100, ["/usr/bin/qemu-system-x86_64", "-name", "smartball-vm-999"])  # runner gone
    fake(101, ["/usr/bin/qemu-system-x86_64", "-name", "smartball-vm-102"])  # runner alive
    fake(102, ["python", "-m", "smartball_sim.machines.vm"])
    fake(103, ["/usr/bin/qemu-system-x86_64", "-name", "somebody-else"])
    assert vm.orphans(proc) == [(100, "smartball-vm-999")]

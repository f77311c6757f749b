"""A simulated SmartBall that outlives the host: ``python -m smartball_sim.bluez serve`` keeps it
(behind the emulated bluetoothd, in real time) while ``smartball-ota --bluez=emulated --bus``
processes come and go. The field's most common recovery, shown end to end: the CLI is killed
(SIGINT, SIGKILL) during the erase, during the transfer and after FINISH, and run again.

Every kill waits for the CLI's own progress output to reach the phase (no sleeps), and every
wait has a generous timeout."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_smartball.cli.errors import EXIT_INTERRUPTED, interrupted_sentence
from pytest_smartball.ota import OtaSettings
from smartball_sim.bluez.launcher import leftover_daemons
from smartball_sim.bluez.serve import ADDRESS_PREFIX
from smartball_sim.make_image import make_image

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None,
    reason="needs dbus-daemon (apt-get install -y dbus-daemon); .ci/run installs it",
)

#: 128 KiB: at the emulated link's ~57 kB/s the transfer lasts about 2 s.
IMAGE_SIZE = 131_072
#: What one resume may re-send at most: one window of chunks (the engine's defaults).
CHUNK, WINDOW = 232, 16
FAST = ["--settle", "0.05", "--stabilise", "0.05", "--scan-timeout", "10"]
#: Real time on a shared machine: generous, never part of an assertion about speed.
WAIT_S = 60.0

# Each kill lands in its phase by construction: the server's device holds the first CLI in
# the phase for seconds after the line the test waits for (HELD_S: a signal sent on a loaded
# machine arrives within that, where the phase's own length, ~1.7 s, left it to luck), and
# the test checks afterwards, from the device's state, that the kill did land in the phase.
#: How long the erase, and the silence after the reset into the new image, are held.
HOLD_S = 10.0
#: Mid-transfer: once the device holds STALL_AT bytes, the next two ACKs are lost, so the
#: host stalls (the link up, a window of DATA unacknowledged, the device's offset fixed) for
#: its ACK timeout, 4.5 s, before it asks STATUS. STALL_AT is just past the 25 % progress
#: line (printed at the first ACK at or past 32,768 bytes, 33,408), the line the kill is
#: sent at: at most one window is sent between that line and the stall.
STALL_AT = 34_000
STALL_FAULTS = ",".join([f"lose:MSG_OTA_ACK@offset:{STALL_AT}"] * 2)
#: The device's offset the held transfer cannot pass before the host asks STATUS.
STALL_HIGH = STALL_AT + WINDOW * CHUNK
#: How long the first CLI is held in each phase after the line the kill is sent at, at least.
HELD_S = {
    "mid-erase": HOLD_S * 0.9,  # all but the first page's share of the erase
    "mid-transfer": OtaSettings().ack_timeout_s,
    "after-finish": HOLD_S,
}
#: What the server's device is told, per phase: mid-erase, the whole erase takes HOLD_S (a
#: page every ~0.3 s; the kill is sent at the first page's line); mid-transfer, the ACK
#: stall above; after FINISH, the reset into the new image keeps the device silent for
#: HOLD_S, so the first CLI is still waiting to confirm the switch when the kill arrives.
SERVER_ARGS = {
    "mid-erase": ["--erase-time", str(HOLD_S)],
    "mid-transfer": ["--faults", STALL_FAULTS],
    "after-finish": ["--boot-time", str(HOLD_S)],
}
#: After FINISH the rerun looks for the device for longer than the silence after its reset.
RERUN_ARGS = {"after-finish": ["--scan-timeout", str(3 * HOLD_S)]}


@dataclass
class Server:
    process: subprocess.Popen[str]
    bus: str


def _read_lines(stream: object, lines: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line.rstrip("\n"))
    lines.put(None)


@contextmanager
def running_server(*options: str) -> Iterator[Server]:
    """The standalone server with ``options``, stopped (and checked gone) afterwards. Its
    stderr goes to a file: a pipe nobody reads while it serves could fill and block it."""
    errors = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "smartball_sim.bluez", "serve", "--lifetime", "300", *options],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        first = lines.get(timeout=WAIT_S)
        assert first is not None and first.startswith(ADDRESS_PREFIX), first
        yield Server(process, first.removeprefix(ADDRESS_PREFIX))
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    errors.seek(0)
    assert process.returncode == 0, errors.read()
    errors.close()
    assert not [pid for pid in leftover_daemons() if _child_of(pid, process.pid)]


def _child_of(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent


def _cli(bus: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest_smartball.cli", *args, "--bluez=emulated", "--bus", bus]


@dataclass
class Running:
    process: subprocess.Popen[str]
    lines: queue.Queue[str | None]

    def rest_of_stderr(self) -> str:
        """What it writes on stderr until it ends (call after it ended)."""
        got: list[str] = []
        while (line := self.lines.get(timeout=WAIT_S)) is not None:
            got.append(line)
        return "\n".join(got)


def run_until(argv: list[str], seen: Callable[[str], bool]) -> tuple[Running, str]:
    """Start the CLI and return once a line of its stderr satisfies ``seen`` (the caller
    ends it); if none does within WAIT_S, or it ends first, it is killed here."""
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stderr, lines), daemon=True).start()
    deadline = time.monotonic() + WAIT_S
    got: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            process.kill()
            process.wait(timeout=WAIT_S)
            why = "ended" if process.returncode != -signal.SIGKILL else f"ran {WAIT_S:g} s"
            raise AssertionError(f"the CLI {why} before the phase:\n" + "\n".join(got))
        got.append(line)
        if seen(line):
            return Running(process, lines), "\n".join(got)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DBUS_SYSTEM_BUS_ADDRESS", None)  # --bus names the bus
    return env


ERASING = re.compile(r"^erase: \d+/\d+ bytes")
TRANSFERRING = re.compile(r"^transfer: \d+/\d+ bytes \(2\d%\)")
FINISHED = re.compile(r"pytest_smartball\.ota: done ")  # FINISH sent, DONE received

PHASES = {"mid-erase": ERASING, "mid-transfer": TRANSFERRING, "after-finish": FINISHED}


def flash_json(bus: str, image: Path, *extra: str) -> dict[str, object]:
    done = subprocess.run(
        _cli(bus, "flash", str(image), "--json", "-v", *FAST, *extra),
        capture_output=True,
        text=True,
        timeout=WAIT_S * 2,
        env=_env(),
    )
    result: dict[str, object] = json.loads(done.stdout)
    result["stderr"] = done.stderr
    return result


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_rerun_after_the_host_died_resumes_where_the_device_stopped(
    tmp_path: Path, phase: str, how: signal.Signals
) -> None:
    image = tmp_path / "resume.bin"
    image.write_bytes(make_image(IMAGE_SIZE, 7))
    with running_server(*SERVER_ARGS[phase]) as server:
        first, output = run_until(
            _cli(server.bus, "flash", str(image), "-v", *FAST),
            lambda line: bool(PHASES[phase].search(line)),
        )
        try:
            first.process.send_signal(how)
            first.process.wait(timeout=WAIT_S)
        finally:
            if first.process.poll() is None:  # it ignored the signal: the test fails below
                first.process.kill()
                first.process.wait(timeout=WAIT_S)
        err = first.rest_of_stderr()
        rerun = flash_json(server.bus, image, *RERUN_ARGS.get(phase, []))
    late = f"the {how.name} did not land {phase}: the host was held there {HELD_S[phase]:g} s"
    if how is signal.SIGINT:
        assert first.process.returncode != 0, f"{late} (it ended with success)\n{output}{err}"
        assert first.process.returncode == EXIT_INTERRUPTED, output + err
        asked = phase == "after-finish"
        # The device lives in the server: the sentence may promise what the rerun shows.
        assert interrupted_sentence(simulated=False, switch_asked=asked) in err, err
    else:
        assert first.process.returncode != 0, f"{late} (it ended with success)\n{output}{err}"
        assert first.process.returncode == -signal.SIGKILL
    assert rerun["ok"] is True and rerun["exit_code"] == 0, (rerun["error"], rerun["stderr"])
    assert rerun["restarts"] == 0, rerun  # never erased and sent again from the start
    resent = rerun["bytes_resent"]
    assert isinstance(resent, int)
    events = rerun["events"]
    assert isinstance(events, list)
    status = next(e["detail"] for e in events if e["kind"] == "status")
    if phase == "after-finish":
        # The device had switched to the image before the host died: it holds no session to
        # resume, says so in its STATUS, and the rerun says why it sends the image once more
        # (the engine does not skip an update whose image already runs).
        assert "no/another image's session" in status, events
        warning = next(e["detail"] for e in events if e["kind"] == "warning")
        assert "already runs this image" in warning and "no session to resume" in warning
        assert rerun["bytes_sent"] == IMAGE_SIZE and rerun["resumes"] == 0, rerun
    elif phase == "mid-erase":
        # The device goes on erasing for this image's session (and may have finished by the
        # time the rerun asks): the rerun waits for its READY or resumes at offset 0, and
        # never aborts and erases again.
        assert "this image's session" in status, events
        assert "offset 0," in status, f"{late}: the device had DATA already ({status})"
        assert "restart" not in [e["kind"] for e in events], events
        assert rerun["bytes_sent"] == IMAGE_SIZE + resent, rerun
    else:
        resume = next((e for e in events if e["kind"] == "resume"), None)
        assert resume is not None, f"the rerun did not resume the device's session: {events}"
        offset = int(re.search(r"at offset (\d+)", resume["detail"]).group(1))  # type: ignore[union-attr]
        assert 0 < offset < IMAGE_SIZE and rerun["resumes"] == 1, resume
        # In the stall: the kill arrived before the host's ACK timeout let it go on.
        assert offset <= STALL_HIGH, f"{late}: the device was at offset {offset}"
        assert rerun["bytes_sent"] == IMAGE_SIZE - offset + resent, rerun
    assert resent <= WINDOW * CHUNK, rerun  # at most one window sent again
    if how is signal.SIGKILL and phase != "after-finish":
        # Killed outright, the host never hung up, and bluetoothd (as BlueZ does, bluez#89)
        # keeps the link of a client that left the bus: the device stays connected and does
        # not advertise. The rerun finds it through BlueZ's connection, not a scan.
        assert "BlueZ holds it connected" in str(rerun["stderr"]), rerun["stderr"]


# --- the server itself: it never outlives what started it -----------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _child_of(int(proc.name), pid):
            found.append(int(proc.name))
    return found


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie: ended, not yet reaped
            return True
        time.sleep(0.05)
    return False


PARENT = """
import subprocess, sys, time
server = subprocess.Popen(
    [sys.executable, "-m", "smartball_sim.bluez", "serve", "--lifetime", "120"],
    stdout=subprocess.PIPE, text=True,
)
print(server.pid, server.stdout.readline().strip(), flush=True)
time.sleep(120)
"""


def test_the_server_stops_when_the_process_that_started_it_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert parent.stdout is not None
        pid_text, announced = parent.stdout.readline().split(" ", 1)
        server_pid = int(pid_text)
        assert announced.startswith(ADDRESS_PREFIX), announced
        daemons = _children(server_pid)
        assert daemons, "the server runs no dbus-daemon"
        parent.kill()  # SIGKILL: nothing of the parent's own runs any more
        parent.wait(timeout=WAIT_S)
        assert _gone(server_pid, WAIT_S), "the server outlived its parent"
        assert all(_gone(pid, WAIT_S) for pid in daemons), "its dbus-daemon outlived it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=WAIT_S)


def test_the_server_stops_when_its_lifetime_runs_out(tmp_path: Path) -> None:
    address_file = tmp_path / "bus.txt"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartball_sim.bluez",
            "serve",
            "--lifetime",
            "0.5",
            "--address-file",
            str(address_file),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(ADDRESS_PREFIX)
    assert "its lifetime of 0.5 s ran out" in done.stderr
    assert not address_file.exists()  # an address nobody serves any more is not left behind


def test_a_bad_fault_spec_is_one_sentence_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "smartball_sim.bluez", "serve", "--faults", "drop@nowhere"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("emulated BlueZ: bad --faults:"), done.stderr
    assert "Traceback" not in done.stderr

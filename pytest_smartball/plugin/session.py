"""What the plugin knows for the whole run, in this process: the devices under test, the
bench checks for ``--device=real`` (preflight, one device per pytest-xdist worker) and the
report header.

On real hardware :func:`pytest_sessionstart` runs preflight (:mod:`pytest_smartball.preflight`)
before any test: BlueZ, the adapter, its version, the devices, the images. A failure is one
sentence and exit code 4. Under pytest-xdist the controller runs it for every device and hands
each worker its own device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .. import loops, preflight
from ..contract import codec as p
from ..device_info import info_dict, info_from_dict
from ..image import FirmwareImage, ImageError, generated_image, load_image
from ..link import BleBackend
from ..options import SmartBallOptions
from ..ota import OtaSettings
from ..targets import TargetKind, kind_of
from . import report as rep
from .command_line import (
    DEVICE_CLASH,
    NEEDS_DEVICE,
    OPTION_NAMES,
    command_words,
    read_options,
)

_SESSION = pytest.StashKey["SmartBallSession"]()


@dataclass(slots=True)
class BenchDevice:
    """A real device of the run, as preflight found it."""

    address: str
    name: str | None
    rssi: int | None
    baseline: p.MsgInfo  # what it ran at session start (restored between tests)
    current: p.MsgInfo  # what it runs as far as we know

    def to_input(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "baseline": asdict(self.baseline),
        }

    @classmethod
    def from_input(cls, data: dict[str, Any]) -> BenchDevice:
        info = info_from_dict(data["baseline"])
        return cls(data["address"], data["name"], data["rssi"], info, info)


@dataclass(slots=True)
class SmartBallSession:
    """What the plugin knows for the whole run, in this process."""

    options: SmartBallOptions
    worker: str | None = None  # "gw0"... under pytest-xdist
    worker_index: int | None = None
    controller: bool = False  # the xdist controller: runs no tests
    backend: BleBackend | None = None  # real only
    #: The device this process tests (None on the simulator: its default address).
    address: str | None = None
    devices: list[BenchDevice] = field(default_factory=list)  # real: every device of the run
    warnings: list[str] = field(default_factory=list)
    preflight: preflight.Findings | None = None
    bluez: dict[str, Any] | None = None
    baseline_image: FirmwareImage | None = None
    reset_settings: OtaSettings | None = None  # real: smartball_reset_settings, once used
    report: rep.RunReport | None = None  # on the process that writes it
    sim_first: p.MsgInfo | None = None  # sim: the first simulated device's INFO
    sim_last: p.MsgInfo | None = None  # sim: the last one's, after its test
    #: sim: the device of the last test that ran an update, after it, and that test: each
    #: test has a fresh simulated device, so "after the run" is after the last update.
    sim_updated: p.MsgInfo | None = None
    sim_updated_by: str | None = None

    @property
    def kind(self) -> TargetKind:
        """The run's kind of target (pytest_smartball.targets.KINDS)."""
        opts = self.options
        return kind_of(opts.device, opts.sim_link, opts.bluez)

    @property
    def mine(self) -> BenchDevice | None:
        for device in self.devices:
            if self.address and device.address.upper() == self.address.upper():
                return device
        return None

    def to_input(self) -> dict[str, Any]:
        return {
            "devices": [d.to_input() for d in self.devices],
            "warnings": self.warnings,
            "bluez": self.bluez,
        }


def smartball_session(config: pytest.Config) -> SmartBallSession:
    state = config.stash.get(_SESSION, None)
    if state is None:  # fixtures used without a session start (pytester in-process)
        state = config.stash[_SESSION] = SmartBallSession(read_options(config))
    return state


def current_session(config: pytest.Config) -> SmartBallSession | None:
    return config.stash.get(_SESSION, None)


def _worker(config: pytest.Config) -> tuple[str | None, int | None]:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None, None
    wid = str(workerinput["workerid"])
    return wid, int(wid[2:]) if wid[2:].isdigit() else None


def _worker_count(config: pytest.Config) -> int:
    """Workers pytest-xdist is about to start (0 without xdist); asked on the controller."""
    if not config.pluginmanager.has_plugin("dsession"):
        return 0
    try:
        from xdist.workermanage import parse_tx_spec_config

        return len(parse_tx_spec_config(config))
    except (ImportError, AttributeError):  # pragma: no cover - another xdist version
        return len(config.getoption("tx", None) or [])


def load_or_usage_error(option: str, path: str | None) -> FirmwareImage | None:
    if not path:
        return None
    try:
        return load_image(path)
    except ImageError as exc:
        raise pytest.UsageError(f"{option}: {exc}") from None


# --- session start: options, preflight, devices --------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    opts = read_options(config)
    state = SmartBallSession(opts)
    state.worker, state.worker_index = _worker(config)
    state.controller = state.worker is None and config.pluginmanager.has_plugin("dsession")
    config.stash[_SESSION] = state
    if state.worker is None:
        state.report = rep.RunReport(device=_device_summary(opts), firmware=None)
    if opts.faults:
        if state.kind.faults is None:
            raise pytest.UsageError(
                "--sim-faults applies to the simulator only; real hardware cannot inject faults"
            )
        from ..targets.simulated import fault_spec_problem  # the simulator is asked for

        problem = fault_spec_problem(opts.faults)
        if problem:
            raise pytest.UsageError(f"--sim-faults: {problem}")
    _check_release_options(opts)
    if opts.device == "real":
        if state.controller or "smartball" in getattr(config, "workerinput", {}):
            # The xdist controller sees no tests; it checks the bench for its workers.
            _start_real(config, opts, state)
        return  # else after collection, and only if a collected test needs a device
    if state.kind.in_process and not state.kind.bluez_faults:
        from ..targets.bumble import BlueZOnlyFault, BumbleUnavailable, check_bumble_faults

        try:
            check_bumble_faults(opts.faults)
        except (BumbleUnavailable, BlueZOnlyFault) as exc:
            raise pytest.UsageError(str(exc)) from None
    if opts.device == "sim":
        image = load_or_usage_error("--firmware", opts.firmware)
        state.baseline_image = load_or_usage_error("--baseline-firmware", opts.baseline)
        if opts.addresses:
            state.address = opts.addresses[(state.worker_index or 0) % len(opts.addresses)]
        if state.report is not None:
            state.report.firmware = image or generated_image(opts.seed)
            state.report.baseline = state.baseline_image


def _check_release_options(opts: SmartBallOptions) -> None:
    """The simulator's firmware switches and the release gate's options: one sentence each."""
    for flag, given in (
        ("--sim-firmware-bug", opts.firmware_bugs),
        ("--sim-flash", opts.sim_flash),
    ):
        if given and opts.device != "sim":
            raise pytest.UsageError(f"{flag} applies to the simulator only (--device=sim)")
    if opts.sim_flash and opts.device == "sim":
        from ..targets.simulated import flash_spec_problem  # the simulator is asked for

        problem = flash_spec_problem(opts.sim_flash)
        if problem:
            raise pytest.UsageError(f"--sim-flash: {problem}")
    if opts.compare_tolerance_percent < 0:
        raise pytest.UsageError("--smartball-compare-tolerance: a percentage of 0 or more")
    if not 0 <= opts.compare_min_measured_percent <= 100:
        raise pytest.UsageError("--smartball-compare-min-measured: a percentage from 0 to 100")
    if opts.soak is not None and opts.soak < 1:
        raise pytest.UsageError("--smartball-soak: the number of updates must be 1 or more")
    if opts.signing_key:
        from ..contract.signing import (  # only when a key is given
            KeyFileError,
            load_private,
        )

        try:
            load_private(Path(opts.signing_key))
        except KeyFileError as exc:
            raise pytest.UsageError(f"--signing-key: {exc}") from None
    if opts.compare:
        from ..compare import ReportUnusable, load_figures

        try:
            load_figures(opts.compare)
        except ReportUnusable as exc:
            raise pytest.UsageError(f"--smartball-compare: {exc}") from None


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """``--device=real`` without xdist: check the bench now, if any test needs a device (a
    run of unrelated tests must not fail for want of Bluetooth)."""
    config = session.config
    state = current_session(config)
    needs_device = config.stash.get(NEEDS_DEVICE, False)
    if needs_device:
        show_header_once(config)
    if state is None or state.options.device != "real" or state.backend is not None:
        return
    if needs_device:
        _start_real(session.config, state.options, state)
        terminal = session.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            for line in bench_lines(state):
                terminal.write_line(line)


#: A signed-only board and no key to sign the suite's test images with.
UNSIGNED_BENCH = (
    "{} runs only signed images (it advertises SIGNED_IMAGES) and the suite has no key to "
    "sign its test images with: give it the key the board trusts with --signing-key PATH"
)


def _start_real(config: pytest.Config, opts: SmartBallOptions, state: SmartBallSession) -> None:
    state.backend = config.hook.pytest_smartball_backend(config=config, adapter=opts.adapter)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "smartball" in workerinput:
        # The controller ran preflight for every device; this worker tests one of them.
        data = workerinput["smartball"]
        state.devices = [BenchDevice.from_input(d) for d in data["devices"]]
        state.warnings, state.bluez = data["warnings"], data["bluez"]
        index = state.worker_index or 0
        if index >= len(state.devices):
            raise pytest.UsageError(
                f"worker {state.worker} has no device: the run found {len(state.devices)}"
            )
        state.address = state.devices[index].address
        state.baseline_image = load_or_usage_error("--baseline-firmware", opts.baseline)
        return
    workers = _worker_count(config)
    if workerinput is not None:  # a worker whose controller ran no preflight: its own device
        workers = int(workerinput.get("workercount", 1))
    in_use, problem, note = preflight.plan_devices(opts.addresses, workers)
    if problem:
        _preflight_failed(opts, state, problem)
    if note:
        state.warnings.append(note)
    if workerinput is not None and in_use:
        in_use = (in_use[(state.worker_index or 0) % len(in_use)],)
    wanted = preflight.Wanted(opts.name, in_use)
    say = _progress_writer(config)
    assert state.backend is not None
    outcome = loops.run(
        preflight.run(
            wanted,
            state.backend,
            adapter=opts.adapter,
            firmware=opts.firmware,
            baseline=opts.baseline,
            scan_timeout=opts.scan_timeout,
            on_step=say,
        )
    )
    state.preflight = outcome
    state.warnings += outcome.warnings
    if outcome.bluez_version is not None or outcome.adapter is not None:
        version = outcome.bluez_version
        state.bluez = {
            "version": f"{version[0]}.{version[1]}" if version else None,
            "adapter": opts.adapter,
            "adapter_address": outcome.adapter.address if outcome.adapter else None,
        }
    if not outcome.ok:
        assert outcome.error is not None
        hint = f" ({opts.device_flag}=sim needs no hardware)" if outcome.no_radio else ""
        _preflight_failed(opts, state, outcome.error + hint)
    for seen in outcome.found:
        info = outcome.infos[seen.address.upper()]
        state.devices.append(BenchDevice(seen.address, seen.name, seen.rssi, info, info))
    state.address = state.devices[0].address if state.devices else None
    signed_only = [d.address for d in state.devices if d.baseline.signed_only]
    if signed_only and not opts.signing_key:
        _preflight_failed(opts, state, UNSIGNED_BENCH.format(", ".join(signed_only)))
    state.baseline_image = outcome.baseline
    if state.baseline_image is None:
        state.warnings.append(
            "no --baseline-firmware: after a test that flashes another image the devices "
            "keep it, and the next test starts from it"
        )
    for warning in state.warnings:
        say(f"WARNING {warning}")
    if state.report is not None:
        state.report.firmware = outcome.image
        state.report.baseline = outcome.baseline
        _fill_real_report(state)


def _fill_real_report(state: SmartBallSession) -> None:
    report = state.report
    assert report is not None
    report.bluez = state.bluez
    outcome = state.preflight
    report.preflight = {
        "ok": outcome.ok if outcome else True,
        "error": outcome.error if outcome else None,
        "warnings": state.warnings,
        "checks": outcome.passed if outcome else [],
    }
    for index, device in enumerate(state.devices):
        report.add_device(
            {
                "address": device.address,
                "name": device.name,
                "rssi_dbm": device.rssi,
                "worker": f"gw{index}" if state.controller else None,
                "firmware_before": info_dict(device.baseline),
            }
        )


def _preflight_failed(opts: SmartBallOptions, state: SmartBallSession, sentence: str) -> None:
    """Stop before any test: one sentence, exit code 4, and the report says so too."""
    if state.report is not None and opts.report:
        state.report.preflight = {
            "ok": False,
            "error": sentence,
            "warnings": state.warnings,
            "checks": state.preflight.passed if state.preflight else [],
        }
        state.report.bluez = state.bluez
        with contextlib.suppress(OSError):
            state.report.write(opts.report, int(pytest.ExitCode.USAGE_ERROR))
    raise pytest.UsageError(f"{opts.device_flag}=real: {sentence}")


def _progress_writer(config: pytest.Config) -> Callable[[str], None]:
    terminal = config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if terminal is not None and config.get_verbosity() >= 0:
            terminal.write_line(f"smartball preflight: {line}")

    return say


def _device_summary(opts: SmartBallOptions) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": opts.device,
        "name": opts.name,
        "addresses": list(opts.addresses),
    }
    if opts.device == "real":
        out["adapter"] = opts.adapter
    else:
        out["sim_seed"] = opts.seed
        out["sim_faults"] = opts.faults
        out["sim_firmware_bugs"] = list(opts.firmware_bugs)
        out["sim_flash"] = opts.sim_flash
    return out


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: hand each worker what preflight found."""
    state = current_session(node.config)
    if state is not None and state.options.device == "real":
        node.workerinput["smartball"] = state.to_input()


#: The header lines were shown (before collection, or after it for a run that turned out
#: to use the plugin).
_HEADER_SHOWN = pytest.StashKey[bool]()


def options_given(config: pytest.Config) -> bool:
    """A smartball option was spelled out (command line, ``addopts``, ``PYTEST_ADDOPTS``):
    the run is about SmartBalls even before its tests are collected."""
    ours = OPTION_NAMES if DEVICE_CLASH in config.stash else {*OPTION_NAMES, "--device"}
    return any(word.partition("=")[0] in ours for word in command_words(config))


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The run's SmartBall lines, only in a run that uses the plugin: one that names its
    options now, or (see :func:`pytest_collection_finish`) one whose collected tests use
    its fixtures or markers. Every other project's header stays as it was."""
    if not options_given(config):
        return []
    config.stash[_HEADER_SHOWN] = True
    return header_lines(config)


def show_header_once(config: pytest.Config) -> None:
    """The header lines, late, for a run found to use the plugin after the header was
    written: once its tests are collected, or (xdist's controller collects nothing) from
    its workers' results at the summary."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if config.stash.get(_HEADER_SHOWN, False) or terminal is None:
        return
    if not getattr(terminal, "showheader", True) or getattr(terminal, "no_header", False):
        return  # -q or --no-header: the user asked for no header, ours included
    config.stash[_HEADER_SHOWN] = True
    state = current_session(config)
    for line in header_lines(config):
        if (
            state is None
            or state.options.device != "real"
            or not line.startswith("smartball: the bench")
        ):
            terminal.write_line(line)


def header_lines(config: pytest.Config) -> list[str]:
    from importlib.metadata import version

    opts = read_options(config)
    state = current_session(config)
    target = opts.address or f"name {opts.name!r}"
    firmware = opts.firmware or ("generated" if opts.device == "sim" else "none (OTA tests skip)")
    lines = [
        f"smartball: device={opts.device} target={target} "
        f"firmware={firmware} bleak={version('bleak')}",
    ]
    clash = config.stash.get(DEVICE_CLASH, None)
    if clash is not None:
        lines.append(f"smartball: {clash}")
    if opts.device == "sim":
        lines.append(
            f"smartball: simulated SmartBall, seed={opts.seed} "
            f"faults={opts.faults or 'none'}"
            + (f" link={opts.sim_link}" if opts.sim_link != "model" else "")
            + " (virtual time in the tests that use its fixtures)"
        )
        if opts.firmware_bugs or opts.sim_flash:
            lines.append(
                f"smartball: simulated firmware bugs={','.join(opts.firmware_bugs) or 'none'} "
                f"flash={opts.sim_flash or 'nRF52840'}"
            )
        return lines
    if state is None or state.backend is None:
        lines.append("smartball: the bench is checked once tests that need a device are collected")
        return lines
    return lines + bench_lines(state)


def bench_lines(state: SmartBallSession) -> list[str]:
    """What preflight found: BlueZ, each device (and its xdist worker), the warnings."""
    bluez = state.bluez or {}
    lines = [
        f"smartball: BlueZ {bluez.get('version') or 'unknown'}; adapter {state.options.adapter}"
        + (f" ({bluez['adapter_address']})" if bluez.get("adapter_address") else "")
    ]
    for index, device in enumerate(state.devices):
        worker = f" -> gw{index}" if state.controller else ""
        rssi = f", {device.rssi} dBm" if device.rssi is not None else ""
        lines.append(
            f"smartball: {device.name or 'SmartBall'} {device.address}{rssi}: firmware "
            f"{device.baseline.firmware_version}, crc32 {device.baseline.active_image_crc32:08x}"
            f"{worker}"
        )
    return lines + [f"smartball: WARNING {w}" for w in state.warnings]

"""pytest plugin: ``pytest --device=sim`` (CI) or ``--device=real`` (a bench with hardware).

Registered through the ``pytest11`` entry point, so installing the package is all a user
needs. Tests get the device under test (``smartball``), a connected NUS link (``nus``), an
OTA engine factory (``ota``), the image to flash (``firmware_image``) and, on the simulator
only, the simulated device itself (``sim_device``) for fault injection and inspection.

On the simulator every asyncio test runs on looptime's virtual clock: a 40 s erase costs
milliseconds and timings are exact. On real hardware time is real, and:

* preflight runs before any test (:mod:`pytest_smartball.preflight`): BlueZ, the adapter,
  its version, the devices, the images; a failure is one sentence and exit code 4;
* after each test the device is returned to idle and its baseline image
  (:mod:`pytest_smartball.known_state`), so tests run in any order;
* ``--ble-address A,B,C`` with pytest-xdist gives each worker its own device.

Every update made with the ``ota`` fixture leaves its figures as JUnit XML properties and
in the ``--smartball-report`` JSON summary (:mod:`pytest_smartball.report`); a failing
test shows (and the JUnit XML keeps) the client's events and the device's fault log.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import warnings
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from smartball_sim.device import DEFAULT_ADDRESS

from . import preflight
from . import protocol as p
from . import report as rep
from .image import FirmwareImage, ImageError, load_image
from .link import BleBackend, LinkSettings, NusLink, find_device, last_rssi
from .ota import OtaEngine, OtaResult, OtaSettings

T = TypeVar("T")

_TARGET = pytest.StashKey["SmartBallTarget"]()
_ENGINES = pytest.StashKey["list[OtaEngine]"]()
_UPDATES = pytest.StashKey["list[_Update]"]()
_LINK_EVENTS = pytest.StashKey["list[tuple[float, str]]"]()
_CALLED = pytest.StashKey[bool]()
_SESSION = pytest.StashKey["SmartBallSession"]()

DEFAULT_NAME = "SmartBall"
#: A generated image when --firmware is not given: not a multiple of a page or a chunk.
GENERATED_IMAGE_SIZE = 131_195
#: pytest-timeout for each test on real hardware unless --timeout is given: a real update
#: of a full image takes minutes, and so may putting the baseline back after it.
REAL_TEST_TIMEOUT_S = 900
TIMELINE_TITLE = "smartball timeline (client | device)"


@dataclass(frozen=True, slots=True)
class SmartBallOptions:
    device: str
    name: str
    address: str | None
    adapter: str
    firmware: str | None
    seed: int
    faults: str | None
    baseline: str | None = None
    report: str | None = None
    scan_timeout: float = preflight.DEFAULT_SCAN_TIMEOUT_S

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in (self.address or "").split(",") if a.strip())


@dataclass(slots=True)
class SmartBallTarget:
    """The device under test."""

    kind: str  # "sim" or "real"
    name: str
    address: str | None
    backend: BleBackend
    sim: Any = None  # smartball_sim.device.SimDevice on the simulator
    world: Any = None  # smartball_sim.bleak_backend.SimWorld on the simulator

    @property
    def is_sim(self) -> bool:
        return self.kind == "sim"


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
        info = rep.info_from_dict(data["baseline"])
        return cls(data["address"], data["name"], data["rssi"], info, info)


@dataclass(slots=True)
class SmartBallSession:
    """What the plugin knows for the whole run, in this process."""

    kind: str
    worker: str | None = None  # "gw0"... under pytest-xdist
    worker_index: int | None = None
    controller: bool = False  # the xdist controller: runs no tests
    backend: BleBackend | None = None  # real only
    address: str | None = None  # the device this process tests
    devices: list[BenchDevice] = field(default_factory=list)  # real: every device of the run
    warnings: list[str] = field(default_factory=list)
    preflight: preflight.Outcome | None = None
    bluez: dict[str, Any] | None = None
    baseline_image: FirmwareImage | None = None
    reset_settings: OtaSettings | None = None  # real: smartball_reset_settings, once used
    report: rep.RunReport | None = None  # on the process that writes it
    sim_first: p.MsgInfo | None = None  # sim: the first simulated device's INFO
    sim_last: p.MsgInfo | None = None  # sim: the last one's, after its test

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


@dataclass(slots=True)
class _Update:
    """An update of the test (an ``ota`` engine) or of its teardown (the baseline put back)."""

    image: FirmwareImage
    result: OtaResult
    before: p.MsgInfo | None
    purpose: str = "test"
    engine: OtaEngine | None = None
    address: str | None = None

    @property
    def device(self) -> str | None:
        return self.engine.address if self.engine is not None else self.address


# --- options and hooks ------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smartball", "SmartBall device under test")
    group.addoption(
        "--device",
        choices=("sim", "real"),
        default="sim",
        help="run against the in-process simulator (default) or real hardware",
    )
    group.addoption(
        "--ble-name",
        default=DEFAULT_NAME,
        help="advertised name of the device (default: SmartBall)",
    )
    group.addoption(
        "--ble-address",
        default=None,
        help="Bluetooth address of the device (preferred over the name); several, "
        "comma-separated, give each pytest-xdist worker (-n N) its own device",
    )
    group.addoption("--ble-adapter", default="hci0", help="BlueZ adapter (default: hci0)")
    group.addoption(
        "--ble-scan-timeout",
        type=float,
        default=preflight.DEFAULT_SCAN_TIMEOUT_S,
        metavar="SECONDS",
        help="how long preflight scans for the devices (--device=real; default %(default)s)",
    )
    group.addoption(
        "--firmware",
        default=None,
        help="image (.bin or Intel .hex) the OTA tests flash; the simulator "
        "generates one when omitted",
    )
    group.addoption(
        "--baseline-firmware",
        default=None,
        metavar="PATH",
        help="the image the devices run before the run; a test that flashed another one "
        "is followed by flashing this one back (--device=real; without it a warning)",
    )
    group.addoption(
        "--smartball-report",
        default=None,
        metavar="PATH",
        help="write a JSON summary of the run (devices, firmware before and after, every "
        "update's figures, outcomes) for the release checklist",
    )
    group.addoption(
        "--sim-seed", type=int, default=0, help="seed for the simulator's randomness (default 0)"
    )
    group.addoption(
        "--fuzz-examples",
        type=int,
        default=None,
        metavar="N",
        help="hypothesis examples per property (the fuzz suites scale from it; default: "
        "the hypothesis profile's, 100 in CI)",
    )
    group.addoption(
        "--sim-faults",
        default=None,
        help="fault plan applied to every simulated device, e.g. "
        "'drop@erase:50%%,reboot@offset:200000' or a profile name",
    )
    group.addoption(
        "--bluez",
        choices=("system", "emulated", "vhci"),
        default="system",
        help="with --device=real: the system's BlueZ (default), or 'emulated': a private "
        "dbus-daemon and an emulated bluetoothd serving simulated SmartBalls "
        "(sim/smartball_sim/bluez), "
        "started and stopped by this run, or 'vhci': the system's real BlueZ with "
        "simulated SmartBalls behind a virtual controller on /dev/vhci (smartball_sim.vhci)",
    )


def pytest_configure(config: pytest.Config) -> None:
    examples = config.getoption("--fuzz-examples")
    if examples is not None:
        from hypothesis import settings

        settings.register_profile("smartball-fuzz", settings.default, max_examples=examples)
        settings.load_profile("smartball-fuzz")
    config.addinivalue_line("markers", "sim_only: runs only with --device=sim")
    config.addinivalue_line("markers", "real_only: runs only with --device=real")
    config.addinivalue_line(
        "markers", "faults(spec): fault plan for this test's simulated device (sim only)"
    )
    config.pluginmanager.register(_Recorder(config), "smartball-recorder")
    if config.getoption("--bluez") == "emulated":
        # Before the session starts: preflight and every bleak bus then use the emulator.
        from .emulated_bluez import start

        start(config)
    elif config.getoption("--bluez") == "vhci":
        from .vhci_bluez import start as start_vhci

        start_vhci(config)


@pytest.hookimpl(trylast=True)
def pytest_smartball_backend(config: pytest.Config, adapter: str) -> BleBackend:
    return BleBackend(adapter=adapter)


def _options(config: pytest.Config) -> SmartBallOptions:
    return SmartBallOptions(
        device=config.getoption("--device"),
        name=config.getoption("--ble-name"),
        address=config.getoption("--ble-address"),
        adapter=config.getoption("--ble-adapter"),
        firmware=config.getoption("--firmware"),
        seed=config.getoption("--sim-seed"),
        faults=config.getoption("--sim-faults"),
        baseline=config.getoption("--baseline-firmware"),
        report=config.getoption("--smartball-report"),
        scan_timeout=config.getoption("--ble-scan-timeout"),
    )


def _session(config: pytest.Config) -> SmartBallSession:
    state = config.stash.get(_SESSION, None)
    if state is None:  # fixtures used without a session start (pytester in-process)
        state = config.stash[_SESSION] = SmartBallSession(_options(config).device)
    return state


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


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on a private event loop (sessionstart, fixture teardown: no loop is running)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _load_or_usage_error(option: str, path: str | None) -> FirmwareImage | None:
    if not path:
        return None
    try:
        return load_image(path)
    except ImageError as exc:
        raise pytest.UsageError(f"{option}: {exc}") from None


# --- session start: options, preflight, devices --------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    opts = _options(config)
    state = SmartBallSession(opts.device)
    state.worker, state.worker_index = _worker(config)
    state.controller = state.worker is None and config.pluginmanager.has_plugin("dsession")
    config.stash[_SESSION] = state
    if state.worker is None:
        state.report = rep.RunReport(device=_device_summary(opts), firmware=None)
    if opts.faults:
        from smartball_sim.faults import FaultPlan, FaultSpecError

        if opts.device == "real" and config.getoption("--bluez") not in ("emulated", "vhci"):
            raise pytest.UsageError(
                "--sim-faults applies to the simulator only; real hardware cannot inject faults"
            )
        try:
            FaultPlan.parse(opts.faults)
        except FaultSpecError as exc:
            raise pytest.UsageError(f"--sim-faults: {exc}") from None
    if opts.device == "sim":
        image = _load_or_usage_error("--firmware", opts.firmware)
        state.baseline_image = _load_or_usage_error("--baseline-firmware", opts.baseline)
        addresses = opts.addresses or (DEFAULT_ADDRESS,)
        state.address = addresses[(state.worker_index or 0) % len(addresses)]
        if state.report is not None:
            state.report.firmware = image or _generated_image(opts.seed)
            state.report.baseline = state.baseline_image
        return
    _start_real(config, opts, state)


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
        state.baseline_image = _load_or_usage_error("--baseline-firmware", opts.baseline)
        return
    workers = _worker_count(config)
    if workerinput is not None:  # a worker whose controller ran no preflight: its own device
        workers = int(workerinput.get("workercount", 1))
    in_use, problem, note = preflight.plan_devices(opts.addresses, workers)
    if problem:
        _preflight_failed(config, opts, state, problem)
    if note:
        state.warnings.append(note)
    if workerinput is not None and in_use:
        in_use = (in_use[(state.worker_index or 0) % len(in_use)],)
    wanted = preflight.Wanted(opts.name, in_use)
    say = _progress_writer(config)
    outcome, _ = _run(
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
        hint = " (--device=sim needs no hardware)" if outcome.no_radio else ""
        _preflight_failed(config, opts, state, outcome.error + hint)
    for seen in outcome.found:
        info = outcome.infos[seen.address.upper()]
        state.devices.append(BenchDevice(seen.address, seen.name, seen.rssi, info, info))
    state.address = state.devices[0].address if state.devices else None
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
                "firmware_before": rep.info_dict(device.baseline),
            }
        )


def _preflight_failed(
    config: pytest.Config, opts: SmartBallOptions, state: SmartBallSession, sentence: str
) -> None:
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
    raise pytest.UsageError(f"--device=real: {sentence}")


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
    return out


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: hand each worker what preflight found."""
    state = node.config.stash.get(_SESSION, None)
    if state is not None and state.kind == "real":
        node.workerinput["smartball"] = state.to_input()


def pytest_report_header(config: pytest.Config) -> list[str]:
    from importlib.metadata import version

    opts = _options(config)
    state = config.stash.get(_SESSION, None)
    target = opts.address or f"name {opts.name!r}"
    firmware = opts.firmware or ("generated" if opts.device == "sim" else "none (OTA tests skip)")
    lines = [
        f"smartball: device={opts.device} target={target} "
        f"firmware={firmware} bleak={version('bleak')}",
    ]
    if opts.device == "sim":
        from smartball_sim.device import SimDevice

        device_firmware = SimDevice(active_image=b"\xff").firmware.info().firmware_version
        lines.append(
            f"smartball: simulated SmartBall firmware {device_firmware}, seed={opts.seed} "
            f"faults={opts.faults or 'none'} (virtual time)"
        )
        return lines
    if state is None:
        return lines
    bluez = state.bluez or {}
    lines.append(
        f"smartball: BlueZ {bluez.get('version') or 'unknown'}; adapter {opts.adapter}"
        + (f" ({bluez['adapter_address']})" if bluez.get("adapter_address") else "")
    )
    for index, device in enumerate(state.devices):
        worker = f" -> gw{index}" if state.controller else ""
        rssi = f", {device.rssi} dBm" if device.rssi is not None else ""
        lines.append(
            f"smartball: {device.name or 'SmartBall'} {device.address}{rssi}: firmware "
            f"{device.baseline.firmware_version}, crc32 {device.baseline.active_image_crc32:08x}"
            f"{worker}"
        )
    lines += [f"smartball: WARNING {w}" for w in state.warnings]
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from smartball_sim.faults import FaultPlan, FaultSpecError

    device = config.getoption("--device")
    skip_sim = pytest.mark.skip(reason="needs the simulator (--device=sim)")
    skip_real = pytest.mark.skip(reason="needs real hardware (--device=real)")
    real_timeout = (
        device == "real"
        and config.pluginmanager.has_plugin("timeout")
        and config.getoption("timeout", None) is None
    )
    for item in items:
        faults = item.get_closest_marker("faults")
        if faults is not None:
            try:
                FaultPlan.parse(faults.args[0] if faults.args else "")
            except FaultSpecError as exc:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.faults: {exc}") from None
        if device == "real" and (item.get_closest_marker("sim_only") or faults is not None):
            # A test that relies on an injected fault would pass without testing anything.
            item.add_marker(skip_sim)
        if device == "sim" and item.get_closest_marker("real_only"):
            item.add_marker(skip_real)
        if item.get_closest_marker("asyncio") and not item.get_closest_marker("looptime"):
            # Simulated devices run on a virtual clock; real radios need real time.
            item.add_marker(pytest.mark.looptime(device == "sim"))
        if real_timeout and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(REAL_TEST_TIMEOUT_S))


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smartball_options(pytestconfig: pytest.Config) -> SmartBallOptions:
    return _options(pytestconfig)


@pytest.fixture(scope="session")
def smartball_reset_settings() -> OtaSettings:
    """Settings for returning a real device to its baseline between tests."""
    return OtaSettings()


@pytest.fixture
def smartball(
    request: pytest.FixtureRequest,
    smartball_options: SmartBallOptions,
    smartball_reset_settings: OtaSettings,
) -> Iterator[SmartBallTarget]:
    """The device under test: kind, name, address, backend and (simulator) its SimDevice.

    On real hardware the device is returned to idle and its baseline image after the test.
    """
    opts = smartball_options
    state = _session(request.config)
    if opts.device == "real":
        assert state.backend is not None, "--device=real without a session start"
        target = SmartBallTarget("real", opts.name, state.address, state.backend)
        request.node.stash[_TARGET] = target
        state.reset_settings = smartball_reset_settings
        yield target
        if request.node.stash.get(_CALLED, False):
            _return_to_baseline(request.node, state, target, smartball_reset_settings)
        return
    from .simulated import make_sim_target

    marker = request.node.get_closest_marker("faults")
    spec = ",".join(s for s in (opts.faults, marker.args[0] if marker else None) if s)
    # Each test gets its own device, seeded from --sim-seed and the test id: reproducible,
    # and independent of test order.
    seed = opts.seed ^ zlib.crc32(request.node.nodeid.encode())
    options: dict[str, Any] = {}
    if state.baseline_image is not None:
        options["active_image"] = state.baseline_image.data
    sim = make_sim_target(
        opts.name, state.address or DEFAULT_ADDRESS, faults=spec, seed=seed, **options
    )
    target = SmartBallTarget(
        "sim", sim.device.name, sim.device.address, sim.backend, sim.device, sim.world
    )
    request.node.stash[_TARGET] = target
    if state.sim_first is None:
        state.sim_first = sim.device.firmware.info()
    yield target


def _return_to_baseline(
    item: pytest.Item, state: SmartBallSession, target: SmartBallTarget, settings: OtaSettings
) -> None:
    from .known_state import ResetFailed, return_to_baseline

    device = state.mine
    if device is None:
        return
    try:
        outcome = _run(
            return_to_baseline(
                target.backend,
                name=target.name,
                address=target.address,
                baseline=device.baseline,
                baseline_image=state.baseline_image,
                settings=settings,
            )
        )
    except ResetFailed as exc:
        pytest.fail(f"smartball: {exc}", pytrace=False)
    device.current = outcome.info
    if outcome.restored is not None:
        assert state.baseline_image is not None
        item.stash.setdefault(_UPDATES, []).append(
            _Update(
                state.baseline_image,
                outcome.restored,
                outcome.found,
                "restore",
                address=target.address,
            )
        )
    if outcome.warning:
        warnings.warn(pytest.PytestWarning(f"smartball: {outcome.warning}"), stacklevel=1)


@pytest.fixture
def sim_device(smartball: SmartBallTarget) -> Any:
    """The simulated SmartBall (smartball_sim.device.SimDevice); skips the test on real hardware."""
    if not smartball.is_sim:
        pytest.skip("needs the simulator (--device=sim)")
    return smartball.sim


@pytest.fixture(scope="session")
def firmware_image(smartball_options: SmartBallOptions) -> FirmwareImage:
    """The image OTA tests flash: --firmware, or a generated one on the simulator."""
    if smartball_options.firmware:
        return load_image(smartball_options.firmware)
    if smartball_options.device == "real":
        pytest.skip("OTA tests on real hardware need --firmware PATH")
    return _generated_image(smartball_options.seed)


def _generated_image(seed: int) -> FirmwareImage:
    data = random.Random(seed).randbytes(GENERATED_IMAGE_SIZE)
    return FirmwareImage(data, f"generated-{GENERATED_IMAGE_SIZE}.bin")


@pytest.fixture
def link_settings(smartball: SmartBallTarget) -> LinkSettings:
    return LinkSettings()


@pytest.fixture
def ota_settings(link_settings: LinkSettings) -> OtaSettings:
    return OtaSettings(link=link_settings)


@contextlib.contextmanager
def _virtual_time(target: SmartBallTarget) -> Iterator[None]:
    """looptime compacts time only inside tests; fixtures that talk to the simulator
    switch it on themselves, so connecting costs no wall time."""
    loop = asyncio.get_running_loop()
    enable = getattr(loop, "looptime_enabled", None)
    if target.is_sim and enable is not None and not loop.looptime_on:  # type: ignore[attr-defined]
        with enable():
            yield
    else:
        yield


@pytest_asyncio.fixture
async def nus(
    request: pytest.FixtureRequest, smartball: SmartBallTarget, link_settings: LinkSettings
) -> AsyncIterator[NusLink]:
    """A connected NUS link to the device under test."""
    events = request.node.stash.setdefault(_LINK_EVENTS, [])
    loop = asyncio.get_running_loop()

    def on_event(kind: str, detail: str) -> None:
        events.append((loop.time(), f"client  {'nus ' + kind:<16} {detail}"))

    with _virtual_time(smartball):
        device = await find_device(
            smartball.backend,
            name=smartball.name,
            address=smartball.address,
            timeout=link_settings.scan_timeout_s,
        )
        link = await NusLink.open(device, smartball.backend, link_settings, on_event=on_event)
    yield link
    with _virtual_time(smartball):
        await link.close()


@pytest.fixture
def ota(
    request: pytest.FixtureRequest,
    smartball: SmartBallTarget,
    firmware_image: FirmwareImage,
    ota_settings: OtaSettings,
) -> Callable[..., OtaEngine]:
    """Factory for an OTA engine aimed at the device under test: ``ota(image=None, **kw)``."""

    engines = request.node.stash.setdefault(_ENGINES, [])
    updates = request.node.stash.setdefault(_UPDATES, [])
    state = _session(request.config)

    def make(image: FirmwareImage | None = None, **kwargs: Any) -> OtaEngine:
        kwargs.setdefault("settings", ota_settings)
        engine = OtaEngine(
            image or firmware_image,
            smartball.backend,
            name=smartball.name,
            address=smartball.address,
            **kwargs,
        )
        engines.append(engine)  # for the timeline shown when the test fails
        before = _known_info(smartball, state, updates)
        updates.append(_Update(engine.image, engine.result, before, engine=engine))
        return engine

    return make


def _known_info(
    target: SmartBallTarget, state: SmartBallSession, updates: list[_Update]
) -> p.MsgInfo | None:
    """What the device runs before an update, as far as the plugin knows."""
    if target.sim is not None:
        return target.sim.firmware.info()
    for update in reversed(updates):
        if update.result.info_after is not None:
            return update.result.info_after
        if update.result.events:
            return None  # an update ran and did not say: unknown
    device = state.mine
    return device.current if device else None


# --- what each test leaves: figures, failure logs ------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    item.stash[_CALLED] = True
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    records: list[dict[str, Any]] = []
    if call.when == "teardown":
        records = _update_records(item)
        # Before the report is made: it copies item.user_properties (JUnit reads them there).
        item.user_properties.extend(rep.junit_properties(records))
        target = item.stash.get(_TARGET, None)
        if target is not None and target.sim is not None:
            _session(item.config).sim_last = target.sim.firmware.info()
    report = yield
    if records:
        report.smartball_updates = records
    if report.when == "call" and report.failed:
        timeline = _timeline(item)
        if timeline:
            report.sections.append((TIMELINE_TITLE, timeline))
    return report


def _update_records(item: pytest.Item) -> list[dict[str, Any]]:
    target = item.stash.get(_TARGET, None)
    records = []
    counts: dict[str, int] = {}
    for update in item.stash.get(_UPDATES, []):
        result = update.result
        if not result.events:  # made, never run
            continue
        counts[update.purpose] = counts.get(update.purpose, 0) + 1
        address = update.device or (target.address if target else None)
        records.append(
            rep.update_record(
                result,
                test=item.nodeid,
                index=counts[update.purpose],
                image=update.image,
                device=address,
                before=update.before,
                rssi=last_rssi(address) if address and result.connects else None,
                purpose=update.purpose,
            )
        )
    return records


def _timeline(item: pytest.Item) -> str:
    """The OTA engines' event logs and the simulated device's fault log, merged by time."""
    # (time, 0 for the device's cause before 1 for the client's effect, text)
    rows: list[tuple[float, int, str]] = []
    for engine in item.stash.get(_ENGINES, []):
        rows += [
            (engine.started_at + e.time, 1, f"client  {e.kind:<16} {e.detail}")
            for e in engine.result.events
        ]
    rows += [(t, 1, text) for t, text in item.stash.get(_LINK_EVENTS, [])]
    target = item.stash.get(_TARGET, None)
    if target is not None and target.sim is not None:
        rows += [
            (r.time, 0, f"device  {r.fault:<16} [{r.trigger or 'armed'}] {r.detail}")
            for r in target.sim.fault_log
        ]
    rows.sort(key=lambda row: row[:2])
    return "\n".join(f"{t:10.3f}s  {text}" for t, _, text in rows)


# --- the run's record: outcomes, the JSON report, JUnit system-out ---------------------------


class _Recorder:
    """Session-wide hooks that need the config: collects outcomes and updates (on the
    process that writes the report), the workers' device parts, and writes the file."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.written: str | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        state = self.config.stash.get(_SESSION, None)
        if state is not None and state.report is not None:
            state.report.add_test_report(report)
        if report.when == "call" and report.failed:
            _junit_system_out(self.config, report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        state = self.config.stash.get(_SESSION, None)
        part = getattr(node, "workeroutput", {}).get("smartball")
        if state is not None and state.report is not None and part:
            for device in part["devices"]:
                state.report.add_device(device)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        state = self.config.stash.get(_SESSION, None)
        if state is None:
            return
        opts = _options(self.config)
        part = None if state.controller else _device_part(state, opts)
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["smartball"] = {"devices": [part] if part else []}
        if state.report is None or not opts.report:
            return
        if part:
            state.report.add_device(part)
        state.report.write(opts.report, int(exitstatus))
        self.written = opts.report

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        state = self.config.stash.get(_SESSION, None)
        if state is None or state.report is None:
            return
        updates = [u for u in state.report.updates if u["purpose"] == "test"]
        if updates and (state.kind == "real" or self.written):
            terminalreporter.write_sep("-", "smartball updates")
            for u in sorted(updates, key=lambda u: (u["test"], u["update"])):
                terminalreporter.write_line(_update_line(u))
        if self.written:
            summary = state.report.to_dict()
            terminalreporter.write_line(
                f"smartball report: {self.written} (verdict {summary['verdict']}; "
                f"{summary['updates_total']} updates, {summary['updates_failed']} failed)"
            )


def _device_part(state: SmartBallSession, opts: SmartBallOptions) -> dict[str, Any] | None:
    """This process's device for the report: before and after the run."""
    if state.kind == "sim":
        if state.sim_first is None:
            return None
        return {
            "address": state.address,
            "name": opts.name,
            "worker": state.worker,
            "firmware_before": rep.info_dict(state.sim_first),
            "firmware_after": rep.info_dict(state.sim_last or state.sim_first),
        }
    device = state.mine
    if device is None or state.backend is None or not opts.report:
        return None
    part: dict[str, Any] = {"address": device.address, "worker": state.worker}
    from .known_state import idle_and_info

    try:
        _, info = _run(
            asyncio.wait_for(
                idle_and_info(
                    state.backend,
                    name=opts.name,
                    address=device.address,
                    settings=state.reset_settings or OtaSettings(),
                ),
                preflight.INFO_TIMEOUT_S + preflight.DEFAULT_SCAN_TIMEOUT_S,
            )
        )
        part["firmware_after"] = rep.info_dict(info)
    except Exception as exc:  # the report must still be written
        part["firmware_after_error"] = f"{type(exc).__name__}: {exc}"
    return part


def _update_line(u: dict[str, Any]) -> str:
    test = u["test"].rsplit("::", 1)[-1]
    status = "ok" if u["success"] else f"FAILED ({u['failure']})"
    rssi = f"  rssi {u['rssi_dbm']} dBm" if u["rssi_dbm"] is not None else ""
    after = u["firmware_after"]["firmware"] if u["firmware_after"] else "?"
    return (
        f"{test}[{u['update']}] {u['device'] or ''}  {status}  {u['duration_s']:.1f} s  "
        f"{u['throughput_bps'] / 1000:.1f} kB/s  reconnects {u['reconnects']}  "
        f"resumes {u['resumes']}  re-sent {u['bytes_resent']} B{rssi}  firmware after {after}"
    )


def _junit_system_out(config: pytest.Config, report: pytest.TestReport) -> None:
    """Put the failure's smartball sections into the JUnit XML as <system-out>, whatever
    junit_logging says (a CI system shows them next to the failure)."""
    sections = [(title, text) for title, text in report.sections if title == TIMELINE_TITLE]
    if not sections:
        return
    try:
        import xml.etree.ElementTree as ET

        from _pytest.junitxml import bin_xml_escape, xml_key
    except ImportError:  # pragma: no cover - another pytest
        return
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return
    node = ET.Element("system-out")
    node.text = bin_xml_escape(
        "\n".join(f"{f' {title} ':-^80}\n{text}\n" for title, text in sections)
    )
    with contextlib.suppress(AttributeError, KeyError):
        xml.node_reporter(report).append(node)

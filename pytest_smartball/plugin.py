"""pytest plugin: ``pytest --device=sim`` (CI) or ``--device=real`` (a bench with hardware).

Registered through the ``pytest11`` entry point, so installing the package is all a user
needs. Tests get the device under test (``smartball``), a connected NUS link (``nus``), an
OTA engine factory (``ota``), the image to flash (``firmware_image``) and, on the simulator
only, the simulated device itself (``sim_device``) for fault injection and inspection.

On the simulator every asyncio test runs on looptime's virtual clock: a 40 s erase costs
milliseconds and timings are exact. On real hardware time is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from .image import FirmwareImage, ImageError, load_image
from .link import BleBackend, LinkSettings, NusLink, find_device
from .ota import OtaEngine, OtaSettings

_TARGET = pytest.StashKey["SmartBallTarget"]()
_ENGINES = pytest.StashKey["list[OtaEngine]"]()

DEFAULT_NAME = "SmartBall"
DEFAULT_SIM_ADDRESS = "C0:FF:EE:00:00:01"
#: A generated image when --firmware is not given: not a multiple of a page or a chunk.
GENERATED_IMAGE_SIZE = 131_195


@dataclass(frozen=True, slots=True)
class SmartBallOptions:
    device: str
    name: str
    address: str | None
    adapter: str
    firmware: str | None
    seed: int
    faults: str | None


@dataclass(slots=True)
class SmartBallTarget:
    """The device under test."""

    kind: str  # "sim" or "real"
    name: str
    address: str | None
    backend: BleBackend
    sim: Any = None  # sim.device.SimDevice on the simulator
    world: Any = None  # sim.bleak_backend.SimWorld on the simulator

    @property
    def is_sim(self) -> bool:
        return self.kind == "sim"


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
        help="Bluetooth address of the device (preferred over the name)",
    )
    group.addoption("--ble-adapter", default="hci0", help="BlueZ adapter (default: hci0)")
    group.addoption(
        "--firmware",
        default=None,
        help="image (.bin or Intel .hex) the OTA tests flash; the simulator "
        "generates one when omitted",
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


def _options(config: pytest.Config) -> SmartBallOptions:
    return SmartBallOptions(
        device=config.getoption("--device"),
        name=config.getoption("--ble-name"),
        address=config.getoption("--ble-address"),
        adapter=config.getoption("--ble-adapter"),
        firmware=config.getoption("--firmware"),
        seed=config.getoption("--sim-seed"),
        faults=config.getoption("--sim-faults"),
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    opts = _options(session.config)
    if opts.faults:
        from sim.faults import FaultPlan, FaultSpecError

        try:
            FaultPlan.parse(opts.faults)
        except FaultSpecError as exc:
            raise pytest.UsageError(f"--sim-faults: {exc}") from None
    if opts.firmware:
        try:
            load_image(opts.firmware)
        except ImageError as exc:
            raise pytest.UsageError(f"--firmware: {exc}") from None
    if opts.device == "real":
        from .bluez import BluezUnavailable, probe_adapter

        if opts.faults:
            raise pytest.UsageError(
                "--sim-faults applies to the simulator only; real hardware cannot inject faults"
            )
        try:
            asyncio.run(probe_adapter(opts.adapter))
        except BluezUnavailable as exc:
            raise pytest.UsageError(
                f"--device=real: {exc} (--device=sim needs no hardware)"
            ) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    from importlib.metadata import version

    opts = _options(config)
    target = opts.address or f"name {opts.name!r}"
    firmware = opts.firmware or ("generated" if opts.device == "sim" else "none (OTA tests skip)")
    lines = [
        f"smartball: device={opts.device} target={target} "
        f"firmware={firmware} bleak={version('bleak')}",
    ]
    if opts.device == "sim":
        lines.append(
            f"smartball: simulator seed={opts.seed} faults={opts.faults or 'none'} (virtual time)"
        )
    else:
        from .bluez import bluez_version, version_warnings

        found = asyncio.run(bluez_version())
        shown = f"{found[0]}.{found[1]}" if found else "unknown"
        lines.append(f"smartball: BlueZ {shown}; adapter {opts.adapter}")
        lines += [f"smartball: WARNING {w}" for w in version_warnings(found)]
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from sim.faults import FaultPlan, FaultSpecError

    device = config.getoption("--device")
    skip_sim = pytest.mark.skip(reason="needs the simulator (--device=sim)")
    skip_real = pytest.mark.skip(reason="needs real hardware (--device=real)")
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


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smartball_options(pytestconfig: pytest.Config) -> SmartBallOptions:
    return _options(pytestconfig)


@pytest.fixture
def smartball(
    request: pytest.FixtureRequest, smartball_options: SmartBallOptions
) -> SmartBallTarget:
    """The device under test: kind, name, address, backend and (simulator) its SimDevice."""
    opts = smartball_options
    if opts.device == "real":
        return SmartBallTarget("real", opts.name, opts.address, BleBackend(adapter=opts.adapter))
    from .simulated import make_sim_target

    marker = request.node.get_closest_marker("faults")
    spec = ",".join(s for s in (opts.faults, marker.args[0] if marker else None) if s)
    # Each test gets its own device, seeded from --sim-seed and the test id: reproducible,
    # and independent of test order.
    seed = opts.seed ^ zlib.crc32(request.node.nodeid.encode())
    sim = make_sim_target(opts.name, opts.address or DEFAULT_SIM_ADDRESS, faults=spec, seed=seed)
    target = SmartBallTarget(
        "sim", sim.device.name, sim.device.address, sim.backend, sim.device, sim.world
    )
    request.node.stash[_TARGET] = target
    return target


@pytest.fixture
def sim_device(smartball: SmartBallTarget) -> Any:
    """The simulated SmartBall (sim.device.SimDevice); skips the test on real hardware."""
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
    data = random.Random(smartball_options.seed).randbytes(GENERATED_IMAGE_SIZE)
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
async def nus(smartball: SmartBallTarget, link_settings: LinkSettings) -> AsyncIterator[NusLink]:
    """A connected NUS link to the device under test."""
    with _virtual_time(smartball):
        device = await find_device(
            smartball.backend,
            name=smartball.name,
            address=smartball.address,
            timeout=link_settings.scan_timeout_s,
        )
        link = await NusLink.open(device, smartball.backend, link_settings)
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
        return engine

    return make


# --- what a failing test shows ------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        timeline = _timeline(item)
        if timeline:
            report.sections.append(("smartball timeline (client | device)", timeline))
    return report


def _timeline(item: pytest.Item) -> str:
    """The OTA engines' event logs and the simulated device's fault log, merged by time."""
    # (time, 0 for the device's cause before 1 for the client's effect, text)
    rows: list[tuple[float, int, str]] = []
    for engine in item.stash.get(_ENGINES, []):
        rows += [
            (engine.started_at + e.time, 1, f"client  {e.kind:<16} {e.detail}")
            for e in engine.result.events
        ]
    target = item.stash.get(_TARGET, None)
    if target is not None and target.sim is not None:
        rows += [
            (r.time, 0, f"device  {r.fault:<16} [{r.trigger or 'armed'}] {r.detail}")
            for r in target.sim.fault_log
        ]
    rows.sort(key=lambda row: row[:2])
    return "\n".join(f"{t:10.3f}s  {text}" for t, _, text in rows)

"""The plugin's fixtures: the device under test (``smartball``), a connected NUS link
(``nus``), an OTA engine factory (``ota``), the image to flash (``firmware_image``), the
figures a test measures (``smartball_figures``), a power cut (``power_cycle``) and, on the
simulator only, the simulated device itself (``sim_device``).

On the simulator every test that uses these fixtures (or a SmartBall marker) runs on
looptime's virtual clock (:mod:`pytest_smartball.plugin` decides); on hardware time is
real and, after each test, the device is returned to idle and its baseline image
(:mod:`pytest_smartball.known_state`), so tests run in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from .. import loops
from ..contract import codec as p
from ..contract.manifest import is_signed_image
from ..figures import FigureRecorder
from ..image import FirmwareImage, ImageError, generated_image, load_image
from ..link import LinkSettings, NusLink, find_device
from ..options import SmartBallOptions
from ..ota import OtaEngine, OtaSettings
from ..release_report.trace import ProgressTrace
from ..targets import (
    FAST_LINK,
    FAST_OTA,
    Target,
    open_in_process,
    real_time_firmware_image,
)
from .monitoring import WATCH, ContractWatch
from .recording import CALLED, ENGINES, FIGURES, LINK_EVENTS, SOAKS, TARGET, UPDATES, Update
from .session import SmartBallSession, smartball_session

if TYPE_CHECKING:
    from ..suite_signer import SuiteSigner

#: Fixtures whose tests are the plugin's business (they get virtual time on the simulator).
SMARTBALL_FIXTURES = frozenset({"smartball", "nus", "ota", "sim_device", "firmware_image"})


@pytest.fixture(scope="session")
def smartball_options(pytestconfig: pytest.Config) -> SmartBallOptions:
    return smartball_session(pytestconfig).options


@pytest.fixture(scope="session")
def smartball_reset_settings(pytestconfig: pytest.Config) -> OtaSettings:
    """Settings for returning a real device to its baseline between tests."""
    return FAST_OTA if smartball_session(pytestconfig).kind.fast_settings else OtaSettings()


@pytest.fixture
def smartball(
    request: pytest.FixtureRequest,
    smartball_options: SmartBallOptions,
    smartball_reset_settings: OtaSettings,
) -> Iterator[Target]:
    """The device under test: name, address, the backend that reaches it and, on the
    simulator, the simulated device (``.sim``).

    On real hardware the device is returned to idle and its baseline image after the test.
    """
    opts = smartball_options
    state = smartball_session(request.config)
    kind = state.kind
    if not kind.in_process:
        assert state.backend is not None, "--device=real without a session start"
        target = Target(state.backend, opts.name, state.address)
        request.node.stash[TARGET] = target
        state.reset_settings = smartball_reset_settings
        yield target
        if request.node.stash.get(CALLED, False):
            _return_to_baseline(request.node, state, target, smartball_reset_settings)
        return
    refused: tuple[type[Exception], ...] = ()
    if not kind.bluez_faults:
        from ..targets.bumble import BlueZOnlyFault

        refused = (BlueZOnlyFault,)

    marker = request.node.get_closest_marker("faults")
    spec = ",".join(s for s in (opts.faults, marker.args[0] if marker else None) if s)
    # Each test gets its own device, seeded from --sim-seed and the test id: reproducible,
    # and independent of test order.
    seed = opts.seed ^ zlib.crc32(request.node.nodeid.encode())
    options: dict[str, Any] = {}
    if state.baseline_image is not None:
        options["active_image"] = state.baseline_image.data
    trust = _sim_trust(request.node, opts.sim_trust)
    if opts.sim_firmware != "python":  # --sim-firmware=c: the C core inside the simulator
        options.update(firmware_core=opts.sim_firmware, firmware_library=opts.sim_firmware_lib)
    try:
        target = open_in_process(  # the simulator, only when a test needs it
            kind,
            name=opts.name,
            address=state.address,
            faults=spec,
            seed=seed,
            firmware_bugs=opts.firmware_bugs,
            flash_spec=opts.sim_flash,
            sim_trust=trust,
            **options,
        )
    except refused as exc:  # the test's plan needs BlueZ; the Bumble link refuses it
        pytest.skip(str(exc))
    request.node.stash[TARGET] = target
    assert target.sim is not None
    if state.sim_first is None:
        state.sim_first = target.sim.firmware.info()
        state.address = state.address or target.address  # what the report names
    yield target


def _sim_trust(item: pytest.Item, default: str) -> str:
    """``@pytest.mark.sim_trust("none")``: this test's simulated ball is a v1 ball (or
    ``"test"``: signed-only) whatever ``--sim-trust`` says."""
    marker = item.get_closest_marker("sim_trust")
    return str(marker.args[0]) if marker and marker.args else default


def _return_to_baseline(
    item: pytest.Item, state: SmartBallSession, target: Target, settings: OtaSettings
) -> None:
    from ..known_state import ResetFailed, return_to_baseline

    device = state.mine
    if device is None:
        return
    try:
        outcome = loops.run(
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
        item.stash.setdefault(UPDATES, []).append(
            Update(
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
def smartball_monitor(request: pytest.FixtureRequest) -> Iterator[ContractWatch]:
    """The contract monitor on every NUS link this test opens (docs/protocol.md, section
    15): the test fails with the first frame that breaks protocol v1, also when its own
    assertions passed. ``hil_tests/conftest.py`` uses it for every release-gate test."""
    watch = ContractWatch()
    request.node.stash[WATCH] = watch
    watch.start()
    yield watch
    watch.stop()


def _note_reset(request: pytest.FixtureRequest, target: Target) -> None:
    watch = request.node.stash.get(WATCH, None)
    if watch is not None:
        watch.note_reset(target.backend, target.address)


@pytest.fixture
def sim_device(smartball: Target) -> Any:
    """The simulated SmartBall (smartball_sim.device.SimDevice); skips the test on real
    hardware."""
    if smartball.sim is None:
        pytest.skip("needs the simulator (--device=sim)")
    return smartball.sim


@pytest.fixture(scope="session")
def sim_firmware_bugs(smartball_options: SmartBallOptions) -> tuple[str, ...]:
    """The catalogue names of the firmware bugs every simulated SmartBall of the run has
    (``--sim-firmware-bug``): a test that builds its own simulated devices passes them on,
    so the whole suite meets the same firmware."""
    return smartball_options.firmware_bugs


@pytest.fixture
def smartball_figures(request: pytest.FixtureRequest) -> FigureRecorder:
    """Record what the test measures: ``smartball_figures.record("verify_s", 0.2,
    limit=1.1)``; the figures go into the JUnit properties (``figure.NAME``) and the
    report. ``check_limits()`` fails the test naming every figure beyond its limit."""
    return request.node.stash.setdefault(FIGURES, FigureRecorder())


@dataclass(slots=True)
class SoakPlan:
    """What ``--smartball-soak N`` asks for: N updates (None: no soak), the fault plan to
    re-arm before each on the simulator, the baseline image, and where the summary goes."""

    updates: int | None
    faults: str | None
    baseline: FirmwareImage | None
    _item: pytest.Item

    def record(self, summary: dict[str, Any]) -> None:
        """A device's soak summary (pytest_smartball.soak.summary), for the report."""
        self._item.stash.setdefault(SOAKS, []).append(summary)


@pytest.fixture
def smartball_soak(request: pytest.FixtureRequest, smartball: Target) -> SoakPlan:
    """The soak the run asks for (``--smartball-soak N``); hil_tests/test_soak.py runs it.
    The baseline is ``--baseline-firmware``, on the simulator by default the image its
    device runs."""
    state = smartball_session(request.config)
    opts, baseline = state.options, state.baseline_image
    if baseline is None and smartball.sim is not None:
        baseline = FirmwareImage(smartball.sim.firmware.active.data, "the simulated device's image")
    if opts.soak and baseline is not None and baseline.manifest is None:
        # A signed-only device takes the baseline back only signed, at its counter.
        baseline = _signed_form(request, baseline, request.getfixturevalue("tmp_path_factory"))
    return SoakPlan(opts.soak, opts.faults, baseline, request.node)


#: Why a reset-mid-update test skips on a bench that cannot cut a board's power.
NO_POWER_CYCLE = (
    "resetting a board mid-update needs a lab that can cut its power: implement the "
    "pytest_smartball_power_cycle(config, device) hook in a conftest.py"
)


@pytest.fixture
def power_cycle(request: pytest.FixtureRequest, smartball: Target) -> Callable[[], Awaitable[None]]:
    """``await power_cycle()`` cuts the power of the device under test and restores it
    (it then boots and advertises on its own). The simulator resets its device; real
    hardware needs the lab's ``pytest_smartball_power_cycle`` hook, else the test skips."""
    if smartball.sim is not None:
        sim = smartball.sim

        async def reset_simulated() -> None:
            sim.reboot()
            _note_reset(request, smartball)

        return reset_simulated
    config = request.config
    hook = config.hook.pytest_smartball_power_cycle
    if not hook.get_hookimpls():
        pytest.skip(NO_POWER_CYCLE)

    async def cut_power() -> None:
        done = await asyncio.to_thread(hook, config=config, device=smartball)
        if not done:
            who = smartball.address or smartball.name
            pytest.fail(f"pytest_smartball_power_cycle did not power-cycle {who}", pytrace=False)
        _note_reset(request, smartball)

    return cut_power


@pytest.fixture(scope="session")
def smartball_signer(smartball_options: SmartBallOptions) -> SuiteSigner | None:
    """The key the suite signs its test images with: ``--signing-key``, on the simulator
    by default the repository's test key; None on hardware without ``--signing-key`` (a
    signed-only board then stops the run at its start)."""
    from ..suite_signer import SuiteSigner  # the crypto library, only when a test asks

    if smartball_options.signing_key is None and smartball_options.device == "real":
        return None
    return SuiteSigner.load(smartball_options.signing_key)


def device_signed_only(config: pytest.Config) -> bool:
    """Whether the devices of this run run only signed images: on hardware what their
    MSG_INFO said at the start, on the simulator what ``--sim-trust`` provisions."""
    state = smartball_session(config)
    if state.options.device == "real":
        device = state.mine
        return device is not None and device.current.signed_only
    return state.options.sim_trust != "none"


def device_security_counter(config: pytest.Config) -> int:
    """The security counter of the run's device as far as the plugin knows (0 on the
    simulator, which provisions its balls at 0)."""
    device = smartball_session(config).mine
    return device.current.security_counter if device is not None else 0


@pytest.fixture(scope="session")
def firmware_image(
    request: pytest.FixtureRequest,
    smartball_options: SmartBallOptions,
    tmp_path_factory: pytest.TempPathFactory,
) -> FirmwareImage:
    """The image OTA tests flash: --firmware, or a generated one on the simulator. On a
    device that runs only signed images, its signed form: --firmware as it is when it is
    a signed image already, else signed here with the suite's key (``--signing-key``) and
    the device's security counter. Behind ``--bluez=emulated|vhci`` (balls that run in real
    time): --firmware, or a small generated image, as it is."""
    if smartball_session(request.config).kind.real_time_image:
        return real_time_firmware_image(smartball_options.firmware, smartball_options.seed)
    if smartball_options.firmware:
        image = load_image(smartball_options.firmware)
        with open(smartball_options.firmware, "rb") as given:
            already_signed = is_signed_image(given.read(4))
    elif smartball_options.device == "real":
        pytest.skip("OTA tests on real hardware need --firmware PATH")
    else:
        image, already_signed = generated_image(smartball_options.seed), False
    if already_signed:
        return image
    return _signed_form(request, image, tmp_path_factory)


def _signed_form(
    request: pytest.FixtureRequest, image: FirmwareImage, tmp_path_factory: pytest.TempPathFactory
) -> FirmwareImage:
    """``image`` as a signed-only device takes it (signed with the suite's key at the
    device's security counter); ``image`` itself for any other device."""
    if not device_signed_only(request.config):
        return image
    signer: SuiteSigner | None = request.getfixturevalue("smartball_signer")
    if signer is None:
        pytest.fail(
            "the device runs only signed images and the suite has no key to sign "
            f"{image.source} with: give it the key the device trusts with --signing-key PATH",
            pytrace=False,
        )
    signed = signer.sign(image.data, counter=device_security_counter(request.config))
    path = tmp_path_factory.mktemp("signed") / (Path(image.source).stem + ".sbi")
    path.write_bytes(signed.encode())
    try:
        return load_image(str(path))
    except ImageError as exc:
        pytest.fail(f"the signed form of {image.source}: {exc}", pytrace=False)


@pytest.fixture
def link_settings(pytestconfig: pytest.Config, smartball_options: SmartBallOptions) -> LinkSettings:
    if smartball_session(pytestconfig).kind.fast_settings:  # balls that erase a page in 5 ms
        return FAST_LINK
    return LinkSettings(scan_timeout_s=smartball_options.scan_timeout)


@pytest.fixture
def ota_settings(pytestconfig: pytest.Config, link_settings: LinkSettings) -> OtaSettings:
    if smartball_session(pytestconfig).kind.fast_settings:
        return FAST_OTA
    return OtaSettings(link=link_settings)


@contextlib.contextmanager
def _virtual_time(target: Target) -> Iterator[None]:
    """looptime compacts time only inside tests; fixtures that talk to the simulator
    switch it on themselves, so connecting costs no wall time."""
    loop = asyncio.get_running_loop()
    enable = getattr(loop, "looptime_enabled", None)
    if target.is_sim and enable is not None and not loop.looptime_on:  # type: ignore[attr-defined]
        with enable():
            yield
    else:
        yield


def skip_a_raw_link_under_a_global_plan(options: SmartBallOptions) -> None:
    """A test on a raw NUS link (the ``nus`` fixture, or a host of its own) skips under
    ``--sim-faults``: a raw link has no recovery by design, so a plan for every test would
    only break it."""
    if options.faults:
        pytest.skip(
            f"a raw NUS link test: --sim-faults {options.faults!r} applies to "
            "updates through the OTA engine (a raw link has no recovery); give this test "
            "its own plan with @pytest.mark.faults"
        )


@pytest_asyncio.fixture
async def nus(
    request: pytest.FixtureRequest,
    smartball: Target,
    link_settings: LinkSettings,
    smartball_options: SmartBallOptions,
) -> AsyncIterator[NusLink]:
    """A connected NUS link to the device under test. Skipped under ``--sim-faults``: a
    raw link has no recovery by design, so a plan for every test would only break it."""
    skip_a_raw_link_under_a_global_plan(smartball_options)
    events = request.node.stash.setdefault(LINK_EVENTS, [])
    loop = asyncio.get_running_loop()

    def on_event(kind: str, detail: str) -> None:
        events.append((loop.time(), f"client  {'nus ' + kind:<16} {detail}"))

    with _virtual_time(smartball):
        sighting = await find_device(
            smartball.backend,
            name=smartball.name,
            address=smartball.address,
            timeout=link_settings.scan_timeout_s,
        )
        link = await NusLink.open(
            sighting.ble_device, smartball.backend, link_settings, on_event=on_event
        )
    yield link
    with _virtual_time(smartball):
        await link.close()


@pytest.fixture
def ota(
    request: pytest.FixtureRequest,
    smartball: Target,
    firmware_image: FirmwareImage,
    ota_settings: OtaSettings,
) -> Callable[..., OtaEngine]:
    """Factory for an OTA engine aimed at the device under test: ``ota(image=None, **kw)``."""

    engines = request.node.stash.setdefault(ENGINES, [])
    updates = request.node.stash.setdefault(UPDATES, [])
    state = smartball_session(request.config)

    def make(image: FirmwareImage | None = None, **kwargs: Any) -> OtaEngine:
        kwargs.setdefault("settings", ota_settings)
        trace = ProgressTrace()  # the offsets over time, for the release page
        test_progress = kwargs.pop("on_progress", None)

        def on_progress(phase: str, done: int, total: int) -> None:
            trace.add(asyncio.get_running_loop().time() - engine.started_at, phase, done, total)
            if test_progress is not None:
                test_progress(phase, done, total)

        engine = OtaEngine(
            image or firmware_image,
            smartball.backend,
            name=smartball.name,
            address=smartball.address,
            on_progress=on_progress,
            **kwargs,
        )
        engines.append(engine)  # for the timeline shown when the test fails
        before = _known_info(smartball, state, updates)
        updates.append(Update(engine.image, engine.result, before, engine=engine, progress=trace))
        return engine

    return make


def _known_info(target: Target, state: SmartBallSession, updates: list[Update]) -> p.MsgInfo | None:
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

"""pytest plugin: ``pytest --device=sim`` (CI) or ``--device=real`` (a bench with hardware).

Registered through the ``pytest11`` entry point, so installing the package is all a user
needs. This module only registers: the options (:mod:`.options`), the hook specs
(:mod:`.hooks`), markers, and the modules that do the work:

* :mod:`.fixtures`: ``smartball``, ``nus``, ``ota``, ``firmware_image``, ``sim_device``;
* :mod:`.session`: the run's devices, preflight on real hardware, pytest-xdist, the header;
* :mod:`.recording`: every update's figures, the JSON report, the timeline of a failure;
* :mod:`.served`: ``--bluez=emulated|vhci``, simulated SmartBalls served to the real path.

Every pytest concern of the package lives in this folder; the library beside it (codec,
image, link, engine, targets, BlueZ helpers) imports no pytest.

The plugin acts only on tests that use its fixtures or markers: on the simulator those run
on looptime's virtual clock; every other test runs exactly as it would without the plugin.
Nothing here imports the simulator; :mod:`.targets` does, when a test asks for it.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import pytest

from ..link import BleBackend
from ..targets import NoSuchTarget, kind_of
from . import served
from .command_line import (
    DEVICE_CLASH,
    DEVICE_DEST,
    NEEDS_DEVICE,
    add_device_option,
    add_options,
    command_words,
    device_flag,
)
from .farm import add_options as add_farm_options

# In import order: each module imports only those before it.
pytest_plugins = [
    "pytest_smartball.plugin.session",
    "pytest_smartball.plugin.recording",
    "pytest_smartball.plugin.fixtures",
    "pytest_smartball.plugin.monitoring",
    "pytest_smartball.plugin.served",
]

#: pytest-timeout for each test on real hardware unless --timeout is given: a real update
#: of a full image takes minutes, and so may putting the baseline back after it.
REAL_TEST_TIMEOUT_S = 900

#: Markers whose tests are the plugin's business (they get virtual time on the simulator).
SMARTBALL_MARKERS = ("faults", "sim_only", "real_only")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


#: ``--device=sim|real`` was given where --device is another's option (see
#: :func:`_asks_for_our_device`).
_ASKED_FOR_OURS = pytest.StashKey[bool]()
#: The sentence of a ``--device`` clash found while options were added (before a config).
_device_clash: list[str | None] = []


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    add_options(parser)
    add_farm_options(parser)
    _device_clash.clear()
    if _registered_by_a_conftest(pluginmanager):
        # A conftest's ``pytest_plugins`` loaded us: the initial conftests are being loaded
        # now and pytest_load_initial_conftests has passed us by; add --device at once.
        _device_clash.append(add_device_option(parser))


def _registered_by_a_conftest(pluginmanager: pytest.PytestPluginManager) -> bool:
    return any(
        str(getattr(plugin, "__file__", "") or "").endswith("conftest.py")
        for plugin in pluginmanager.get_plugins()
    )


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser
) -> Generator[None, None, None]:
    """``--device`` is added after every plugin and the initial conftests have added theirs:
    a project whose conftest has its own ``--device`` (``--device=cpu|gpu``) keeps it, and
    the SmartBall device is then chosen with ``--smartball-device``."""
    result = yield
    if not _device_clash:
        _device_clash.append(add_device_option(parser))
    return result


def pytest_configure(config: pytest.Config) -> None:
    clash = _device_clash[0] if _device_clash else None
    if clash is not None:
        config.stash[DEVICE_CLASH] = clash
        # Judged once tests are collected: in a run of only the project's own tests,
        # --device=sim means whatever the project means by it.
        config.stash[_ASKED_FOR_OURS] = _asks_for_our_device(command_words(config))
    examples = config.getoption("--fuzz-examples")
    if examples is not None:
        from hypothesis import settings

        settings.register_profile("smartball-fuzz", settings.default, max_examples=examples)
        settings.load_profile("smartball-fuzz")
    config.addinivalue_line("markers", "sim_only: runs only with --device=sim")
    config.addinivalue_line("markers", "real_only: runs only with --device=real")
    config.addinivalue_line(
        "markers",
        "sim_trust(trust): what this test's simulated device trusts, 'test' or 'none' "
        "(a v1 ball), instead of --sim-trust (sim only)",
    )
    config.addinivalue_line(
        "markers", "faults(spec): fault plan for this test's simulated device (sim only)"
    )
    from .recording import Recorder

    config.pluginmanager.register(Recorder(config), "smartball-recorder")
    try:
        kind = kind_of(
            config.getoption(DEVICE_DEST),
            config.getoption("--sim-link"),
            config.getoption("--bluez"),
        )
    except NoSuchTarget as exc:
        raise pytest.UsageError(str(exc)) from None
    # Before the session starts: preflight and every bleak bus then use what they serve.
    served.start(config, kind)
    from . import farm

    if farm.requested(config):  # labgrid's plugin is active: the balls come from its places
        farm.start(config)


@pytest.hookimpl(trylast=True)
def pytest_smartball_backend(config: pytest.Config, adapter: str) -> BleBackend:
    return BleBackend(adapter=adapter)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    device = config.getoption(DEVICE_DEST)
    flag = device_flag(config)
    skip_sim = pytest.mark.skip(reason=f"needs the simulator ({flag}=sim)")
    skip_real = pytest.mark.skip(reason=f"needs real hardware ({flag}=real)")
    real_timeout = (
        device == "real"
        and config.pluginmanager.has_plugin("timeout")
        and config.getoption("timeout", None) is None
    )
    needs_device = False
    for item in items:
        if not _uses_the_plugin(item):
            continue  # not the plugin's business: untouched
        needs_device = True
        faults = item.get_closest_marker("faults")
        if faults is not None:
            _check_fault_marker(item, faults)
        if device == "real" and (item.get_closest_marker("sim_only") or faults is not None):
            # A test that relies on an injected fault would pass without testing anything.
            item.add_marker(skip_sim)
        if device == "sim" and item.get_closest_marker("real_only"):
            item.add_marker(skip_real)
        if (
            device == "sim"
            and item.get_closest_marker("asyncio")
            and not item.get_closest_marker("looptime")
        ):
            # Simulated devices run on a virtual clock: a 40 s erase costs milliseconds.
            item.add_marker(pytest.mark.looptime)
        if real_timeout and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(REAL_TEST_TIMEOUT_S))
    config.stash[NEEDS_DEVICE] = needs_device
    if needs_device and config.stash.get(_ASKED_FOR_OURS, False):
        if not hasattr(config, "workerinput"):
            raise pytest.UsageError(config.stash[DEVICE_CLASH])
        # An xdist worker: a usage error here crashes it (INTERNALERROR) and the controller,
        # which collects nothing, cannot raise one; each test that needs the device fails
        # at its set-up with the sentence instead (see pytest_runtest_setup).
        for item in items:
            if _uses_the_plugin(item):
                item.stash[_DEVICE_NOT_CHOSEN] = config.stash[DEVICE_CLASH]


#: On an xdist worker: why this test cannot run (--device=sim|real reached another's option).
_DEVICE_NOT_CHOSEN = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    sentence = item.stash.get(_DEVICE_NOT_CHOSEN, None)
    if sentence is not None:  # before any fixture starts a device
        pytest.fail(sentence, pytrace=False)


def _uses_the_plugin(item: pytest.Item) -> bool:
    """The test uses the SmartBall fixtures or markers (else it is none of our business)."""
    from .fixtures import SMARTBALL_FIXTURES

    return any(item.get_closest_marker(m) for m in SMARTBALL_MARKERS) or bool(
        SMARTBALL_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    )


def _asks_for_our_device(args: Sequence[str]) -> bool:
    """``--device=sim`` or ``--device real`` among the run's options where --device is another's
    option and ``--smartball-device`` is not given: the user meant ours; running on the
    default device instead would be a result that was not asked for."""
    words = [str(a) for a in args]
    if any(w.startswith("--smartball-device") for w in words):
        return False
    for index, word in enumerate(words):
        value = word.partition("=")[2] if word.startswith("--device=") else None
        if word == "--device" and index + 1 < len(words):
            value = words[index + 1]
        if value in ("sim", "real"):
            return True
    return False


def _check_fault_marker(item: pytest.Item, marker: pytest.Mark) -> None:
    from ..targets.simulated import fault_spec_problem  # a fault plan asks for the simulator

    problem = fault_spec_problem(marker.args[0] if marker.args else "")
    if problem:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.faults: {problem}")

"""pytest plugin: ``pytest --device=sim`` (CI) or ``--device=real`` (a bench with hardware).

Registered through the ``pytest11`` entry point, so installing the package is all a user
needs. This module only registers: the options (:mod:`.options`), the hook specs
(:mod:`.hooks`), markers, and the modules that do the work:

* :mod:`.fixtures`: ``smartball``, ``nus``, ``ota``, ``firmware_image``, ``sim_device``;
* :mod:`.session`: the run's devices, preflight on real hardware, pytest-xdist, the header;
* :mod:`.recording`: every update's figures, the JSON report, the timeline of a failure.

The plugin acts only on tests that use its fixtures or markers: on the simulator those run
on looptime's virtual clock; every other test runs exactly as it would without the plugin.
Nothing here imports the simulator; :mod:`.targets` does, when a test asks for it.
"""

from __future__ import annotations

import pytest

from .link import BleBackend
from .options import NEEDS_DEVICE, add_options

# In import order: each module imports only those before it.
pytest_plugins = [
    "pytest_smartball.session",
    "pytest_smartball.recording",
    "pytest_smartball.fixtures",
    "pytest_smartball.monitoring",
]

#: pytest-timeout for each test on real hardware unless --timeout is given: a real update
#: of a full image takes minutes, and so may putting the baseline back after it.
REAL_TEST_TIMEOUT_S = 900

#: Markers whose tests are the plugin's business (they get virtual time on the simulator).
SMARTBALL_MARKERS = ("faults", "sim_only", "real_only")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


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
    from .recording import Recorder

    config.pluginmanager.register(Recorder(config), "smartball-recorder")
    bluez = config.getoption("--bluez")
    # Before the session starts: preflight and every bleak bus then use what they serve.
    if bluez == "emulated":
        from .targets.emulated_bluez import start

        start(config)
    elif bluez == "vhci":
        from .targets.vhci_bluez import start as start_vhci

        start_vhci(config)


@pytest.hookimpl(trylast=True)
def pytest_smartball_backend(config: pytest.Config, adapter: str) -> BleBackend:
    return BleBackend(adapter=adapter)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from .fixtures import SMARTBALL_FIXTURES

    device = config.getoption("--device")
    skip_sim = pytest.mark.skip(reason="needs the simulator (--device=sim)")
    skip_real = pytest.mark.skip(reason="needs real hardware (--device=real)")
    real_timeout = (
        device == "real"
        and config.pluginmanager.has_plugin("timeout")
        and config.getoption("timeout", None) is None
    )
    needs_device = False
    for item in items:
        ours = any(item.get_closest_marker(m) for m in SMARTBALL_MARKERS) or bool(
            SMARTBALL_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        )
        if not ours:
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


def _check_fault_marker(item: pytest.Item, marker: pytest.Mark) -> None:
    from .targets.simulated import fault_spec_problem  # a fault plan asks for the simulator

    problem = fault_spec_problem(marker.args[0] if marker.args else "")
    if problem:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.faults: {problem}")

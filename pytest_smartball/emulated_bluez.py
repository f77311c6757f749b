"""``pytest --device=real --bluez=emulated``: the real-device path against the emulated BlueZ.

:func:`start` is called from ``pytest_smartball.plugin``'s ``pytest_configure`` when the
option is given, before the session starts (so before the plugin's real-device preflight
and any bleak use). It starts the private ``dbus-daemon`` and the emulator serving one
simulated SmartBall per ``--ble-address`` (or one at the simulator's default address),
sets ``DBUS_SYSTEM_BUS_ADDRESS`` and the fake ``bluetoothctl`` for this process, and stops
everything when pytest unconfigures (also after failures or Ctrl-C; ``atexit`` and the
daemon's pid cover a crash). The ``--device=real`` code path then runs unchanged:
preflight finds the emulated adapter and the device, the fixtures connect through
bleak's BlueZ backend, and devices are returned to their baseline between tests.

What differs from a bench, on purpose, is time: the devices erase a page in 5 ms and boot
in 0.3 s, and the fixtures below override the plugin's settings with short settle,
stabilise and backoff delays. ``--sim-faults`` applies to the emulated devices (for the
whole session: each fault fires once), and ``--baseline-firmware`` becomes the image
they run at the start.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import pytest
from smartball_sim.bluez.launcher import DbusDaemonMissing, EmulatedBluez, emulated_smartball
from smartball_sim.device import DEFAULT_ADDRESS

from .image import FirmwareImage, load_image
from .link import LinkSettings
from .ota import OtaSettings

#: The image OTA tests flash when --firmware is not given (small: real time).
GENERATED_IMAGE_SIZE = 16_195

_STASH = pytest.StashKey[EmulatedBluez]()


def start(config: pytest.Config) -> EmulatedBluez:
    if config.getoption("--device") != "real":
        raise pytest.UsageError(
            "--bluez=emulated replaces bluetoothd for the real-device path: use it with "
            "--device=real (--device=sim needs no BlueZ at all)"
        )
    from .plugin import _options

    name = config.getoption("--ble-name")
    addresses = _options(config).addresses or (DEFAULT_ADDRESS,)
    options: dict[str, Any] = {}
    baseline = config.getoption("--baseline-firmware")
    if baseline:
        options["active_image"] = load_image(baseline).data
    faults = config.getoption("--sim-faults")
    seed = config.getoption("--sim-seed")
    devices = [
        emulated_smartball(name, address, faults=faults, seed=seed + i, **options)
        for i, address in enumerate(addresses)
    ]
    try:
        bluez = EmulatedBluez(devices, adapter=config.getoption("--ble-adapter")).start()
    except (DbusDaemonMissing, OSError, RuntimeError) as exc:
        raise pytest.UsageError(f"--bluez=emulated: {exc}") from None
    config.stash[_STASH] = bluez
    config.add_cleanup(bluez.stop)
    # Registered after pytest_smartball.plugin: its fixtures below override the plugin's.
    config.pluginmanager.register(sys.modules[__name__], "smartball-emulated-bluez")
    return bluez


def emulated(config: pytest.Config) -> EmulatedBluez | None:
    """The running emulated BlueZ of this session, if any."""
    return config.stash.get(_STASH, None)


# --- fixtures (active only once start() registered this module) -------------------------


@pytest.fixture(scope="session")
def emulated_bluez(pytestconfig: pytest.Config) -> EmulatedBluez:
    """The session's emulated BlueZ (its devices: ``emulated_bluez.devices``; run code
    on their loop with ``emulated_bluez.call``)."""
    bluez = emulated(pytestconfig)
    assert bluez is not None
    return bluez


#: Short pauses for emulated devices that erase a page in 5 ms and boot in 0.3 s.
FAST_LINK = LinkSettings(settle_s=0.05, services_retry_backoff_s=0.05, scan_timeout_s=5.0)
FAST_OTA = OtaSettings(
    link=FAST_LINK,
    stabilise_s=0.05,
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    reappear_timeout_s=10.0,
)


@pytest.fixture
def link_settings() -> LinkSettings:
    return FAST_LINK


@pytest.fixture
def ota_settings() -> OtaSettings:
    return FAST_OTA


@pytest.fixture(scope="session")
def smartball_reset_settings() -> OtaSettings:
    return FAST_OTA


@pytest.fixture(scope="session")
def firmware_image(pytestconfig: pytest.Config) -> FirmwareImage:
    path = pytestconfig.getoption("--firmware")
    if path:
        return load_image(path)
    seed = pytestconfig.getoption("--sim-seed")
    data = random.Random(seed).randbytes(GENERATED_IMAGE_SIZE)
    return FirmwareImage(data, f"generated-{GENERATED_IMAGE_SIZE}.bin")

"""``--bluez=emulated``: the real-device path against the emulated BlueZ (pytest and CLI).

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

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from smartball_sim.bluez.launcher import (
    DbusDaemonMissing,
    EmulatedBluez,
    emulated_smartball,
    fake_bluetoothctl,
)
from smartball_sim.device import DEFAULT_ADDRESS
from smartball_sim.firmware.model import FlashTimings

from ..image import FirmwareImage, load_image
from ..link import LinkSettings
from ..options import read_options
from ..ota import OtaSettings
from . import real_time_firmware_image


class EmulatorUnavailable(RuntimeError):
    """The emulated BlueZ could not start (one sentence: what is missing)."""


@contextmanager
def running_emulator(
    name: str,
    addresses: Sequence[str],
    *,
    adapter: str = "hci0",
    faults: Any = None,
    seed: int = 0,
    erase_time_s: float | None = None,
    active_image: bytes | None = None,
) -> Iterator[EmulatedBluez]:
    """A private dbus-daemon and an emulated bluetoothd serving one simulated SmartBall per
    address, for as long as the ``with`` block runs (the CLI's ``--bluez=emulated``)."""
    options: dict[str, Any] = {}
    if erase_time_s:
        options["flash"] = FlashTimings(erase_total_s=erase_time_s)
    if active_image is not None:
        options["active_image"] = active_image
    devices = [
        emulated_smartball(name, address, faults=faults, seed=seed + i, **options)
        for i, address in enumerate(addresses or (DEFAULT_ADDRESS,))
    ]
    try:
        bluez = EmulatedBluez(devices, adapter=adapter).start()
    except (DbusDaemonMissing, OSError, RuntimeError) as exc:
        raise EmulatorUnavailable(f"cannot start the emulated BlueZ: {exc}") from None
    try:
        yield bluez
    finally:
        bluez.stop()


@contextmanager
def attached_emulator(bus_address: str) -> Iterator[None]:
    """``--bluez=emulated --bus ADDRESS``: the real-device path against an emulated BlueZ that
    runs in a process of its own (``python -m smartball_sim.bluez serve``), whose simulated
    SmartBalls outlive this process. For the ``with`` block: ``DBUS_SYSTEM_BUS_ADDRESS`` is
    ADDRESS and the emulated BlueZ's ``bluetoothctl --version`` comes first on ``PATH``."""
    bin_dir = fake_bluetoothctl()
    saved = {key: os.environ.get(key) for key in ("DBUS_SYSTEM_BUS_ADDRESS", "PATH")}
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{saved['PATH'] or ''}"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(bin_dir, ignore_errors=True)


_STASH = pytest.StashKey[EmulatedBluez]()


def start(config: pytest.Config) -> EmulatedBluez:
    if config.getoption("smartball_device") != "real":
        raise pytest.UsageError(
            "--bluez=emulated replaces bluetoothd for the real-device path: use it with "
            "--device=real (--device=sim needs no BlueZ at all)"
        )
    opts = read_options(config)
    options: dict[str, Any] = {}
    if opts.baseline:
        options["active_image"] = load_image(opts.baseline).data
    devices = [
        emulated_smartball(opts.name, address, faults=opts.faults, seed=opts.seed + i, **options)
        for i, address in enumerate(opts.addresses or (DEFAULT_ADDRESS,))
    ]
    try:
        bluez = EmulatedBluez(devices, adapter=opts.adapter).start()
    except (DbusDaemonMissing, OSError, RuntimeError) as exc:
        raise pytest.UsageError(f"--bluez=emulated: {exc}") from None
    config.stash[_STASH] = bluez
    config.add_cleanup(bluez.stop)
    # Registered after the plugin's fixtures module: the fixtures below override those.
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
    return real_time_firmware_image(pytestconfig)

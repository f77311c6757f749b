"""``--bluez=emulated``: the real-device path against the emulated BlueZ (pytest and CLI).

:func:`start_emulator` starts the private ``dbus-daemon`` and the emulator serving one
simulated SmartBall per address (or one at the simulator's default address) and sets
``DBUS_SYSTEM_BUS_ADDRESS`` and the fake ``bluetoothctl`` for this process (``atexit``
and the daemon's pid cover a crash). The pytest plugin calls it from ``pytest_configure``
(:mod:`pytest_smartball.plugin.served`), before its real-device preflight and any bleak
use; the CLI runs a command inside :func:`running_emulator`. The ``--device=real`` code
path then runs unchanged: preflight finds the emulated adapter and the device, the
fixtures connect through bleak's BlueZ backend, and devices are returned to their
baseline between tests.

What differs from a bench, on purpose, is time: the devices erase a page in 5 ms and boot
in 0.3 s, and the plugin uses :data:`~pytest_smartball.targets.FAST_OTA`'s short settle,
stabilise and backoff delays with them. ``--sim-faults`` applies to the emulated devices
(for the whole session: each fault fires once), and ``--baseline-firmware`` becomes the
image they run at the start.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from smartball_sim.bluez.launcher import (
    DbusDaemonMissing,
    EmulatedBluez,
    emulated_smartball,
    fake_bluetoothctl,
)
from smartball_sim.device import DEFAULT_ADDRESS
from smartball_sim.firmware.model import FlashTimings

from . import TargetUnavailable


class EmulatorUnavailable(TargetUnavailable):
    """The emulated BlueZ could not start (one sentence: what is missing)."""


def start_emulator(
    name: str,
    addresses: Sequence[str],
    *,
    adapter: str = "hci0",
    faults: Any = None,
    seed: int = 0,
    erase_time_s: float | None = None,
    active_image: bytes | None = None,
) -> EmulatedBluez:
    """A private dbus-daemon and an emulated bluetoothd serving one simulated SmartBall per
    address (ball ``i`` seeded ``seed + i``); the caller stops it. EmulatorUnavailable
    (what failed) when it cannot start."""
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
        return EmulatedBluez(devices, adapter=adapter).start()
    except (DbusDaemonMissing, OSError, RuntimeError) as exc:
        raise EmulatorUnavailable(str(exc)) from None


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
    """:func:`start_emulator` for as long as the ``with`` block runs (the CLI's
    ``--bluez=emulated``)."""
    try:
        bluez = start_emulator(
            name,
            addresses,
            adapter=adapter,
            faults=faults,
            seed=seed,
            erase_time_s=erase_time_s,
            active_image=active_image,
        )
    except EmulatorUnavailable as exc:
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

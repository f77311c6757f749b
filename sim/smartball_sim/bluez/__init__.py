"""An emulated BlueZ (``org.bluez`` on a private D-Bus) serving simulated SmartBalls, so the
real ``--device=real`` path (stock bleak, its BlueZ backend, dbus-fast, a real
``dbus-daemon``) runs in CI. See ``docs/faults.md`` ("Emulated BlueZ")."""

from .emulator import BluezEmulator, EmulatorTiming
from .launcher import DbusDaemonMissing, EmulatedBluez, PrivateBus, emulated_smartball

__all__ = [
    "BluezEmulator",
    "DbusDaemonMissing",
    "EmulatedBluez",
    "EmulatorTiming",
    "PrivateBus",
    "emulated_smartball",
]

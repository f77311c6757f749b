"""What the emulator keeps per simulated device (``EmulatedDevice``: its path, link, GATT
objects and notify sessions) and its own latencies (``EmulatorTiming``). Plain data: it
names none of the objects that act on it, so every module of the emulator can import it."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from smartball_sim.device import SimDevice, SimLink


@dataclass(frozen=True, slots=True)
class EmulatorTiming:
    """The emulator's own latencies (the device's come from its RadioTimings)."""

    #: From ``Connected=true`` to the GATT objects and ``ServicesResolved=true``.
    gatt_discovery_s: float = 0.01
    #: The race: how long after ``ServicesResolved=true`` the NUS objects are exported.
    #: It needs a real gap (>= 5 ms) or bleak handles both signals before it looks.
    race_gap_s: float = 0.02
    #: RSSI updates while discovering (BlueZ reports each advertisement; a change only).
    rssi_interval_s: float = 0.1
    #: A ``Connect`` to a device that does not advertise fails after the kernel's L2CAP
    #: connect timeout (``L2CAP_CONN_TIMEOUT``) with ``le-connection-abort-by-local``: what
    #: real bluetoothd 5.66 on Linux 6.1 answered in tests/system/test_real_bluez.py.
    le_connect_timeout_s: float = 40.0


def device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


@dataclass(eq=False, slots=True)
class ExportedGatt:
    """The GATT objects exported for one device, by path, and which are NUS's."""

    paths: list[str] = field(default_factory=list)
    rx: str | None = None
    tx: str | None = None
    cccd: str | None = None
    stale: bool = False  # a cached database kept across disconnects (stale-cache)


@dataclass(eq=False, slots=True)
class EmulatedDevice:
    """One simulated device as bluetoothd knows it: its object, link and GATT objects."""

    sim: SimDevice
    path: str
    exported: bool = False
    link: SimLink | None = None
    connect_task: asyncio.Task[None] | None = None
    gatt: ExportedGatt = field(default_factory=ExportedGatt)
    #: StartNotify sessions on TX: unique bus names of the callers.
    notify_clients: set[str] = field(default_factory=set)
    notify_sock: socket.socket | None = None
    #: The current link's discovery raced (its objects go when it ends).
    link_raced: bool = False
    write_sock: socket.socket | None = None
    last_rssi: int | None = None

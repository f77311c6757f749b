"""BlueZ's words for what the simulated radio reports as data.

Two fronts speak BlueZ: the in-process bleak backend (it imitates bleak on BlueZ) and the
emulated bluetoothd (``smartball_sim.bluez``). Both turn a :class:`ConnectRefusal` into the
error BlueZ gives for it, from this one table.
"""

from __future__ import annotations

from ..device import ConnectRefusal

#: ``org.bluez.Error.Failed`` texts that ``Device1.Connect`` answers with.
CONNECT_FAILED_TEXT: dict[ConnectRefusal, str] = {
    ConnectRefusal.CANCELED: "br-connection-canceled",
    ConnectRefusal.ABORTED_AT_ONCE: "le-connection-abort-by-local",
}

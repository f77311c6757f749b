"""``--bluez=vhci``: the real-device path against this machine's real BlueZ, with simulated
SmartBalls behind a virtual controller (``smartball_sim.machines.vhci``).

The pytest plugin calls :func:`start_radio` from ``pytest_configure``
(:mod:`pytest_smartball.plugin.served`, before preflight and any bleak use); the CLI runs
its command inside :func:`running_virtual_radio`. Both need a Linux
kernel with ``hci_vhci`` (``/dev/vhci``, root or a udev rule) and a running ``bluetoothd``: a
developer's machine, or the VM of ``python -m smartball_sim.machines.vm`` (what CI uses).
Without them the run stops with one sentence saying what is missing.

Nothing above the controller is ours: the kernel's HCI and L2CAP, bluetoothd's GATT
client and D-Bus objects, bleak's BlueZ backend, bleak-retry-connector, preflight's BlueZ
checks and ``Adapter1.RemoveDevice`` all run unchanged. The plugin's own link and OTA
settings apply; only the devices are quick (5 ms per erased page, 0.3 s boot, as with
``--bluez=emulated``). ``--ble-adapter`` becomes the adapter the virtual controller got
(``hci0`` in the VM, ``hci1`` next to a laptop's own adapter). ``--sim-faults`` applies to
the devices for the whole session; ``vhci_radio.call(device.set_faults, SPEC)`` sets a plan
from a test.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import TargetUnavailable

if TYPE_CHECKING:  # the simulator is imported only when the radio is started
    from smartball_sim.machines.vhci import VirtualRadio

INSTALL_HINT = "--bluez=vhci needs Google's Bumble BLE stack: pip install bumble"


class VhciSetupError(TargetUnavailable):
    """The virtual radio cannot run here; the message is one sentence."""


def start_radio(
    name: str,
    addresses: Sequence[str],
    *,
    faults: str | None = None,
    seed: int = 0,
    erase_time_s: float | None = None,
    active_image: bytes | None = None,
) -> VirtualRadio:
    """Serve one simulated SmartBall per address behind a new virtual controller."""
    try:
        import bumble  # noqa: F401
    except ImportError:
        raise VhciSetupError(INSTALL_HINT) from None
    from smartball_sim.bluez.launcher import emulated_smartball
    from smartball_sim.device import DEFAULT_ADDRESS
    from smartball_sim.faults import FaultSpecError
    from smartball_sim.firmware.model import FlashTimings
    from smartball_sim.machines.vhci import VhciUnavailable, VirtualRadio

    options: dict[str, Any] = {}
    if erase_time_s:
        options["flash"] = FlashTimings(erase_total_s=erase_time_s)
    if active_image is not None:
        options["active_image"] = active_image
    try:
        devices = [
            emulated_smartball(name, address, faults=faults, seed=seed + i, **options)
            for i, address in enumerate(addresses or (DEFAULT_ADDRESS,))
        ]
        return VirtualRadio(devices).start()
    except (VhciUnavailable, FaultSpecError) as exc:
        raise VhciSetupError(str(exc)) from None


@contextmanager
def running_virtual_radio(
    name: str,
    addresses: Sequence[str],
    *,
    faults: str | None = None,
    seed: int = 0,
    erase_time_s: float | None = None,
) -> Iterator[VirtualRadio]:
    """The CLI's ``--bluez=vhci``: a simulated SmartBall behind a virtual controller for as
    long as the ``with`` block runs (raises VhciSetupError when it cannot run here)."""
    radio = start_radio(name, addresses, faults=faults, seed=seed, erase_time_s=erase_time_s)
    try:
        yield radio
    finally:
        radio.stop()

"""The simulated SmartBall reached through Google's Bumble BLE stack (``--sim-link=bumble``).

``make_bumble_target`` is the one entry the pytest plugin and the CLI call: the same
SimDevice as ``simulated.make_sim_target`` (firmware model, fault plan, seed), served by a
Bumble peripheral and reached by a Bumble central behind bleak's backend interface, so
every byte crosses real HCI, L2CAP and ATT. It runs on the same virtual clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .link import BleBackend

if TYPE_CHECKING:  # the simulator is imported only when a target is built
    from smartball_sim.bumble.central import BumbleWorld
    from smartball_sim.device import SimDevice
    from smartball_sim.faults import FaultPlan

INSTALL_HINT = (
    "--sim-link=bumble needs Google's Bumble BLE stack: pip install 'pytest-smartball[bumble]'"
)
SIM_LINKS = ("model", "bumble")


class BumbleUnavailable(Exception):
    """Bumble is not installed; the message says what to install."""


def require_bumble() -> None:
    """Raise BumbleUnavailable (one sentence) unless ``bumble`` can be imported."""
    try:
        import bumble  # noqa: F401
    except ImportError:
        raise BumbleUnavailable(INSTALL_HINT) from None


@dataclass(slots=True)
class BumbleTarget:
    """Same fields as ``simulated.SimTarget``: the device, its world, the bleak backend."""

    device: SimDevice
    world: BumbleWorld
    backend: BleBackend


def make_bumble_target(
    name: str = "SmartBall",
    address: str | None = None,
    *,
    faults: FaultPlan | str | None = None,
    seed: int = 0,
    exchange_mtu: int | None = 517,
    **device_options: Any,
) -> BumbleTarget:
    """A simulated SmartBall served by a Bumble peripheral, and the backend of a Bumble
    central that reaches it. ``exchange_mtu=None``: the central never exchanges the ATT
    MTU (the link stays at 23). Raises BumbleUnavailable without bumble, FaultSpecError for
    a fault the Bumble link cannot express (``race``, ``stale-cache``)."""
    require_bumble()
    from smartball_sim.bumble.central import BumbleWorld
    from smartball_sim.bumble.peripheral import plan_for_bumble, refuse_bluez_only
    from smartball_sim.device import DEFAULT_ADDRESS, FaultRecord, SimDevice

    plan, left_out = plan_for_bumble(faults)
    refuse_bluez_only(plan)
    device = SimDevice(name, address or DEFAULT_ADDRESS, faults=plan, seed=seed, **device_options)
    for fault in left_out:
        device.fault_log.append(
            FaultRecord(
                0.0,
                str(fault).split("@")[0],
                "not applied",
                "a BlueZ-only fault of the profile; the Bumble link has no BlueZ",
            )
        )
    world = BumbleWorld([device], exchange_mtu=exchange_mtu)
    backend = BleBackend(
        world.scanner_backend,
        world.client_backend,
        "sim-bumble",
        forget=world.forget,
        warnings=world.warnings,
    )
    return BumbleTarget(device, world, backend)

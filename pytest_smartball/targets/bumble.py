"""The simulated SmartBall reached through Google's Bumble BLE stack (``--sim-link=bumble``).

``make_bumble_target`` is the one entry the pytest plugin, the CLI, the fuzz properties and
the benchmark call: the same SimDevice as :func:`.simulated.make_sim_target` (firmware
model, fault plan, seed), served by a Bumble peripheral and reached by a Bumble central
behind bleak's backend interface, so every byte crosses real HCI, L2CAP and ATT. It runs on
the same virtual clock. Import it only when ``--sim-link=bumble`` is asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smartball_sim.bumble.faults import BlueZOnlyFault  # no bumble import

from ..contract import codec as p
from ..link import BleBackend
from . import Target

if TYPE_CHECKING:  # bumble loads when a target is built
    from smartball_sim.bumble.central import BumbleWorld
    from smartball_sim.device import SimDevice
    from smartball_sim.faults import FaultPlan

__all__ = [
    "INSTALL_HINT",
    "BlueZOnlyFault",
    "BumbleTarget",
    "BumbleUnavailable",
    "check_bumble_faults",
    "make_bumble_target",
]

INSTALL_HINT = (
    "--sim-link=bumble needs Google's Bumble BLE stack: pip install 'pytest-smartball[bumble]'"
)


class BumbleUnavailable(Exception):
    """Bumble is not installed; the message says what to install."""


def require_bumble() -> None:
    """Raise BumbleUnavailable (one sentence) unless ``bumble`` can be imported."""
    try:
        import bumble  # noqa: F401
    except ImportError:
        raise BumbleUnavailable(INSTALL_HINT) from None


@dataclass(slots=True)
class BumbleTarget(Target):
    """A Target whose device is served over Bumble, with the world that holds the stacks."""

    world: BumbleWorld | None = None

    @property
    def device(self) -> SimDevice:
        """The simulated device (always there on this kind of target)."""
        assert self.sim is not None
        return self.sim

    @property
    def negotiated_mtu(self) -> int | None:
        """The ATT MTU of the last connection the client set up (None before any)."""
        return self.world.negotiated_mtu if self.world is not None else None


def make_bumble_target(
    name: str = p.DEFAULT_NAME,
    address: str | None = None,
    *,
    faults: FaultPlan | str | None = None,
    seed: int = 0,
    erase_time_s: float | None = None,
    exchange_mtu: int | None = 517,
    firmware_bugs: Iterable[str] = (),
    flash_spec: str | None = None,
    sim_trust: str = "none",
    **device_options: Any,
) -> BumbleTarget:
    """A simulated SmartBall served by a Bumble peripheral, and the backend of a Bumble
    central that reaches it. ``exchange_mtu=None``: the central never exchanges the ATT
    MTU (the link stays at 23). ``firmware_bugs`` and ``flash_spec`` as for
    make_sim_target. Raises BumbleUnavailable without bumble, BlueZOnlyFault
    for a fault the Bumble link cannot express (``race``, ``stale-cache``); a named
    profile's BlueZ-only faults are left out and the fault log says so."""
    require_bumble()
    from smartball_sim.bumble.central import BumbleWorld
    from smartball_sim.bumble.faults import plan_for_bumble, refuse_bluez_only
    from smartball_sim.device import DEFAULT_ADDRESS, FaultRecord, SimDevice
    from smartball_sim.firmware.model import FlashTimings

    plan, left_out = plan_for_bumble(faults)
    refuse_bluez_only(plan)
    from smartball_sim.firmware.bugs import parse_bugs

    from .simulated import parse_flash_timings, trust_options

    device_options.update(trust_options(sim_trust))

    flash = parse_flash_timings(flash_spec) if flash_spec else FlashTimings()
    if erase_time_s:
        flash = dataclasses.replace(flash, erase_total_s=erase_time_s)
    if flash_spec or erase_time_s:
        device_options["flash"] = flash
    device = SimDevice(
        name,
        address or DEFAULT_ADDRESS,
        faults=plan,
        seed=seed,
        firmware_bugs=parse_bugs(firmware_bugs),
        **device_options,
    )
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
        forget=world.forget,
        warnings=world.warnings,
        link_faults=lambda address: device.fault_log,
    )
    return BumbleTarget(backend, device.name, device.address, device, world)


def check_bumble_faults(spec: str | None) -> None:
    """Before a run: BumbleUnavailable without bumble, BlueZOnlyFault (a FaultSpecError)
    for a plan the Bumble link refuses, so the run stops with one sentence before any test."""
    require_bumble()
    from smartball_sim.bumble.faults import plan_for_bumble, refuse_bluez_only

    plan, _ = plan_for_bumble(spec)
    refuse_bluez_only(plan)

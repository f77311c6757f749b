"""A simulated SmartBall in this process, behind bleak backends: how ``--device=sim``, the
CLI's ``--sim``, the fuzz properties and the benchmark reach one."""

from __future__ import annotations

from typing import Any

from smartball_sim.bleak_backend import SimWorld
from smartball_sim.device import DEFAULT_ADDRESS, SimDevice
from smartball_sim.faults import FaultPlan, FaultSpecError
from smartball_sim.firmware import FlashTimings

from .. import protocol as p
from ..link import BleBackend
from . import Target


def backend_for(world: SimWorld) -> BleBackend:
    return BleBackend(
        world.scanner_backend, world.client_backend, forget=world.forget, warnings=world.warnings
    )


def make_sim_target(
    name: str = p.DEFAULT_NAME,
    address: str | None = None,
    *,
    faults: FaultPlan | str | None = None,
    seed: int = 0,
    erase_time_s: float | None = None,
    **device_options: Any,
) -> Target:
    """A simulated SmartBall alone in its world, and the backend that reaches it.
    ``erase_time_s``: the whole staging erase takes that long (the field's 15-40 s)."""
    if erase_time_s:
        device_options["flash"] = FlashTimings(erase_total_s=erase_time_s)
    device = SimDevice(name, address or DEFAULT_ADDRESS, faults=faults, seed=seed, **device_options)
    world = SimWorld([device])
    return Target(backend_for(world), device.name, device.address, device)


def fault_spec_problem(spec: str) -> str | None:
    """Why a fault spec cannot be used (one sentence), or None."""
    try:
        FaultPlan.parse(spec)
    except FaultSpecError as exc:
        return str(exc)
    return None

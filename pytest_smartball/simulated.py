"""Glue for running the client against the simulator: one place that builds a simulated
SmartBall with its bleak backends, and runs coroutines on a virtual clock.

Used by the pytest plugin, the CLI's ``--sim``, the fuzz tests and the benchmarks. It sits
above both the client and the simulator (the simulator itself never imports the client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from smartball_sim.bleak_backend import SimWorld
from smartball_sim.device import DEFAULT_ADDRESS, SimDevice
from smartball_sim.faults import FaultPlan

from .link import BleBackend

T = TypeVar("T")


@dataclass(slots=True)
class SimTarget:
    device: SimDevice
    world: SimWorld
    backend: BleBackend


def backend_for(world: SimWorld) -> BleBackend:
    return BleBackend(
        world.scanner_backend,
        world.client_backend,
        "sim",
        forget=world.forget,
        warnings=world.warnings,
    )


def make_sim_target(
    name: str = "SmartBall",
    address: str = DEFAULT_ADDRESS,
    *,
    faults: FaultPlan | str | None = None,
    seed: int = 0,
    **device_options: Any,
) -> SimTarget:
    """A simulated SmartBall alone in its world, and the backend that reaches it."""
    device = SimDevice(name, address, faults=faults, seed=seed, **device_options)
    world = SimWorld([device])
    return SimTarget(device, world, backend_for(world))


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop with looptime's virtual clock: simulated
    seconds cost no wall time, and the same inputs give the same timings."""
    with asyncio.Runner(loop_factory=virtual_event_loop) as runner:  # cancels leftovers
        return runner.run(coro)


def virtual_event_loop() -> asyncio.AbstractEventLoop:
    """A looptime loop. Between two timers looptime spins ``noop_cycles`` idle iterations
    so that chained awaits schedule their timers before time jumps; 42 by default. Every
    await in the client and the simulator is scheduled within a few iterations, so 8 is
    ample, and it makes a simulated update several times cheaper in wall time. The fuzz
    properties, the CLI tests and the benchmark run on it; pytest's own async tests keep
    looptime's default."""
    import looptime

    return looptime.new_event_loop(start=0, noop_cycles=8)

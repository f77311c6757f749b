"""Which device a command talks to: the platform's radio, a simulated SmartBall in this
process (``--sim``), or simulated SmartBalls behind an emulated BlueZ
(``--bluez=emulated``). The simulator is imported here only, and only when asked for."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from tqdm import tqdm

from .. import loops
from ..bluez import BluezUnavailable, bluez_version, probe_adapter, version_warnings
from ..link import BleBackend
from ..targets import Target
from .args import PROG, Context
from .errors import EXIT_BAD_INPUT, EXIT_NOT_FOUND, CliError


def check_fault_spec(ctx: Context) -> None:
    """A bad --faults is bad input, found before anything starts."""
    if not ctx.args.faults or not (ctx.simulated or ctx.emulated):
        return
    from ..targets.simulated import fault_spec_problem

    problem = fault_spec_problem(ctx.args.faults)
    if problem:
        raise CliError(EXIT_BAD_INPUT, f"bad --faults: {problem}")


async def open_target(ctx: Context) -> Target:
    """Build the simulated device (inside the running loop: faults may schedule timers),
    or check BlueZ for the real radio (also what an emulated BlueZ serves)."""
    a = ctx.args
    if ctx.simulated:
        from ..targets.simulated import make_sim_target

        loop = asyncio.get_running_loop()
        t0 = loop.time()  # 0 on the virtual clock; fault-log times count from here
        target = make_sim_target(
            a.name,
            a.sim_address,
            faults=a.faults,
            seed=a.seed,
            erase_time_s=a.erase_time,
            firmware_bugs=a.sim_firmware_bug,
            clock=lambda: loop.time() - t0,
        )
        target.address = a.address or target.address  # --address looks for another one
        return target
    try:
        await probe_adapter(a.adapter)
    except BluezUnavailable as exc:
        raise CliError(EXIT_NOT_FOUND, f"{exc} (--sim needs no hardware)") from None
    if a.command != "flash":  # the engine reports them itself for flash
        for warning in version_warnings(await bluez_version()):
            warn(warning)
    return Target(BleBackend(adapter=a.adapter), a.name, a.address)


def run(ctx: Context, coro: Coroutine[Any, Any, int]) -> int:
    """Run a command on the right loop, with the emulated BlueZ around it if asked for."""
    if not ctx.emulated:
        return loops.run(coro, virtual=ctx.virtual)
    from ..targets.emulated_bluez import EmulatorUnavailable, running_emulator

    a = ctx.args
    try:
        with running_emulator(
            a.name,
            [a.address or a.sim_address] if (a.address or a.sim_address) else [],
            adapter=a.adapter,
            faults=a.faults,
            seed=a.seed,
            erase_time_s=a.erase_time,
        ):
            return loops.run(coro)
    except EmulatorUnavailable as exc:
        coro.close()
        raise CliError(EXIT_NOT_FOUND, str(exc)) from None


def warn(message: str) -> None:
    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)

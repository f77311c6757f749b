"""Which device a command talks to: the platform's radio, a simulated SmartBall in this
process (``--sim``), or simulated SmartBalls behind an emulated BlueZ (``--bluez=emulated``)
or behind a virtual controller of this machine's real BlueZ (``--bluez=vhci``). The
simulator is imported by pytest_smartball.targets only, and only when asked for."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from tqdm import tqdm

from .. import loops
from ..bluez import BluezUnavailable, bluez_version, probe_adapter, version_warnings
from ..link import BleBackend
from ..targets import Target, open_in_process
from .args import PROG, Context
from .errors import EXIT_BAD_INPUT, EXIT_NOT_FOUND, CliError


def check_fault_spec(ctx: Context) -> None:
    """A bad --faults is bad input, found before anything starts."""
    if not ctx.args.faults or not (ctx.simulated or ctx.served_by):
        return
    from ..targets.simulated import fault_spec_problem

    problem = fault_spec_problem(ctx.args.faults)
    if problem:
        raise CliError(EXIT_BAD_INPUT, f"bad --faults: {problem}")


async def open_target(ctx: Context) -> Target:
    """Build the simulated device (inside the running loop: faults may schedule timers),
    or check BlueZ for the real radio (also what an emulated BlueZ serves)."""
    a = ctx.args
    if ctx.kind.in_process:
        from ..targets.simulated import SimFirmwareUnavailable

        refused: tuple[type[Exception], ...] = ()
        if not ctx.kind.bluez_faults:
            from ..targets.bumble import BlueZOnlyFault, BumbleUnavailable

            refused = (BumbleUnavailable, BlueZOnlyFault)
        loop = asyncio.get_running_loop()
        t0 = loop.time()  # 0 on the virtual clock; fault-log times count from here
        options: dict[str, Any] = {}
        if a.sim_firmware != "python":  # --sim-firmware=c: the C core inside the simulator
            options.update(firmware_core=a.sim_firmware, firmware_library=a.sim_firmware_lib)
        try:
            target = open_in_process(
                ctx.kind,
                name=a.name,
                address=a.sim_address,
                faults=a.faults,
                seed=a.seed,
                erase_time_s=a.erase_time,
                firmware_bugs=a.sim_firmware_bug,
                progressive_erase=a.sim_progressive_erase,
                sim_trust=a.sim_trust,
                clock=lambda: loop.time() - t0,
                **options,
            )
        except refused as exc:
            raise CliError(EXIT_BAD_INPUT, str(exc)) from None
        except (SimFirmwareUnavailable, ValueError) as exc:  # no C compiler; bugs need the model
            if a.sim_firmware == "python":
                raise
            raise CliError(EXIT_BAD_INPUT, f"--sim-firmware={a.sim_firmware}: {exc}") from None
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
    """Run a command on the right loop, with the emulated BlueZ or the virtual radio around
    it if asked for."""
    if ctx.served_by is None:
        return loops.run(coro, virtual=ctx.virtual)
    a = ctx.args
    addresses = [a.address or a.sim_address] if (a.address or a.sim_address) else []
    try:
        if ctx.served_by == "emulated" and a.bus:
            from ..targets.emulated_bluez import attached_emulator

            with attached_emulator(a.bus):
                return loops.run(coro)
        if ctx.served_by == "emulated":
            from ..targets.emulated_bluez import EmulatorUnavailable, running_emulator

            try:
                with running_emulator(
                    a.name,
                    addresses,
                    adapter=a.adapter,
                    faults=a.faults,
                    seed=a.seed,
                    erase_time_s=a.erase_time,
                ):
                    return loops.run(coro)
            except EmulatorUnavailable as exc:
                raise CliError(EXIT_NOT_FOUND, str(exc)) from None
        from ..targets.vhci_bluez import VhciSetupError, running_virtual_radio

        try:
            with running_virtual_radio(
                a.name, addresses, faults=a.faults, seed=a.seed, erase_time_s=a.erase_time
            ) as radio:
                a.adapter = radio.adapter  # read when the command opens its target
                return loops.run(coro)
        except VhciSetupError as exc:
            raise CliError(EXIT_NOT_FOUND, str(exc)) from None
    finally:
        coro.close()  # a no-op once it ran; a command that never started is not left dangling


def warn(message: str) -> None:
    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)

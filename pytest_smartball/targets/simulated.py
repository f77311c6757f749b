"""A simulated SmartBall in this process, behind bleak backends: how ``--device=sim``, the
CLI's ``--sim``, the fuzz properties and the benchmark reach one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from smartball_sim.device import DEFAULT_ADDRESS, SimDevice
from smartball_sim.fault_injector import FaultRecord
from smartball_sim.faults import FaultPlan, FaultSpecError
from smartball_sim.firmware.bugs import parse_bugs
from smartball_sim.firmware.c_core import MissingCompiler
from smartball_sim.firmware.model import FlashTimings
from smartball_sim.fronts.in_process import SimWorld

from ..contract import codec as p
from ..contract import signing
from ..link import BleBackend
from ..options import SIM_TRUST_CHOICES
from . import Target

#: --sim-firmware=c without a C compiler or a built core (one sentence says what to do).
SimFirmwareUnavailable = MissingCompiler


def backend_for(world: SimWorld) -> BleBackend:
    def link_faults(address: str) -> list[FaultRecord]:
        device = world.find(address)
        return device.fault_log if device is not None else []

    return BleBackend(
        world.scanner_backend,
        world.client_backend,
        forget=world.forget,
        warnings=world.warnings,
        link_faults=link_faults,
    )


def trust_options(sim_trust: str) -> dict[str, Any]:
    """The SimDevice options that provision ``sim_trust`` (one of SIM_TRUST_CHOICES). The
    one place where a ball's trust is decided, and it does not depend on the firmware
    kind: the Python model and the C core (``firmware_core="c"``) both implement section
    16, so ``--sim-firmware=c`` takes the CLI's and the plugin's default (``test``) too."""
    if sim_trust not in SIM_TRUST_CHOICES:
        raise ValueError(f"--sim-trust {sim_trust!r}: one of {', '.join(SIM_TRUST_CHOICES)}")
    if sim_trust == "none":
        return {}
    return {"trusted_keys": [signing.test_trusted_key()]}


def make_sim_target(
    name: str = p.DEFAULT_NAME,
    address: str | None = None,
    *,
    faults: FaultPlan | str | None = None,
    seed: int = 0,
    erase_time_s: float | None = None,
    firmware_bugs: Iterable[str] = (),
    flash_spec: str | None = None,
    sim_trust: str = "none",
    **device_options: Any,
) -> Target:
    """A simulated SmartBall alone in its world, and the backend that reaches it.
    ``erase_time_s``: the whole staging erase takes that long (the field's 15-40 s).
    ``firmware_bugs``: names from the catalogue of firmware bugs the device has (none: the
    reference firmware). ``flash_spec``: its flash timings, ``"erase_page_s=0.1,..."``.
    ``sim_trust``: ``"test"`` provisions the test key (a signed-only ball; its initial
    counter is ``security_counter=``, default 0), ``"none"`` (the default) a v1 ball."""
    device_options.update(trust_options(sim_trust))
    if flash_spec:
        device_options["flash"] = parse_flash_timings(flash_spec)
    if erase_time_s:
        flash = device_options.get("flash") or FlashTimings()
        device_options["flash"] = dataclasses.replace(flash, erase_total_s=erase_time_s)
    device = SimDevice(
        name,
        address or DEFAULT_ADDRESS,
        faults=faults,
        seed=seed,
        firmware_bugs=parse_bugs(firmware_bugs),
        **device_options,
    )
    world = SimWorld([device])
    return Target(backend_for(world), device.name, device.address, device)


def fault_spec_problem(spec: str) -> str | None:
    """Why a fault spec cannot be used (one sentence), or None."""
    try:
        FaultPlan.parse(spec)
    except FaultSpecError as exc:
        return str(exc)
    return None


#: The flash timings ``--sim-flash`` may set (seconds; rx_buffer_chunks is a count).
FLASH_FIELDS = tuple(f.name for f in dataclasses.fields(FlashTimings))


def parse_flash_timings(spec: str) -> FlashTimings:
    """``"erase_page_s=0.12,write_word_s=41e-6"`` as FlashTimings (the rest default);
    ValueError with one sentence for anything else."""
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in FLASH_FIELDS:
            raise ValueError(f"{item!r} is not KEY=VALUE with KEY one of {', '.join(FLASH_FIELDS)}")
        try:
            value = int(text) if key == "rx_buffer_chunks" else float(text)
        except ValueError:
            raise ValueError(f"{key}={text!r}: not a number") from None
        if value <= 0:
            raise ValueError(f"{key}={text}: must be above 0")
        values[key] = value
    return FlashTimings(**values)


def flash_spec_problem(spec: str) -> str | None:
    """Why a ``--sim-flash`` value cannot be used (one sentence), or None."""
    try:
        parse_flash_timings(spec)
    except ValueError as exc:
        return str(exc)
    return None

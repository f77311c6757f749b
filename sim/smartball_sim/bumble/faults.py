"""Which fault plans the Bumble link runs (no bumble import: checked before a run starts).

``race`` and ``stale-cache`` are a BlueZ host's failures (its GATT cache and its D-Bus
objects); a link without BlueZ cannot show them, so a plan that names them is refused with
a sentence. A named profile (``field-linux``) describes a field condition as seen through
BlueZ: on this link its BlueZ-only faults are left out, and the caller says so.
"""

from __future__ import annotations

from ..faults import PROFILES, Effect, Fault, FaultPlan, FaultSpecError

#: Effects that only mean something on BlueZ (its GATT cache and its D-Bus objects).
BLUEZ_ONLY_EFFECTS = frozenset({Effect.RACE, Effect.STALE_CACHE})


class BlueZOnlyFault(FaultSpecError):
    """A plan with a fault only BlueZ can show, for a link without BlueZ."""


def refuse_bluez_only(plan: FaultPlan) -> None:
    for fault in plan.faults:
        if fault.effect in BLUEZ_ONLY_EFFECTS:
            raise BlueZOnlyFault(
                f"fault {str(fault)!r}: {fault.effect} is a BlueZ host's failure (its GATT "
                "cache and D-Bus objects); the Bumble link has no BlueZ, so it cannot apply "
                "it (run it with --sim-link=model or --bluez=emulated)"
            )


def plan_for_bumble(spec: str | FaultPlan | None) -> tuple[FaultPlan, list[Fault]]:
    """The plan a Bumble link runs, and the faults of named profiles it leaves out.

    A profile (``field-linux``) describes a field condition seen through BlueZ; on this
    link its BlueZ-only faults are left out (the caller says so) and the rest applies. The
    same faults written out by hand are refused (``refuse_bluez_only``)."""
    if spec is None or isinstance(spec, FaultPlan):
        return spec or FaultPlan(), []
    kept: list[Fault] = []
    left_out: list[Fault] = []
    for part in (s.strip() for s in spec.split(",")):
        if part in PROFILES:
            for fault in FaultPlan.parse(PROFILES[part]).faults:
                (left_out if fault.effect in BLUEZ_ONLY_EFFECTS else kept).append(fault)
        elif part:
            kept.extend(FaultPlan.parse(part).faults)
    return FaultPlan(tuple(kept)), left_out

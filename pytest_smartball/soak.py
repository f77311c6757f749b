"""``--smartball-soak N``: N back-to-back updates per device, summarised: min / median / max
of each figure per direction (to the candidate, back to the baseline) and every failure
with its timeline. Pure: update results in, a JSON-ready summary and lines out;
``hil_tests/test_soak.py`` runs the updates.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .ota import OtaResult

CANDIDATE = "candidate"
BASELINE = "baseline"


@dataclass(slots=True)
class SoakUpdate:
    """One update of a soak: which one, towards which image, and how it went."""

    iteration: int
    role: str  # CANDIDATE or BASELINE
    result: OtaResult
    #: What the simulated device logged (faults fired), for the timeline of a failure.
    device_log: list[str] = field(default_factory=list)


def update_figures(result: OtaResult) -> dict[str, float]:
    """The figures of one update, as the soak summarises them."""
    figures = {
        "update_s": result.duration_s,
        "transfer_bps": result.throughput_bps,
        "reconnects": float(result.reconnects),
        "bytes_resent": float(result.bytes_resent),
    }
    figures.update({f"phase.{k}_s": v for k, v in result.phase_s.items() if v > 0})
    return figures


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def summary(
    updates: Sequence[SoakUpdate], *, device: str | None, faults: str | None
) -> dict[str, Any]:
    """The soak of one device: counts, figures of the successful updates per direction,
    every failure with its timeline."""
    by_role: dict[str, dict[str, list[float]]] = {}
    for u in updates:
        if not u.result.success:
            continue
        for name, value in update_figures(u.result).items():
            by_role.setdefault(u.role, {}).setdefault(name, []).append(value)
    failures = [
        {
            "iteration": u.iteration,
            "role": u.role,
            "failure": u.result.failure.value if u.result.failure else None,
            "error": u.result.error,
            "timeline": [str(e).strip() for e in u.result.events],
            "device_log": u.device_log,
        }
        for u in updates
        if not u.result.success
    ]
    return {
        "device": device,
        "faults": faults,
        "updates": len(updates),
        "succeeded": sum(1 for u in updates if u.result.success),
        "figures": {
            role: {name: _stats(values) for name, values in sorted(figures.items())}
            for role, figures in sorted(by_role.items())
        },
        "failures": failures,
    }


def lines(soak: dict[str, Any]) -> list[str]:
    """The summary as the terminal shows it."""
    faults = f", faults {soak['faults']}" if soak.get("faults") else ""
    out = [
        f"device {soak['device'] or '?'}: {soak['succeeded']} of {soak['updates']} updates "
        f"succeeded{faults}"
    ]
    for role, figures in soak["figures"].items():
        out.append(f"  to the {role} ({next(iter(figures.values()))['n']} updates):")
        out.append(f"    {'figure':<28} {'min':>10} {'median':>10} {'max':>10}")
        for name, s in figures.items():
            scale, unit = (1000, " kB/s") if name.endswith("_bps") else (1, "")
            out.append(
                f"    {name + unit:<28} {s['min'] / scale:>10.3f} {s['median'] / scale:>10.3f} "
                f"{s['max'] / scale:>10.3f}"
            )
    for f in soak["failures"]:
        out.append(f"  FAILED update {f['iteration']} (to the {f['role']}): {f['error']}")
        out += [f"    {line}" for line in f["timeline"]]
        out += [f"    device: {line}" for line in f["device_log"]]
    return out

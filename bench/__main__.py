"""``python -m bench``: the update against its physical lower bound, in one run.

For each image size and radio profile: the simulated update's duration and its transfer
phase, the model's lower bound and the ratio (efficiency), a stop-and-wait baseline (one
chunk per round trip, as a naive client does), bytes re-sent under the ``flaky`` fault
profile, and the wall-clock cost of one simulated update. Prints a table and writes JSON.

The ``bumble`` row runs the same device over Google's Bumble stack (``--sim-link=bumble``):
its bus has no airtime, so the same lower bound has no radio term and the transfer is
flash-limited.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_smartball.image import FirmwareImage
from pytest_smartball.loops import run as run_loop
from pytest_smartball.ota import OtaEngine, OtaResult
from pytest_smartball.targets import Target
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.device import RadioTimings
from smartball_sim.firmware import DEFAULT_STAGING_CAPACITY
from smartball_sim.make_image import FIELD_IMAGE_SIZE, make_image
from smartball_sim.radio import PROFILES
from smartball_sim.timing import lower_bound

#: The row run over Google's Bumble stack instead of a radio profile of our model.
BUMBLE = "bumble"
#: 64 KiB, the field image, and the largest image the 480 KiB staging area takes (a 1 MB
#: image does not fit the nRF52840's staging bank, so the largest is the bank itself).
SIZES = (64 * 1024, FIELD_IMAGE_SIZE, DEFAULT_STAGING_CAPACITY)
WINDOW = 16


@dataclass
class Row:
    profile: str
    size: int
    duration_s: float
    transfer_s: float
    bound_total_s: float
    bound_transfer_s: float
    saw_duration_s: float
    saw_transfer_s: float
    flaky_drops: int
    flaky_resent: int
    flaky_success: bool
    window_bytes: int
    wall_s: float
    wall_runs: list[float] = field(default_factory=list)

    @property
    def efficiency_total(self) -> float:
        return self.bound_total_s / self.duration_s

    @property
    def efficiency_transfer(self) -> float:
        return self.bound_transfer_s / self.transfer_s

    @property
    def speedup_vs_stop_and_wait(self) -> float:
        return self.saw_transfer_s / self.transfer_s

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(
            efficiency_total=round(self.efficiency_total, 4),
            efficiency_transfer=round(self.efficiency_transfer, 4),
            speedup_vs_stop_and_wait=round(self.speedup_vs_stop_and_wait, 2),
        )
        return out


def run_update(
    image: FirmwareImage, profile: str, *, window: int = WINDOW, faults: str = "", seed: int = 0
) -> tuple[OtaResult, Any]:
    target: Target
    if profile == BUMBLE:
        from pytest_smartball.targets.bumble import make_bumble_target

        target = make_bumble_target(faults=faults, seed=seed, window=window)
    else:
        radio = RadioTimings(link=PROFILES[profile])
        target = make_sim_target(faults=faults, seed=seed, radio=radio, window=window)
    engine = OtaEngine(image, target.backend, address=target.address)
    return run_loop(virtual=True, coro=engine.run()), target.sim


def measure(profile: str, size: int, wall_repeats: int) -> Row:
    image = FirmwareImage(make_image(size, 1), f"bench-{size}.bin")
    walls = []
    for _ in range(wall_repeats):
        t0 = time.perf_counter()
        result, last_device = run_update(image, profile)
        walls.append(time.perf_counter() - t0)
    assert result.success, result.error
    device = last_device
    saw, _ = run_update(image, profile, window=1)
    assert saw.success, saw.error
    flaky, flaky_device = run_update(image, profile, faults="flaky", seed=7)
    drops = sum(1 for r in flaky_device.fault_log if r.detail.startswith("flaky"))
    # the bound from the very timings the measured device ran with
    bound = lower_bound(size, device.radio.link, device.flash_timings, device.radio.boot_s)
    if profile == BUMBLE:  # no airtime on Bumble's bus: the radio term is zero
        bound = replace(bound, radio_s=0.0)
    return Row(
        profile=profile,
        size=size,
        duration_s=result.duration_s,
        transfer_s=result.phase_s["transferring"],
        bound_total_s=bound.total_s,
        bound_transfer_s=bound.transfer_s,
        saw_duration_s=saw.duration_s,
        saw_transfer_s=saw.phase_s["transferring"],
        flaky_drops=drops,
        flaky_resent=flaky.bytes_resent,
        flaky_success=flaky.success,
        window_bytes=WINDOW * bound.chunk,
        wall_s=statistics.median(walls),
        wall_runs=walls,
    )


def table(rows: list[Row]) -> str:
    head = (
        f"{'profile':<14}{'image':>9} {'update':>8} {'bound':>7} {'eff':>5} "
        f"{'xfer':>7} {'xbound':>7} {'xeff':>5} {'s&w xfer':>9} {'speedup':>7} "
        f"{'flaky drops':>11} {'resent/drop':>11} {'window':>7} {'wall':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        per_drop = r.flaky_resent / r.flaky_drops if r.flaky_drops else 0.0
        lines.append(
            f"{r.profile:<14}{r.size:>9} {r.duration_s:>7.2f}s {r.bound_total_s:>6.2f}s "
            f"{r.efficiency_total:>5.2f} {r.transfer_s:>6.2f}s {r.bound_transfer_s:>6.2f}s "
            f"{r.efficiency_transfer:>5.2f} {r.saw_transfer_s:>8.2f}s "
            f"{r.speedup_vs_stop_and_wait:>6.1f}x {r.flaky_drops:>11} {per_drop:>11.0f} "
            f"{r.window_bytes:>7} {r.wall_s:>6.3f}s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench/results/latest.json"),
        help="where to write the figures (default: %(default)s)",
    )
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=["default", "bluez-default", BUMBLE],
        choices=[*sorted(PROFILES), BUMBLE],
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument(
        "--wall-repeats",
        type=lambda v: max(1, int(v)),
        default=3,
        help="simulated updates timed per row; the median is shown",
    )
    args = parser.parse_args(argv)

    rows = [
        measure(profile, size, args.wall_repeats)
        for profile in args.profiles
        for size in args.sizes
    ]
    print("Simulated times are on the virtual clock; 'wall' is real time per update.")
    print(
        "eff = bound / update; xeff = transfer bound / transfer phase; "
        "speedup = stop-and-wait transfer / pipelined transfer."
    )
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "command": "python -m bench "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "rows": [r.as_dict() for r in rows],
            },
            indent=2,
        )
    )
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

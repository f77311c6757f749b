"""``python -m bench``: the update against its physical lower bound, in one run.

For each radio profile, image size and erase mode (normal: the whole staging area erased
before READY; progressive: each page erased just before its first write, P18): the simulated
update's duration and its transfer phase, the lower bound of ``smartball_sim.timing`` for
that mode and the ratio (efficiency), the speed-up of the progressive mode over the normal
one, the longest silence on the link (``max_silence_s``: the longest time between two packets
in either direction, measured from the link layer's air log, ``smartball_sim.radio.airlog``), a
stop-and-wait baseline (one chunk per round trip, as a naive client does), bytes re-sent under
the ``flaky`` fault profile, and the wall-clock cost of one simulated update. Prints a table,
checks the targets of issue 15 as ratios from this run, and writes JSON.

The ``bumble`` rows run the same device over Google's Bumble stack (``--sim-link=bumble``):
its bus has no airtime, so the same lower bound has no radio and no link-setup term and the
transfer is flash-limited. The field image also runs with the field's slow erase (the whole
staging erase taking ``FIELD_ERASE_S``, as the firmware that failed in the field did).
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
from pytest_smartball.ota import OtaResult
from pytest_smartball.targets import kind_of, simulated_update
from smartball_sim.device import RadioTimings, SimDevice
from smartball_sim.firmware.model import DEFAULT_STAGING_CAPACITY
from smartball_sim.make_image import FIELD_IMAGE_SIZE, make_image
from smartball_sim.radio.airlog import Packet, longest_silence
from smartball_sim.radio.profiles import PROFILES
from smartball_sim.timing import lower_bound

#: The rows run over Google's Bumble stack instead of a radio profile of our model.
BUMBLE = "bumble"
#: 64 KiB, the field image, and the largest image the 480 KiB staging area takes (a 1 MB
#: image does not fit the nRF52840's staging bank, so the largest is the bank itself).
SIZES = (64 * 1024, FIELD_IMAGE_SIZE, DEFAULT_STAGING_CAPACITY)
WINDOW = 16
#: A progressive session's window covers two pages (``progressive_window_bytes``): enough
#: for the radio to go on through a page's 85 ms erase and the ACK's round trip.
PROGRESSIVE_WINDOW_BYTES = 8192
#: The field's whole-staging erase, the short end of the 15-40 s the field saw.
FIELD_ERASE_S = 15.0
DATASHEET, FIELD = "datasheet", "field-15s"


@dataclass(frozen=True)
class Firmware:
    """What runs inside the simulated SmartBall (``--sim-firmware``): the Python model, or
    the C reference core of ``firmware/`` (``lib``: a built one), which grants one window in
    both modes (no two-page progressive window)."""

    core: str = "python"
    lib: str | None = None

    def options(self) -> dict[str, Any]:
        if self.core == "python":
            return {}
        return {"firmware_core": self.core, "firmware_library": self.lib}


MODEL = Firmware()


@dataclass
class Row:
    profile: str
    flash: str
    size: int
    progressive: bool
    duration_s: float
    transfer_s: float
    bound_total_s: float
    bound_without_link_setup_s: float
    bound_transfer_s: float
    max_silence_s: float
    saw_duration_s: float
    saw_transfer_s: float
    flaky_drops: int
    flaky_resent: int
    flaky_success: bool
    window_bytes: int
    wall_s: float
    wall_runs: list[float] = field(default_factory=list)
    #: The normal mode's duration / this one's, on the same profile, flash and size
    #: (progressive rows only).
    speedup_progressive: float | None = None
    #: The same ratio of the two modes' lower bounds: what the physics allows.
    bound_speedup_progressive: float | None = None

    @property
    def efficiency(self) -> float:
        """The whole update: its lower bound / its duration."""
        return self.bound_total_s / self.duration_s

    @property
    def efficiency_without_link_setup(self) -> float:
        """Against the bound without the two connections (the figure before issue 15)."""
        return self.bound_without_link_setup_s / self.duration_s

    @property
    def efficiency_transfer(self) -> float:
        return self.bound_transfer_s / self.transfer_s

    @property
    def speedup_vs_stop_and_wait(self) -> float:
        return self.saw_transfer_s / self.transfer_s

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(
            efficiency=round(self.efficiency, 4),
            efficiency_without_link_setup=round(self.efficiency_without_link_setup, 4),
            efficiency_transfer=round(self.efficiency_transfer, 4),
            speedup_vs_stop_and_wait=round(self.speedup_vs_stop_and_wait, 2),
        )
        for name in ("speedup_progressive", "bound_speedup_progressive"):
            if out[name] is not None:
                out[name] = round(out[name], 3)
        return out


def run_update(
    image: FirmwareImage,
    profile: str,
    *,
    flash: str = DATASHEET,
    progressive: bool = False,
    window: int = WINDOW,
    faults: str = "",
    seed: int = 0,
    firmware: Firmware = MODEL,
) -> tuple[OtaResult, SimDevice, list[Packet]]:
    """One simulated update of a bench row's device, with the packets of its air log."""
    options: dict[str, Any] = dict(
        faults=faults,
        seed=seed,
        window=window,
        progressive_erase=progressive,
        # stop-and-wait (window 1) keeps its single chunk in the progressive mode too
        progressive_window_bytes=PROGRESSIVE_WINDOW_BYTES
        if window > 1 and firmware == MODEL
        else None,
        erase_time_s=FIELD_ERASE_S if flash == FIELD else None,
        **firmware.options(),
    )
    if profile == BUMBLE:  # Bumble's own link: no radio profile of ours
        update = simulated_update(image, kind_of("sim", BUMBLE), **options)
    else:
        radio = RadioTimings(link=PROFILES[profile])
        update = simulated_update(image, kind_of("sim", "model"), radio=radio, **options)
    air: list[Packet] = []
    update.device.air_log = air
    return update.run(), update.device, air


def measure(
    profile: str,
    size: int,
    flash: str,
    progressive: bool,
    wall_repeats: int,
    firmware: Firmware = MODEL,
) -> Row:
    image = FirmwareImage(make_image(size, 1), f"bench-{size}.bin")

    def update(**how: Any) -> tuple[OtaResult, SimDevice, list[Packet]]:
        return run_update(
            image, profile, flash=flash, progressive=progressive, firmware=firmware, **how
        )

    walls = []
    for _ in range(wall_repeats):
        t0 = time.perf_counter()
        result, device, air = update()
        walls.append(time.perf_counter() - t0)
    assert result.success, result.error
    saw, _, _ = update(window=1)
    assert saw.success, saw.error
    flaky, flaky_device, _ = update(faults="flaky", seed=7)
    drops = sum(1 for r in flaky_device.fault_log if r.detail.startswith("flaky"))
    # the bound from the very timings the measured device ran with
    radio = device.radio
    bound = lower_bound(
        size,
        radio.link,
        device.flash_timings,
        radio.boot_s,
        progressive=progressive,
        connect_s=0.0 if profile == BUMBLE else radio.connect_s,
    )
    if profile == BUMBLE:  # no airtime on Bumble's bus: the radio term is zero
        bound = replace(bound, radio_s=0.0)
    window = device.firmware.session_window(progressive, bound.chunk)
    return Row(
        profile=profile,
        flash=flash,
        size=size,
        progressive=progressive,
        duration_s=result.duration_s,
        transfer_s=result.phase_s["transferring"],
        bound_total_s=bound.total_s,
        bound_without_link_setup_s=bound.without_link_setup_s,
        bound_transfer_s=bound.transfer_s,
        max_silence_s=longest_silence(air).seconds,
        saw_duration_s=saw.duration_s,
        saw_transfer_s=saw.phase_s["transferring"],
        flaky_drops=drops,
        flaky_resent=flaky.bytes_resent,
        flaky_success=flaky.success,
        window_bytes=window * bound.chunk,
        wall_s=statistics.median(walls),
        wall_runs=walls,
    )


def table(rows: list[Row]) -> str:
    head = (
        f"{'profile':<14}{'flash':<10}{'image':>7} {'mode':<5}{'update':>7} {'bound':>7} "
        f"{'eff':>5} {'eff-ls':>6} {'prog':>5} {'silence':>7} {'xfer':>7} {'xbound':>7} "
        f"{'xeff':>5} {'s&w':>5} {'resent/drop':>11} {'window':>6} {'wall':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        per_drop = r.flaky_resent / r.flaky_drops if r.flaky_drops else 0.0
        speedup = f"{r.speedup_progressive:.2f}x" if r.speedup_progressive else "-"
        lines.append(
            f"{r.profile:<14}{r.flash:<10}{r.size:>7} {'prog' if r.progressive else 'norm':<5}"
            f"{r.duration_s:>6.2f}s {r.bound_total_s:>6.2f}s {r.efficiency:>5.2f} "
            f"{r.efficiency_without_link_setup:>6.2f} {speedup:>5} {r.max_silence_s:>6.3f}s "
            f"{r.transfer_s:>6.2f}s {r.bound_transfer_s:>6.2f}s {r.efficiency_transfer:>5.2f} "
            f"{r.speedup_vs_stop_and_wait:>4.1f}x {per_drop:>11.0f} {r.window_bytes:>6} "
            f"{r.wall_s:>5.3f}s"
        )
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[tuple[str, bool, str]]:
    """Issue 15's targets, each (what, met, the figures from this run)."""

    def span(values: list[float], fmt: str = "{:.2f}") -> str:
        return f"{fmt.format(min(values))}-{fmt.format(max(values))}" if values else "no rows"

    normal = [r for r in rows if not r.progressive]
    prog = [r for r in rows if r.progressive]
    field_prog = [r for r in prog if r.size == FIELD_IMAGE_SIZE and r.profile != BUMBLE]
    out = []
    for what, values, limit in (
        ("whole update >= 0.90 of its bound (normal mode)", [r.efficiency for r in normal], 0.90),
        (
            "... against the bound without link setup",
            [r.efficiency_without_link_setup for r in normal],
            0.90,
        ),
        ("transfer >= 0.95 of its bound", [r.efficiency_transfer for r in rows], 0.95),
        (
            ">= 3x stop-and-wait (radio profiles: Bumble's bus has no airtime to wait for)",
            [r.speedup_vs_stop_and_wait for r in rows if r.profile != BUMBLE],
            3.0,
        ),
    ):
        out.append((what, bool(values) and min(values) >= limit, span(values)))
    for flash in (DATASHEET, FIELD):
        speedups = [r.speedup_progressive or 0.0 for r in field_prog if r.flash == flash]
        per = ", ".join(
            f"{r.profile} {r.speedup_progressive:.2f}x (bounds {r.bound_speedup_progressive:.2f}x)"
            for r in field_prog
            if r.flash == flash
        )
        out.append(
            (
                f"progressive >= 1.3x on the field image ({flash} erase)",
                bool(speedups) and min(speedups) >= 1.3,
                per or "no rows",
            )
        )
    silences = [r.max_silence_s for r in prog]
    out.append(
        (
            "max silence < 1 s (progressive)",
            bool(silences) and max(silences) < 1.0,
            span(silences, "{:.3f}s"),
        )
    )
    walls = [r.wall_s for r in rows if r.size == FIELD_IMAGE_SIZE and r.profile != BUMBLE]
    out.append(
        (
            "wall per simulated field update < 0.5 s (model)",
            bool(walls) and max(walls) < 0.5,
            span(walls, "{:.3f}s"),
        )
    )
    return out


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
        "--no-field-erase",
        action="store_true",
        help=f"leave out the field image's rows with the field's {FIELD_ERASE_S:.0f} s erase",
    )
    parser.add_argument(
        "--wall-repeats",
        type=lambda v: max(1, int(v)),
        default=3,
        help="simulated updates timed per row; the median is shown",
    )
    parser.add_argument(
        "--sim-firmware",
        choices=("python", "c"),
        default="python",
        help="what runs inside the simulated SmartBall: the Python firmware model (default) "
        "or the C reference core of firmware/ (docs/firmware.md), which grants one window in "
        "both modes",
    )
    parser.add_argument(
        "--sim-firmware-lib",
        default=None,
        metavar="PATH",
        help="with --sim-firmware=c: a built core to load instead of building firmware/",
    )
    args = parser.parse_args(argv)
    if args.sim_firmware_lib and args.sim_firmware != "c":
        parser.error("--sim-firmware-lib works with --sim-firmware=c only")
    firmware = Firmware(args.sim_firmware, args.sim_firmware_lib)

    rows: list[Row] = []
    for profile in args.profiles:
        for size in args.sizes:
            flashes = [DATASHEET]
            if size == FIELD_IMAGE_SIZE and profile != BUMBLE and not args.no_field_erase:
                flashes.append(FIELD)
            for flash in flashes:
                normal = measure(profile, size, flash, False, args.wall_repeats, firmware)
                prog = measure(profile, size, flash, True, args.wall_repeats, firmware)
                prog.speedup_progressive = normal.duration_s / prog.duration_s
                prog.bound_speedup_progressive = normal.bound_total_s / prog.bound_total_s
                rows += [normal, prog]
    print(f"Firmware in the simulated SmartBall: {firmware.core} ({firmware.lib or 'built'}).")
    print("Simulated times are on the virtual clock; 'wall' is real time per update.")
    print(
        "eff = bound / update (eff-ls: bound without the two connections); prog = normal "
        "update / progressive update; silence = longest gap between two packets on the link; "
        "xeff = transfer bound / transfer phase; s&w = stop-and-wait transfer / pipelined."
    )
    print(table(rows))
    print()
    for what, met, figures in targets(rows):
        print(f"{'met    ' if met else 'NOT met'}  {what}: {figures}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "command": "python -m bench "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "firmware": firmware.core,
                "rows": [r.as_dict() for r in rows],
                "targets": [
                    {"target": what, "met": met, "figures": figures}
                    for what, met, figures in targets(rows)
                ],
            },
            indent=2,
        )
    )
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

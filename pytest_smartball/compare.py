"""``--smartball-compare PREVIOUS_REPORT.json``: this run's figures beside the previous
release's, as ratios, and the figures that got worse than the tolerance allows.

Pure: figure records in, rows and sentences out. A figure's value in a run is the median
over the devices (and repetitions) that measured it (:func:`.figures.median_by_name`).
Worse means slower for a time and lower for a throughput. A time must also be worse by
more than :data:`NOISE_FLOOR_S`: a radio schedules in connection events (7.5-50 ms), so a
30 ms figure that moves by one event is jitter, not a regression.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .figures import SECONDS, Figure, median_by_name

#: A time figure counts as worse only if it also grew by more than this.
NOISE_FLOOR_S = 0.05
#: The share of the previous release's figures this run must measure again, in percent:
#: a figure not measured is a regression not looked for, so a run that skipped the tests
#: measuring them cannot pass the gate (``--smartball-compare-min-measured`` lowers it).
DEFAULT_MIN_MEASURED_PERCENT = 100.0


class ReportUnusable(ValueError):
    """The previous report cannot be compared with (one sentence)."""


def load_figures(path: str | Path) -> dict[str, Figure]:
    """The figures of a ``--smartball-report`` file, one per name."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportUnusable(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ReportUnusable(f"{path} is not JSON; pass a file --smartball-report wrote") from None
    if not isinstance(data, dict) or "smartball_report" not in data:
        raise ReportUnusable(f"{path} is not a report --smartball-report wrote")
    records = data.get("figures") or []
    if not records:
        raise ReportUnusable(
            f"{path} holds no figures; write the previous release's report with a run of "
            "hil_tests (its timing-contract test measures them)"
        )
    return median_by_name(records)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    current: Figure | None
    previous: Figure | None
    #: How much worse, as a fraction (0.2: 20 % worse; negative: better). None: not both.
    worse_by: float | None
    regressed: bool

    @property
    def ratio(self) -> float | None:
        """current / previous (None when either is missing or the previous is 0)."""
        if self.current is None or self.previous is None or self.previous.value == 0:
            return None
        return self.current.value / self.previous.value

    def as_dict(self) -> dict[str, Any]:
        figure = self.current or self.previous
        worse = self.worse_by
        percent = round(worse * 100, 1) if worse is not None and math.isfinite(worse) else None
        return {
            "name": self.name,
            "current": self.current.value if self.current else None,
            "previous": self.previous.value if self.previous else None,
            "unit": figure.unit if figure else "",
            "ratio": round(self.ratio, 4) if self.ratio is not None else None,
            "worse_by_percent": percent,
            "regressed": self.regressed,
        }

    def line(self) -> str:
        figure = self.current or self.previous
        assert figure is not None
        now = figure.text(self.current.value) if self.current else "-"
        before = figure.text(self.previous.value) if self.previous else "-"
        ratio = f"{self.ratio:.2f}" if self.ratio is not None else "-"
        verdict = "WORSE" if self.regressed else ("new" if self.previous is None else "")
        if self.current is None:
            verdict = "not measured"
        return f"{self.name:<26} {now:>12} {before:>12} {ratio:>7}  {verdict}"


@dataclass(frozen=True, slots=True)
class Comparison:
    previous_path: str
    tolerance_percent: float
    rows: tuple[Row, ...]
    min_measured_percent: float = DEFAULT_MIN_MEASURED_PERCENT

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regressed]

    @property
    def not_measured(self) -> list[str]:
        """The previous release's figures this run did not measure."""
        return [r.name for r in self.rows if r.previous is not None and r.current is None]

    @property
    def measured_percent(self) -> float:
        previous = sum(1 for r in self.rows if r.previous is not None)
        if previous == 0:
            return 100.0
        return 100.0 * (previous - len(self.not_measured)) / previous

    @property
    def enough_measured(self) -> bool:
        return self.measured_percent >= self.min_measured_percent

    @property
    def failed(self) -> bool:
        """The gate fails: a figure got worse, or too few were measured to tell."""
        return bool(self.regressions) or not self.enough_measured

    def unmeasured_sentence(self) -> str | None:
        """Why too few figures is a failure, naming each one missing (None: enough)."""
        if self.enough_measured:
            return None
        missing = self.not_measured
        previous = sum(1 for r in self.rows if r.previous is not None)
        return (
            f"this run measured {previous - len(missing)} of the {previous} figures of "
            f"{self.previous_path} ({self.measured_percent:.0f} %, at least "
            f"{self.min_measured_percent:g} % must be measured again): not measured "
            f"{', '.join(missing)}; run the tests that measure them "
            "(hil_tests/test_timing_contract.py) without skipping them, or lower "
            "--smartball-compare-min-measured"
        )

    def failures(self) -> list[str]:
        """Every reason the gate fails: too few figures measured, then each regression."""
        unmeasured = self.unmeasured_sentence()
        return ([unmeasured] if unmeasured else []) + self.sentences()

    def sentences(self) -> list[str]:
        """One sentence per figure worse than the tolerance allows."""
        out = []
        for r in self.regressions:
            assert r.current is not None and r.previous is not None and r.worse_by is not None
            how = "lower" if r.current.higher_is_better else "higher"
            out.append(
                f"{r.name} is {r.worse_by * 100:.0f} % worse than in {self.previous_path} "
                f"({r.current.text()} now, {r.current.text(r.previous.value)} then: {how}; "
                f"the tolerance is {self.tolerance_percent:g} %)"
            )
        return out

    def lines(self) -> list[str]:
        header = f"{'figure':<26} {'this run':>12} {'previous':>12} {'ratio':>7}"
        return [header, *(r.line() for r in self.rows)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "previous_report": self.previous_path,
            "tolerance_percent": self.tolerance_percent,
            "noise_floor_s": NOISE_FLOOR_S,
            "figures": [r.as_dict() for r in self.rows],
            "regressions": self.sentences(),
            "min_measured_percent": self.min_measured_percent,
            "measured_percent": round(self.measured_percent, 1),
            "not_measured": self.not_measured,
            "failed": self.failed,
            "failures": self.failures(),
        }


def worse_by(current: Figure, previous: Figure) -> float:
    """How much worse ``current`` is than ``previous``, as a fraction (negative: better)."""
    delta = (
        previous.value - current.value
        if current.higher_is_better
        else (current.value - previous.value)
    )
    if previous.value == 0:
        return 0.0 if delta <= 0 else math.inf
    return delta / previous.value


def compare(
    current: dict[str, Figure],
    previous: dict[str, Figure],
    tolerance_percent: float,
    previous_path: str = "the previous report",
    min_measured_percent: float = DEFAULT_MIN_MEASURED_PERCENT,
) -> Comparison:
    rows = []
    for name in sorted(set(current) | set(previous)):
        now, before = current.get(name), previous.get(name)
        fraction = worse_by(now, before) if now and before else None
        regressed = (
            now is not None
            and before is not None
            and fraction is not None
            and fraction > tolerance_percent / 100
            and not (now.unit == SECONDS and abs(now.value - before.value) <= NOISE_FLOOR_S)
        )
        rows.append(Row(name, now, before, fraction, regressed))
    return Comparison(previous_path, tolerance_percent, tuple(rows), min_measured_percent)

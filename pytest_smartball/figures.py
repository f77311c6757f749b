"""Figures a test measures on the device under test: the firmware's timing obligations and
the phases of an update (``smartball_figures`` fixture). They go into the JUnit XML as
``figure.NAME`` properties and into the ``--smartball-report`` JSON (``figures``), where a
later run's ``--smartball-compare`` finds them.

Pure data handling; the plugin (:mod:`.recording`) moves the figures of each test to the
report, across pytest-xdist workers too.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

#: Units a figure may have. Times are seconds; throughput is bytes per second.
SECONDS = "s"
BYTES_PER_SECOND = "B/s"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure: its value and, for an obligation, the contract's limit."""

    name: str
    value: float
    unit: str = SECONDS
    #: The contract's maximum (a minimum when ``higher_is_better``); None: no limit.
    limit: float | None = None
    higher_is_better: bool = False

    @property
    def beyond_limit(self) -> bool:
        if self.limit is None:
            return False
        return self.value < self.limit if self.higher_is_better else self.value > self.limit

    def text(self, value: float | None = None) -> str:
        """``value`` (this figure's own by default) with the unit, rounded for people."""
        value = self.value if value is None else value
        if self.unit == BYTES_PER_SECOND:
            return f"{value / 1000:.1f} kB/s"
        return f"{value:.3f} s"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["value"] = round(self.value, 6)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        return cls(
            data["name"],
            float(data["value"]),
            data.get("unit", SECONDS),
            data.get("limit"),
            bool(data.get("higher_is_better", False)),
        )


class FigureRecorder:
    """What the ``smartball_figures`` fixture hands a test: ``record`` each figure as it is
    measured (so a test that fails halfway still reports what it measured), then
    ``check_limits`` once, which fails the test naming every figure beyond its limit."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []

    def record(
        self,
        name: str,
        value: float,
        *,
        unit: str = SECONDS,
        limit: float | None = None,
        higher_is_better: bool = False,
    ) -> Figure:
        figure = Figure(name, value, unit, limit, higher_is_better)
        self.figures = [f for f in self.figures if f.name != name] + [figure]
        return figure

    def __getitem__(self, name: str) -> Figure:
        return next(f for f in self.figures if f.name == name)

    def problems(self) -> list[str]:
        """One sentence per figure beyond its limit, with both numbers."""
        out = []
        for f in self.figures:
            if f.beyond_limit:
                assert f.limit is not None
                side = "below the minimum" if f.higher_is_better else "above the limit"
                out.append(f"{f.name} is {f.text()}, {side} of {f.text(f.limit)}")
        return out

    def check_limits(self) -> None:
        problems = self.problems()
        if problems:
            raise AssertionError(
                "the device missed its timing obligations (docs/protocol.md, section 10): "
                + "; ".join(problems)
            )


def junit_properties(figures: Iterable[Figure]) -> list[tuple[str, str]]:
    """``figure.NAME`` = value (and ``figure.NAME.limit``) for each figure."""
    props: list[tuple[str, str]] = []
    for f in figures:
        props.append((f"figure.{f.name}", f"{f.value:.6g}"))
        if f.limit is not None:
            props.append((f"figure.{f.name}.limit", f"{f.limit:g}"))
    return props


def median_by_name(records: Iterable[dict[str, Any]]) -> dict[str, Figure]:
    """The report's figure records, one figure per name: the median of its values (several
    devices, or a test run more than once); limit and unit from the first."""
    values: dict[str, list[float]] = {}
    first: dict[str, Figure] = {}
    for record in records:
        figure = Figure.from_dict(record)
        values.setdefault(figure.name, []).append(figure.value)
        first.setdefault(figure.name, figure)
    return {
        name: Figure(
            name,
            statistics.median(vals),
            first[name].unit,
            first[name].limit,
            first[name].higher_is_better,
        )
        for name, vals in values.items()
    }

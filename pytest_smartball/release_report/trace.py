"""An update's progress over time, kept small enough for the report: the engine's
``on_progress`` calls (erase pages done, image bytes the device acknowledged), thinned to
what a timeline can show.

Pure: the caller passes the time (seconds since the update began, the engine's clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: A sample is kept when progress moved by at least this share of the phase's total...
STEP_FRACTION = 0.01
#: ...or when this long has passed since the last sample (a stall or a drop shows as a
#: flat line that ends where it really ended, not as a slope across the gap).
GAP_S = 0.25
#: At most this many samples per update; beyond it only phase changes and rewinds are kept.
MAX_SAMPLES = 1000


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    phase: str  # "erase" or "transfer"
    done: int
    total: int

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "phase": self.phase, "done": self.done, "total": self.total}


@dataclass(slots=True)
class ProgressTrace:
    """Feed it every progress call; ``samples`` keeps the ones that change the picture."""

    samples: list[Sample] = field(default_factory=list)
    #: The latest call not kept (flushed before a gap, so the line holds until the gap).
    _pending: Sample | None = None

    def add(self, t: float, phase: str, done: int, total: int) -> None:
        sample = Sample(t, phase, done, total)
        last = self.samples[-1] if self.samples else None
        if last is None or self._must_keep(last, sample):
            pending = self._pending
            if (
                pending is not None
                and pending.phase == sample.phase
                and (sample.t - pending.t >= GAP_S or sample.done < pending.done)
            ):
                self._keep(pending)  # where the line stood before the gap or the rewind
            self._keep(sample)
            self._pending = None
        else:
            self._pending = sample

    def _must_keep(self, last: Sample, new: Sample) -> bool:
        if new.phase != last.phase or new.done < last.done or new.done in (0, new.total):
            return True
        if len(self.samples) >= MAX_SAMPLES:
            return False
        step = max(1, round(new.total * STEP_FRACTION))
        return new.done - last.done >= step or new.t - last.t >= GAP_S

    def _keep(self, sample: Sample) -> None:
        if self.samples and self.samples[-1] == sample:
            return
        self.samples.append(sample)

    def as_list(self) -> list[dict[str, Any]]:
        """The samples for the JSON report, the latest pending one included."""
        out = list(self.samples)
        if self._pending is not None and (not out or out[-1] != self._pending):
            out.append(self._pending)
        return [s.as_dict() for s in out]

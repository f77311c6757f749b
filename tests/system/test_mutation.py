"""The mutation analysis of the firmware model (tests/gate/mutation.py, issue 20): its pure
parts. The runs themselves are .ci/run's mutation stage (a sample) and .ci/nightly's (all)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.gate import mutation
from tests.gate.mutation import Mutant, excluded_by_rule, invisible_spans

SOURCE = """from __future__ import annotations

import logging
from typing import TYPE_CHECKING

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    LIMIT = 3 + 4


def pages(size: int | None, page: int = 4096) -> int:
    log.info("pages of %d bytes: %d", size, size // page + 1)
    if size > 10 * page:
        raise ValueError(f"{size - page} bytes too many")
    return size // page + 1


class Shown:
    def __repr__(self) -> str:
        return f"Shown({1 + 2})"


def switched(self, size: int) -> int:
    if size > 1 and Bug.LATE in self.bugs:
        size = size + 1
    if Bug.EARLY not in self.bugs:
        size = size - 1
    return size * 2 if Bug.DOUBLE in self.bugs else size + 2
"""


def _mutant(line: int, column: int, end_column: int) -> Mutant:
    return Mutant("m.py", "core/X", 0, line, column, line, end_column)


def _at(text: str, line: int, occurrence: int = 0) -> Mutant:
    """A mutant of the ``occurrence``-th ``text`` on ``line`` of SOURCE."""
    row = SOURCE.splitlines()[line - 1]
    column = -1
    for _ in range(occurrence + 1):
        column = row.index(text, column + 1)
    return _mutant(line, column, column + len(text))


@pytest.mark.parametrize(
    ("text", "line", "occurrence", "rule"),
    [
        ("|", 12, 0, "annotation"),  # int | None
        ("4096", 12, 0, ""),  # a default value runs
        ("+", 9, 0, "type-checking"),
        ("+", 13, 0, "log"),  # size // page + 1 inside log.info(...)
        ("//", 13, 0, "log"),
        (">", 14, 0, ""),  # whether it raises is under test
        ("10", 14, 0, ""),
        ("-", 15, 0, "exception-text"),  # only the message
        ("+", 16, 0, ""),
        ("+", 21, 0, "repr"),
        (">", 25, 0, "bug-branch"),  # without the bug the `and` is false whatever it says
        ("in", 25, 0, ""),  # the switch: `not in` turns the bug on
        ("+", 26, 0, "bug-branch"),  # runs only with the bug on
        ("-", 28, 0, ""),  # runs without the bug: in the reference
        ("*", 29, 0, "bug-branch"),
        ("+", 29, 0, ""),
    ],
)
def test_mutants_the_gate_cannot_see_are_excluded_by_a_stated_rule(
    text: str, line: int, occurrence: int, rule: str
) -> None:
    spans = invisible_spans(SOURCE)
    assert excluded_by_rule(_at(text, line, occurrence), spans) == rule


def test_the_sample_is_drawn_uniformly_by_a_fixed_seed() -> None:
    population = [Mutant("m.py", "core/X", n, n, 0, n, 1) for n in range(1, 1001)]
    first = mutation.draw(population, 40, seed=20)
    assert first == mutation.draw(list(reversed(population)), 40, seed=20)  # order-free
    assert len(set(first)) == 40 and first != mutation.draw(population, 40, seed=21)
    # uniform: over many seeds each mutant is drawn about equally often
    drawn = Counter(m for seed in range(2000) for m in mutation.draw(population[:50], 10, seed))
    assert len(drawn) == 50
    assert max(drawn.values()) < 1.3 * 400 and min(drawn.values()) > 0.7 * 400
    assert mutation.draw(population[:5], 40, seed=1) == population[:5]
    # a mutant leaving the population takes only itself out of the sample
    left = [m for m in population if m != first[0]]
    assert set(first) - set(mutation.draw(left, 40, seed=20)) == {first[0]}
    outside = [m for m in population if m != next(m for m in population if m not in first)]
    assert mutation.draw(outside, 40, seed=20) == first


def test_the_margin_is_the_wilson_interval() -> None:
    assert mutation.margin(0.8, 40) == pytest.approx(0.148, abs=0.002)  # 65 % to 90 %
    assert mutation.margin(0.8, 400) == pytest.approx(0.042, abs=0.002)
    assert mutation.margin(1.0, 40) == pytest.approx(0.088, abs=0.002)
    assert mutation.margin(0.5, 0) == 1.0


@pytest.fixture(scope="module")
def generated() -> list[Mutant]:
    return mutation.generate()


def test_the_population_is_cosmic_rays_mutants_of_the_firmware_model(
    generated: list[Mutant],
) -> None:
    kept, excluded = mutation.population(generated)
    assert {m.module for m in generated} == set(mutation.MODULES)
    assert len(kept) + sum(excluded.values()) == len(generated) > 1000
    assert excluded["annotation"] > 0
    assert len({m.id for m in generated}) == len(generated)
    sample = mutation.draw(kept, 3, seed=20)
    for mutant in sample:
        original, mutated = mutation.mutated_source(mutant)
        diff = mutation.diff_of(mutant, original, mutated)
        assert diff.startswith(f"--- a/{mutant.module}") and "\n-" in diff and "\n+" in diff


def test_every_equivalent_mutant_is_argued_and_still_exists(generated: list[Mutant]) -> None:
    """Each mutant argued equivalent comes with its argument, and exactly one mutant of
    today's source makes its change in its function (an equivalence argued for code that
    changed since must be argued again)."""
    data = json.loads(mutation.EQUIVALENTS.read_text(encoding="utf-8"))
    kept = mutation.population(generated)[0]
    argued = mutation.load_equivalents()
    assert len(argued) == len(data), "two entries argue for the same mutant"
    found: Counter[str] = Counter()
    for mutant in kept:
        if (mutant.module, mutant.operator) in {
            (e["module"], e["operator"]) for e in data.values()
        }:
            key = mutation.equivalence_key(
                mutant, mutation.diff_of(mutant, *mutation.mutated_source(mutant))
            )
            if key in argued:
                found[key] += 1
    for mutant_id, entry in data.items():
        assert len(entry["argument"]) > 80, f"{mutant_id}: an equivalence is argued, not assumed"
        key = json.dumps([entry["module"], entry["function"], entry["operator"], *entry["changes"]])
        assert found[key] == 1, f"{mutant_id}: {found[key]} mutants of today's source match it"


def test_the_kill_rate_leaves_out_only_the_equivalent() -> None:
    m = _mutant(1, 0, 1)
    runs = [
        mutation.MutantRun(m, verdict)
        for verdict in ["caught"] * 6 + ["survived", "crashed", "hung", "equivalent"]
    ]
    counts, judged, rate = mutation.rates(runs)
    assert (judged, rate) == (9, pytest.approx(6 / 9))
    assert counts["crashed"] == counts["hung"] == 1

"""The fuzz oracle's classification (tests/simulator/fault_classes.py) agrees with the engine.

The budgets are read from the engine's settings, never copied; docs/faults.md states them
in a table this test checks; the issue's plans land in the kind the document gives them;
generated plans are what they claim to be; and at the edge of the attempts budget the
engine does what the classification says, under its default settings and under others.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import bleak_retry_connector
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import LinkSettings
from pytest_smartball.ota import Limits, OtaSettings, Outcome
from pytest_smartball.targets import kind_of, simulated_update
from smartball_sim.faults import Effect, FaultPlan
from smartball_sim.make_image import make_image
from tests.simulator.fault_classes import (
    EVERY,
    Budgets,
    Kind,
    Link,
    Wall,
    classify,
    hopeless_plans,
    recoverable_plans,
    time_bound,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "faults.md").read_text(encoding="utf-8")
FIELD_SIZE = 323194
DEFAULT = Budgets.of()


def _table(first_header: str) -> list[list[str]]:
    lines = DOC.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_the_documented_budgets_are_the_engines() -> None:
    rows = {row[0].strip("`"): row[1] for row in _table("budget")}
    fields = {f.name for f in dataclasses.fields(Budgets)}
    documented = {name for name in rows}
    # boot times are the device's obligations (docs/protocol.md), not the engine's budgets
    assert documented == fields - {"boot_max_s", "activation_boot_max_s"}
    for name, shown in rows.items():
        assert float(shown) == getattr(DEFAULT, name), f"docs/faults.md: {name} is {shown}"


def test_the_budgets_follow_the_engines_settings() -> None:
    """Not copies: other settings give other budgets, so the oracle tracks the engine."""
    s = OtaSettings(
        limits=Limits(max_attempts_without_progress=7, max_recoveries=12),
        reappear_timeout_s=50.0,
        link=LinkSettings(connect_attempts=4, services_attempts=2),
    )
    b = Budgets.of(s)
    assert (b.attempts_without_progress, b.max_recoveries, b.reappear_timeout_s) == (7, 12, 50.0)
    assert (b.timeouts_per_connect, b.connects_without_nus) == (4, 2)
    assert b.refusals_per_connect == bleak_retry_connector.MAX_TRANSIENT_ERRORS
    assert Budgets.of(s, Link.BUMBLE).refusals_per_connect == 4
    assert DEFAULT.attempts_without_progress == OtaSettings().limits.max_attempts_without_progress


def test_every_effect_has_a_row_in_the_cost_table() -> None:
    shown = {name for row in _table("effect") for name in re.findall(r"`([a-z-]+)", row[0])}
    assert shown == {str(e) for e in Effect}


@pytest.mark.parametrize(
    ("spec", "size", "kind"),
    [
        # the simulator bugs: both must succeed
        ("slow-erase:30s,reboot@erase:20%", FIELD_SIZE, Kind.RECOVERABLE),
        ("drop@offset:323194,reboot@cmd:CMD_OTA_START#2", FIELD_SIZE, Kind.RECOVERABLE),
        ("field-linux", FIELD_SIZE, Kind.RECOVERABLE),
        ("lose:5", 5000, Kind.RECOVERABLE),
        ("lose:6", 5000, Kind.OVER_BUDGET),
        ("connect-fail:45", 5000, Kind.RECOVERABLE),
        ("connect-fail:46", 5000, Kind.OVER_BUDGET),
        ("race:3s", 5000, Kind.RECOVERABLE),
        ("race:600s@connect:2", FIELD_SIZE, Kind.OVER_BUDGET),
        ("adv-pause:1000s@cmd:CMD_OTA_FINISH", FIELD_SIZE, Kind.OVER_BUDGET),
        ("flaky:20%", FIELD_SIZE, Kind.OVER_BUDGET),
        ("flaky:1%,reboot@offset:1000", 5000, Kind.OVER_BUDGET),
        ("flash-fail:2", 5000, Kind.OVER_BUDGET),
        ("slow-erase:30s", 5000, Kind.OVER_BUDGET),  # 2 pages: 15 s of silence each
        ("no-reset", 5000, Kind.HOPELESS),
        ("no-reset,reboot@t:30s", 5000, Kind.OVER_BUDGET),  # a reset may switch it
        (f"connect-fail:{EVERY}", 5000, Kind.HOPELESS),
        (f"connect-fail:{EVERY}@connect:5", 5000, Kind.OVER_BUDGET),  # may never come
        ("adv-pause:1000000s@cmd:CMD_OTA_FINISH", FIELD_SIZE, Kind.HOPELESS),
        (f"flash-fail:{EVERY}@offset:5000", 5000, Kind.HOPELESS),
        (f"lose:{EVERY}@connect:2", 5000, Kind.HOPELESS),
    ],
)
def test_plans_are_classified_as_docs_faults_md_says(spec: str, size: int, kind: Kind) -> None:
    assert classify(FaultPlan.parse(spec), size, DEFAULT).kind is kind


@settings(max_examples=300, deadline=None)
@given(data=st.data(), size=st.integers(1, FIELD_SIZE), link=st.sampled_from(list(Link)))
def test_generated_plans_are_what_they_claim(data: st.DataObject, size: int, link: Link) -> None:
    budgets = Budgets.of(link=link)
    recoverable = data.draw(recoverable_plans(size, budgets, link=link))
    assert classify(recoverable, size, budgets).kind is Kind.RECOVERABLE
    assert Effect.NO_RESET not in {f.effect for f in recoverable.faults}
    hopeless = data.draw(hopeless_plans(size, budgets, link=link))
    c = classify(hopeless, size, budgets)
    assert c.kind is Kind.HOPELESS and c.wall is not None
    if link is Link.BUMBLE:
        assert c.wall is not Wall.NO_NUS
    # a bound grows with what the plan holds, never below the fault-free update
    assert time_bound(hopeless, size, budgets, 10.0) > 10.0
    assert time_bound(recoverable, size, budgets, 10.0) >= 10.0


#: Six drops, each as a connection is made: six recoveries in a row without progress, one
#: each (lost or damaged messages cost fewer than the worst case the classification
#: counts: the engine sends INFO and STATUS together, so one attempt may absorb two).
DROPS_ON_CONNECT = ",".join(f"drop@connect:{n}" for n in range(1, 7))


@pytest.mark.sim_only
@pytest.mark.parametrize(
    ("spec", "attempts"),
    [(DROPS_ON_CONNECT.rsplit(",", 1)[0], 5), (DROPS_ON_CONNECT, 5), (DROPS_ON_CONNECT, 6)],
)
def test_at_the_edge_of_the_attempts_budget_the_engine_does_what_the_class_says(
    spec: str, attempts: int
) -> None:
    """Recoverable under ``--max-attempts N`` means the engine finishes with N; one fault
    more and the same engine gives up, naming that limit."""
    settings_ = OtaSettings(limits=Limits(max_attempts_without_progress=attempts))
    image = FirmwareImage(make_image(5000, 1), "edge.bin")
    kind = classify(FaultPlan.parse(spec), image.size, Budgets.of(settings_)).kind
    result = simulated_update(image, kind_of("sim"), faults=spec, seed=0).run(settings_)
    if kind is Kind.RECOVERABLE:
        assert result.success, result.error
    else:
        assert kind is Kind.OVER_BUDGET
        assert result.outcome is Outcome.FAILED
        assert f"the limit is {attempts}, --max-attempts" in result.error

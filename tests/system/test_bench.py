"""``python -m bench --json FILE`` writes one row per profile, size and erase mode with the
figures issue 15 asks for. Structure and consistency only: the targets themselves are
ratios the bench prints from one run, never asserted in a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main

pytestmark = pytest.mark.sim_only


def test_json_rows_carry_both_modes_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--profiles", "default", "--sizes", "20000", "--wall-repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["size"], r["progressive"]) for r in rows] == [(20000, False), (20000, True)]
    normal, progressive = rows
    for row in rows:
        assert row["efficiency"] == pytest.approx(row["bound_total_s"] / row["duration_s"], 1e-3)
        assert 0 < row["efficiency"] <= 1  # no update beats its lower bound
        assert 0 < row["max_silence_s"] < row["duration_s"]
    assert normal["speedup_progressive"] is None
    assert progressive["speedup_progressive"] == pytest.approx(
        normal["duration_s"] / progressive["duration_s"], 1e-3
    )
    assert progressive["window_bytes"] > normal["window_bytes"]  # the two-page window
    printed = capsys.readouterr().out
    assert "max silence < 1 s (progressive)" in printed

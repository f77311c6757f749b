"""The release page (pytest_smartball.release_report) without a browser: what the JSON report
now keeps per update (event times, progress), what the timeline draws where, the compare
and limit marks, the kill table, no external resource, escaping, and the
``smartball-report`` command and ``--smartball-html`` option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import EventKind, OtaEvent, OtaResult, Outcome
from pytest_smartball.plugin import report as rep
from pytest_smartball.release_report import command, model, render, render_report
from pytest_smartball.release_report.trace import ProgressTrace

ROOT = Path(__file__).resolve().parents[2]
IMAGE = FirmwareImage(b"\x02" * 10_000, "build/candidate.bin")


# --- a report as the plugin writes it ----------------------------------------------------


def ev(t: float, kind: str, detail: str = "") -> dict[str, Any]:
    return {"t": t, "kind": kind, "detail": detail}


def state(t: float, old: str, new: str) -> dict[str, Any]:
    return ev(t, "state", f"{old} -> {new}")


#: An update that drops during the erase and mid-transfer, resumes, resets and is verified.
TIMELINE = [
    ev(0.0, "start", "candidate.bin"),
    state(0.1, "scanning", "connecting"),
    ev(0.4, "connected", "write size 244"),
    state(0.4, "connecting", "querying"),
    state(0.43, "querying", "starting"),
    state(0.43, "starting", "waiting-ready"),
    ev(6.0, "link-lost", "device disconnected"),
    ev(6.0, "link-failure", "SmartBall: device disconnected"),
    state(6.0, "waiting-ready", "recovering"),
    state(6.5, "recovering", "scanning"),
    state(6.6, "scanning", "connecting"),
    ev(7.0, "link-failure", "connect refused"),  # no drop here: a marker of its own
    ev(8.0, "connected", "write size 244"),
    state(8.0, "connecting", "querying"),
    state(8.03, "querying", "waiting-ready"),
    ev(10.0, "ready", "max chunk 232, window 16"),
    state(10.0, "waiting-ready", "transferring"),
    ev(11.0, "link-lost", "closed by host"),  # a test's deliberate drop: a drop too
    state(11.0, "transferring", "recovering"),
    state(11.5, "recovering", "scanning"),
    state(11.6, "scanning", "connecting"),
    ev(12.0, "connected", "write size 244"),
    state(12.0, "connecting", "querying"),
    ev(12.03, "resume", "at offset 6000 of 10000"),
    state(12.03, "querying", "starting"),
    state(12.03, "starting", "transferring"),
    state(12.5, "transferring", "finishing"),
    ev(12.6, "done", "device verified crc32"),
    state(12.6, "finishing", "rebooting"),
    ev(12.62, "device-reset", "device disconnected"),
    state(12.62, "rebooting", "scanning"),
    state(15.0, "scanning", "connecting"),
    ev(15.3, "connected", "write size 244"),
    state(15.3, "connecting", "querying"),
    ev(15.33, "verified", "device runs the new image"),
    state(15.33, "querying", "succeeded"),
    ev(15.33, "link-lost", "closed by host"),  # the engine's close at the end: no drop
    ev(15.33, "end", "succeeded"),
]
DROPS = (6.0, 11.0)
END = 15.33


def update(**changes: Any) -> dict[str, Any]:
    u: dict[str, Any] = {
        "test": "hil_tests/test_ota_hil.py::test_full_update",
        "update": 1,
        "purpose": "test",
        "device": "C0:FF:EE:00:00:01",
        "image": {"path": "build/candidate.bin", "size": 10000, "crc32": "0badf00d"},
        "success": True,
        "outcome": "succeeded",
        "failure": None,
        "error": None,
        "duration_s": END,
        "phase_s": {"waiting-ready": 7.57, "transferring": 1.47},
        "throughput_bps": 6802.7,
        "bytes_sent": 10000,
        "bytes_resent": 464,
        "connects": 4,
        "reconnects": 2,
        "resumes": 1,
        "restarts": 0,
        "rewinds": 0,
        "rssi_dbm": -60,
        "timeline": TIMELINE,
        "progress": [
            {"t": t, "phase": "transfer", "done": done, "total": 10000}
            for t, done in (
                *((10.0 + 0.2 * i, 1500 * i) for i in range(5)),  # to 6000 at 10.8 s
                (12.03, 6000),  # resumed where the device stopped
                (12.2, 8000),
                (12.4, 10000),
            )
        ],
    }
    u.update(changes)
    return u


def figure(name: str, value: float, limit: float | None = None, unit: str = "s") -> dict:
    return {
        "test": "t",
        "device": "C0:FF:EE:00:00:01",
        "name": name,
        "value": value,
        "unit": unit,
        "limit": limit,
        "higher_is_better": unit == "B/s",
    }


def a_report(**changes: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "smartball_report": 1,
        "verdict": "pass",
        "started": "2026-12-06T18:00:00+0000",
        "finished": "2026-12-06T18:01:00+0000",
        "command": "pytest --device=sim hil_tests --sim-faults field-linux",
        "device": {"kind": "sim", "sim_faults": "field-linux"},
        "firmware": {
            "candidate": {"path": "build/candidate.bin", "size": 10000, "crc32": "0badf00d"},
            "verified_on": ["C0:FF:EE:00:00:01"],
        },
        "devices": [{"address": "C0:FF:EE:00:00:01", "firmware_before": {"firmware": "1.0"}}],
        "counts": {"passed": 3, "failed": 0},
        "updates_total": 1,
        "updates_failed": 0,
        "updates_unconfirmed": 0,
        "updates": [update()],
        "figures": [
            figure("erase_s", 4.0),
            figure("progress_gap_max_s", 1.2, limit=1.0),
            figure("reply_max_s", 0.09, limit=0.5),
            figure("transfer_bps", 60500, unit="B/s"),
        ],
        "comparison": None,
    }
    r.update(changes)
    return r


PREVIOUS = a_report(
    figures=[
        figure("erase_s", 2.8),  # 43 % slower now: worse
        figure("progress_gap_max_s", 1.2, limit=1.0),
        figure("reply_max_s", 0.09, limit=0.5),
        figure("transfer_bps", 60000, unit="B/s"),  # a little faster now
    ]
)


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text (a small DOM for assertions)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        def matches(found: dict[str, str]) -> bool:
            for key, want in attrs.items():
                have = found.get(key.replace("_", "-") if key != "class_" else "class", "")
                if key == "class_":
                    if not set(want.split()) <= set(have.split()):
                        return False
                elif have != want:
                    return False
            return True

        return [a for t, a in self.tags if t == tag and matches(a)]


# --- the JSON report keeps what the page draws -------------------------------------------


def test_every_update_keeps_its_event_times_and_progress_in_the_report() -> None:
    result = OtaResult(
        outcome=Outcome.SUCCEEDED,
        image_size=IMAGE.size,
        duration_s=3.0,
        events=[
            OtaEvent(0.0, EventKind.START, "x"),
            OtaEvent(1.25, EventKind.LINK_LOST, "device disconnected"),
            OtaEvent(3.0, EventKind.END, "succeeded"),
        ],
    )
    progress = [{"t": 2.0, "phase": "transfer", "done": 100, "total": IMAGE.size}]
    record = rep.update_record(
        result, test="t", index=1, image=IMAGE, device=None, progress=progress
    )
    assert record["timeline"][1] == {
        "t": 1.25,
        "kind": "link-lost",
        "detail": "device disconnected",
    }
    assert record["progress"] == progress
    assert "events" not in record  # the text log stays for failed updates only
    assert rep.update_record(result, test="t", index=1, image=IMAGE, device=None)["progress"] == []


def test_a_long_event_log_keeps_its_first_and_last_events() -> None:
    n = rep.MAX_TIMELINE_EVENTS + 50
    result = OtaResult(events=[OtaEvent(float(i), EventKind.STATUS, str(i)) for i in range(n)])
    timeline = rep.timeline_events(result)
    assert len(timeline) == rep.MAX_TIMELINE_EVENTS
    assert timeline[0]["detail"] == "0" and timeline[-1]["detail"] == str(n - 1)


def test_the_progress_trace_keeps_what_changes_the_picture() -> None:
    trace = ProgressTrace()
    total = 100_000
    for i in range(1, 501):  # 200 bytes every 10 ms: thinned to about 1 % steps
        trace.add(i * 0.01, "transfer", i * 200, total)
    trace.add(9.0, "transfer", 99_000, total)  # after a 4 s gap (a drop): back to 99,000
    trace.add(9.1, "transfer", total, total)
    samples = trace.as_list()
    assert len(samples) < 120
    done = [(s["t"], s["done"]) for s in samples]
    assert (5.0, 100_000) in done  # the last offset before the gap is kept...
    assert (9.0, 99_000) in done  # ...and the rewound one after it
    assert done[-1] == (9.1, total)


# --- what the timeline shows where --------------------------------------------------------


def test_bands_follow_the_engine_states() -> None:
    bands = model.bands(update())
    assert bands[0] == model.Band(0.0, 0.1, "scanning")
    erase = [b for b in bands if b.phase == "waiting-ready"]
    assert [(b.start, b.end) for b in erase] == [(0.43, 6.0), (8.03, 10.0)]
    assert bands[-1].end == 15.33 and bands[-1].phase == "querying"
    assert model.bands(update(timeline=[])) == []  # a report written before the page


def test_markers_say_drop_reconnect_resume_and_reset_at_their_times() -> None:
    marks = [(m.t, m.kind) for m in model.markers(update())]
    assert [t for t, k in marks if k == "drop"] == list(DROPS)  # not the close at the end
    assert [t for t, k in marks if k == "link-failure"] == [7.0]  # not the drops' echo
    assert [t for t, k in marks if k == "reconnect"] == [8.0, 12.0]
    assert [t for t, k in marks if k == "connect"] == [0.4, 15.3]  # after the reset: planned
    assert (12.03, "resume") in marks and (12.62, "reset") in marks


def test_the_svg_draws_each_drop_at_the_x_of_its_event_time() -> None:
    page = Elements(render.timeline_svg(update()))
    (plot,) = page.having("rect", class_="plot-area")
    left, width = float(plot["x"]), float(plot["width"])
    drops = page.having("line", class_="marker drop")
    assert [float(d["x1"]) for d in drops] == pytest.approx(
        [left + width * t / END for t in DROPS], abs=0.01
    )
    resumes = page.having("line", class_="marker resume")
    assert [float(r["x1"]) for r in resumes] == pytest.approx([left + width * 12.03 / END])


def test_the_offset_line_holds_through_a_drop_and_reaches_the_top() -> None:
    page = Elements(render.timeline_svg(update()))
    (line,) = page.having("path", class_="progress transfer")
    d = line["d"]
    # 10.8 s -> 12.03 s is a gap: the line holds (H) at 60 %, no slope across the drop
    at_60 = render.PLOT_BOTTOM - 0.6 * (render.PLOT_BOTTOM - render.PLOT_TOP)
    assert f"L{render.x_of(10.8, END):.2f} {at_60:.2f} H{render.x_of(12.03, END):.2f}" in d
    assert d.endswith(f"L{render.x_of(12.4, END):.2f} {render.PLOT_TOP:.2f}")


# --- figures, compare, kill table ------------------------------------------------------------


def test_a_figure_beyond_its_limit_is_marked() -> None:
    page = Elements(render_report(a_report()))
    (row,) = page.having("tr", data_figure="progress_gap_max_s")
    assert "beyond" in row["class"].split()
    (ok,) = page.having("tr", data_figure="reply_max_s")
    assert "beyond" not in ok["class"].split()
    assert "BEYOND THE LIMIT" in "".join(page.text)


def test_compare_marks_the_worse_figure_and_only_it() -> None:
    html = render_report(a_report(), compare=PREVIOUS, compare_name="release-1.4.json")
    page = Elements(html)
    rows = {r["data-figure"]: r["class"].split() for r in page.having("tr") if "data-figure" in r}
    assert "worse" in rows["erase_s"]
    assert "worse" not in rows["transfer_bps"] and "better" in rows["transfer_bps"]
    assert "worse" not in rows["reply_max_s"]
    assert "release-1.4.json" in html and "WORSE by 43 %" in html


def test_the_comparison_the_run_wrote_is_shown_without_the_previous_report() -> None:
    written = {
        "previous_report": "/tmp/rel/release-1.4.json",
        "tolerance_percent": 15.0,
        "figures": [
            {"name": "erase_s", "current": 4.0, "previous": 2.8, "unit": "s", "ratio": 1.43,
             "worse_by_percent": 42.9, "regressed": True},
        ],
        "regressions": ["erase_s is 43 % worse"],
    }  # fmt: skip
    page = Elements(render_report(a_report(comparison=written)))
    (row,) = page.having("tr", data_figure="erase_s", class_="worse")
    assert row
    assert not Elements(render_report(a_report())).having("section", id="compare")


def test_the_kill_table_shows_survivors_first() -> None:
    kill = {
        "bugs": {
            "ack-before-written": {"killed": True, "caught_by": ["a", "b", "c"]},
            "late-reset": {"killed": False, "caught_by": []},
        },
        "tests": 164,
        "seconds": 100.0,
    }
    page = Elements(render_report(a_report(), kill_table=kill))
    bugs = page.having("tr", class_="worse")
    assert [b["data-bug"] for b in bugs] == ["late-reset"]
    assert "1 of 2 firmware bugs killed" in "".join(page.text)


# --- self-contained and safe ---------------------------------------------------------------


def test_the_page_loads_nothing_from_anywhere() -> None:
    html = render_report(a_report(), compare=PREVIOUS, kill_table={"bugs": {}})
    page = Elements(html)
    tags = {t for t, _ in page.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "base"}
    for _, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), name  # no inline script either
            assert "http" not in value and "//" not in value, (name, value)
    assert "@import" not in html and "url(" not in html and "http" not in html


def test_what_the_report_says_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    html = render_report(
        a_report(updates=[update(test=f"t.py::{evil}", error=evil, timeline=[ev(0, "x", evil)])])
    )
    assert "<script" not in html and "&lt;script&gt;" in html


# --- the command and the option ------------------------------------------------------------


def test_smartball_report_writes_the_page(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps(a_report()))
    (tmp_path / "prev.json").write_text(json.dumps(PREVIOUS))
    (tmp_path / "kill.json").write_text(json.dumps({"bugs": {}, "tests": 1}))
    code = command.main(
        [
            str(tmp_path / "r.json"),
            "--compare",
            str(tmp_path / "prev.json"),
            "--kill-table",
            str(tmp_path / "kill.json"),
        ]
    )
    assert code == 0
    page = Elements((tmp_path / "r.html").read_text())
    assert page.having("section", id="compare") and page.having("section", id="kill-table")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        ('{"figures": []}', "is not a report that --smartball-report wrote"),
    ],
)
def test_smartball_report_refuses_bad_input_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, says: str
) -> None:
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert command.main([str(path), "-o", str(tmp_path / "page.html")]) == command.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "page.html").exists()


def test_smartball_html_writes_the_page_of_a_run(tmp_path: Path) -> None:
    """A real simulated update with a drop during the erase: the page's drop marker sits at
    the time of the report's drop event."""
    page, report = tmp_path / "release.html", tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--device=sim",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--basetemp={tmp_path / 'inner'}",
            "hil_tests/test_ota_hil.py::test_full_update_activates_the_new_image",
            "--sim-faults=drop@erase:50%",
            f"--smartball-report={report}",
            f"--smartball-html={page}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"smartball release page: {page}" in run.stdout
    (u,) = json.loads(report.read_text())["updates"]
    drops = [e["t"] for e in u["timeline"] if e["kind"] == "link-lost" and "device" in e["detail"]]
    assert len(drops) == 1
    html = Elements(page.read_text())
    (line,) = html.having("line", class_="marker drop")
    assert float(line["x1"]) == pytest.approx(render.x_of(drops[0], u["duration_s"]), abs=0.01)
    assert html.having("path", class_="progress transfer")


def test_an_unwritable_page_fails_the_run_in_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--device=sim",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--basetemp={tmp_path / 'inner'}",
            "hil_tests/test_ota_hil.py::test_full_update_activates_the_new_image",
            f"--smartball-html={blocker / 'page.html'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "smartball release page: FAILED: cannot write" in run.stdout


def test_pytest_html_shows_each_update_s_timeline_with_its_test(tmp_path: Path) -> None:
    pytest.importorskip("pytest_html", reason="pytest-html is in the test extra")
    html = tmp_path / "pytest-html.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--device=sim",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--basetemp={tmp_path / 'inner'}",
            "hil_tests/test_ota_hil.py::test_full_update_activates_the_new_image",
            "--sim-faults=drop@erase:50%",
            f"--html={html}",
            "--self-contained-html",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    text = html.read_text()  # pytest-html keeps its rows as escaped JSON in the page
    assert "smartball-timeline" in text and "plot-area" in text
    assert "marker drop" in text

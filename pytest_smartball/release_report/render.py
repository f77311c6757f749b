"""The release page: one self-contained HTML file over a ``--smartball-report`` JSON report.

No script, no external resource (no font, stylesheet, image or CDN): the timelines are
inline SVG, the styles inline CSS with a print stylesheet, so the page reads the same
offline, without JavaScript and on paper. Built with the standard library's ``html``
escaping: every value from the report goes through :func:`_e`.

Pure: :func:`render_report` takes the report's dict (and, optionally, the previous
release's report and the kill table's JSON) and returns the page as a string.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any

from .. import compare as cmp
from ..figures import Figure, median_by_name
from ..options import DEFAULT_COMPARE_TOLERANCE_PERCENT
from . import model

#: The timeline's drawing, in SVG user units (it scales to the page's width).
SVG_WIDTH = 1000
PLOT_LEFT = 60
PLOT_RIGHT = 985
BAND_TOP, BAND_HEIGHT = 24, 26
PLOT_TOP, PLOT_BOTTOM = 62, 170
SVG_HEIGHT = 200

#: Fill of each phase band (printed too: the print stylesheet keeps colours).
PHASE_COLOURS = {
    "scanning": "#cfd8dc",
    "connecting": "#90caf9",
    "querying": "#b39ddb",
    "aborting": "#f48fb1",
    "sending-manifest": "#e1bee7",
    "starting": "#ce93d8",
    "waiting-ready": "#ffcc80",
    "stabilising": "#fff59d",
    "transferring": "#a5d6a7",
    "finishing": "#80cbc4",
    "rebooting": "#bcaaa4",
    "health-checking": "#c5e1a5",
    "confirming": "#81c784",
    "recovering": "#ef9a9a",
}
MARKER_COLOURS = {
    "drop": "#c62828",
    "link-failure": "#ef6c00",
    "connect": "#1565c0",
    "reconnect": "#1565c0",
    "resume": "#2e7d32",
    "restart": "#6a1b9a",
    "rewind": "#ad1457",
    "reset": "#4e342e",
    "ready": "#f9a825",
    "done": "#00695c",
    "verified": "#1b5e20",
    "device-error": "#b71c1c",
    "no-reset": "#b71c1c",
}
#: Marker kinds drawn as a line across the whole timeline; the others get a short tick.
TALL_MARKERS = ("drop", "link-failure", "reconnect", "resume", "restart", "reset")

STYLE = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;
 margin:0 auto;padding:16px;max-width:1200px;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.25em;margin:1.4em 0 .4em;
 border-bottom:2px solid #ddd}h3{font-size:1.05em;margin:1em 0 .3em}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
body *{overflow-wrap:break-word}td,td *{overflow-wrap:anywhere}td.flag{overflow-wrap:normal}
table{border-collapse:collapse;width:100%;margin:.4em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.summary th{width:7.5em;overflow-wrap:normal}
td.num,th.num{text-align:right}td.num{white-space:nowrap}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;font-weight:700;color:#fff}
.verdict.pass{background:#2e7d32}.verdict.fail{background:#c62828}
.worse td{background:#ffebee}.worse .flag,.beyond .flag{color:#b71c1c;font-weight:700}
.better .flag{color:#2e7d32}
.beyond td{background:#ffebee}
.bar{display:block;height:8px;background:#eee;border-radius:4px;min-width:40px}
.bar span{display:block;height:8px;border-radius:4px;background:#66bb6a}
.beyond .bar span{background:#e53935}
.update{border:1px solid #ddd;border-radius:6px;padding:8px 10px;margin:10px 0}
.update.failed{border-color:#c62828}.update.unconfirmed{border-color:#ef6c00}
.update h3{margin:0 0 .2em}.facts{margin:.1em 0 .4em;color:#333}
svg.timeline{display:block;width:100%;height:auto;background:#fff}
svg.timeline text{font:11px system-ui,sans-serif;fill:#222}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.85em;margin:.3em 0}
.legend span{white-space:nowrap}.swatch{display:inline-block;width:12px;height:12px;
 vertical-align:-1px;margin-right:4px;border:1px solid #999}
details{margin:.3em 0}summary{cursor:pointer}
.muted{color:#666}
.timeline-wrap{overflow-x:auto}
@media (max-width:600px){body{font-size:14px;padding:8px}th,td{padding:2px 3px}
 svg.timeline{min-width:640px}}
@media print{
 *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
 body{max-width:none;padding:0;font-size:10pt}
 .update,table,svg.timeline{break-inside:avoid}
 .timeline-wrap{overflow:visible}svg.timeline{min-width:0}
 details>summary{display:none}details{display:block}
 a{color:inherit;text-decoration:none}
}
"""


def render_report(
    report: dict[str, Any],
    compare: dict[str, Any] | None = None,
    kill_table: dict[str, Any] | None = None,
    *,
    compare_name: str | None = None,
) -> str:
    """The release page for ``report`` (a ``--smartball-report`` JSON's dict).

    ``compare``: the previous release's report; its figures are put beside this run's (the
    report's own ``comparison``, written by ``--smartball-compare``, is used without it).
    ``kill_table``: ``kill-table.json`` of ``python -m tests.gate.kill_table --out``.
    ``compare_name``: what to call the previous report (its path).
    """
    candidate = (report.get("firmware") or {}).get("candidate") or {}
    title = f"SmartBall release report: {candidate.get('path') or 'no image'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        _summary(report, title),
        _figures(report),
        _comparison(report, compare, compare_name),
        _boards(report),
    ]
    if kill_table is not None:
        parts.append(_kill_table(kill_table))
    parts.append(
        '<p class="muted">Written by pytest-smartball from the JSON report '
        f"(format {_e(report.get('smartball_report'))}); times are seconds since each "
        "update began.</p></body></html>"
    )
    return "\n".join(p for p in parts if p)


# --- the run ---------------------------------------------------------------------------------


def _summary(report: dict[str, Any], title: str) -> str:
    verdict = "pass" if report.get("verdict") == "pass" else "fail"
    firmware = report.get("firmware") or {}
    candidate = firmware.get("candidate") or {}
    boards = [d.get("address") or d.get("name") or "?" for d in report.get("devices") or []]
    verified = firmware.get("verified_on") or []
    missing = [b for b in boards if b not in verified]
    counts = report.get("counts") or {}
    count_text = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no tests"
    device = report.get("device") or {}
    faults = device.get("sim_faults")
    rows = [
        ("verdict", f'<span class="verdict {verdict}" id="verdict">{verdict.upper()}</span>'),
        (
            "candidate",
            f"<code>{_e(candidate.get('path'))}</code>, {_e(candidate.get('size'))} bytes, "
            f"crc32 <code>{_e(candidate.get('crc32'))}</code>"
            if candidate
            else "none",
        ),
        (
            "verified on",
            _e(", ".join(verified) or "no board")
            + (
                f' <strong class="flag">not verified on {_e(", ".join(missing))}</strong>'
                if missing
                else ""
            ),
        ),
        ("tests", _e(count_text)),
        (
            "updates",
            _e(
                f"{report.get('updates_total', 0)} ({report.get('updates_failed', 0)} failed, "
                f"{report.get('updates_unconfirmed', 0)} unconfirmed)"
            ),
        ),
        (
            "device",
            _e(device.get("kind") or "?")
            + (f", faults <code>{_e(faults)}</code>" if faults else ""),
        ),
        ("run", _e(f"{report.get('started')} to {report.get('finished')}")),
        ("command", f"<code>{_e(report.get('command'))}</code>"),
    ]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<header><h1>{_e(title)}</h1><table class='summary'>{table}</table></header>"


def _figures(report: dict[str, Any]) -> str:
    figures = median_by_name(report.get("figures") or [])
    if not figures:
        return (
            "<section id='figures'><h2>Timing contract</h2><p class='muted'>No figures: "
            "this run did not measure the timing contract (hil_tests/test_timing_contract.py)."
            "</p></section>"
        )
    rows = []
    for name, f in sorted(figures.items()):
        css = "beyond" if f.beyond_limit else ""
        if f.limit is not None and f.limit > 0:
            share = f.value / f.limit if not f.higher_is_better else f.limit / max(f.value, 1e-9)
            width = max(0.0, min(share, 1.0)) * 100
            bar = f'<span class="bar"><span style="width:{width:.1f}%"></span></span>'
            limit = ("at least " if f.higher_is_better else "") + f.text(f.limit)
        else:
            bar, limit = "", "-"
        flag = "BEYOND THE LIMIT" if f.beyond_limit else ("within" if f.limit is not None else "")
        rows.append(
            f'<tr class="{css}" data-figure="{_e(name)}"><td><code>{_e(name)}</code></td>'
            f'<td class="num">{_e(f.text())}</td><td class="num">{_e(limit)}</td>'
            f'<td>{bar}</td><td class="flag">{_e(flag)}</td></tr>'
        )
    return (
        "<section id='figures'><h2>Timing contract</h2>"
        "<p>Each figure (the median over boards) against the limit of docs/protocol.md, "
        "section 10; the bar is the share of the limit used.</p>"
        "<table><tr><th>figure</th><th class='num'>this run</th><th class='num'>limit</th>"
        f"<th>of the limit</th><th></th></tr>{''.join(rows)}</table></section>"
    )


def comparison_rows(
    report: dict[str, Any], previous: dict[str, Any] | None, name: str | None = None
) -> tuple[str, float, list[dict[str, Any]]] | None:
    """(previous report's name, tolerance %, rows as in ``Comparison.as_dict``): this run's
    figures against ``previous``, or the comparison ``--smartball-compare`` wrote."""
    written = report.get("comparison")
    if previous is not None:
        tolerance = float(
            (written or {}).get("tolerance_percent", DEFAULT_COMPARE_TOLERANCE_PERCENT)
        )
        comparison = cmp.compare(
            median_by_name(report.get("figures") or []),
            median_by_name(previous.get("figures") or []),
            tolerance,
            name or "the last release",
        )
        data = comparison.as_dict()
        return data["previous_report"], tolerance, data["figures"]
    if written:
        return (
            str(written.get("previous_report")),
            float(written.get("tolerance_percent", DEFAULT_COMPARE_TOLERANCE_PERCENT)),
            list(written.get("figures") or []),
        )
    return None


def _comparison(
    report: dict[str, Any], previous: dict[str, Any] | None, previous_name: str | None
) -> str:
    found = comparison_rows(report, previous, previous_name)
    if found is None:
        return ""
    name, tolerance, rows = found
    body = []
    for row in rows:
        figure = Figure(row["name"], 0.0, row.get("unit") or "s")
        now = figure.text(row["current"]) if row.get("current") is not None else "-"
        then = figure.text(row["previous"]) if row.get("previous") is not None else "-"
        ratio = f"{row['ratio']:.2f}" if row.get("ratio") is not None else "-"
        worse = row.get("worse_by_percent")
        if row.get("regressed"):
            css, flag = "worse", f"WORSE by {worse:.0f} %"
        elif row.get("current") is None:
            css, flag = "", "not measured"
        elif row.get("previous") is None:
            css, flag = "", "new"
        elif worse is not None and worse < 0:
            css, flag = "better", f"better by {-worse:.0f} %"
        else:
            css, flag = "", "same" if not worse else f"{worse:.0f} % worse (within tolerance)"
        body.append(
            f'<tr class="{css}" data-figure="{_e(row["name"])}"><td><code>{_e(row["name"])}'
            f'</code></td><td class="num">{_e(now)}</td><td class="num">{_e(then)}</td>'
            f'<td class="num">{_e(ratio)}</td><td class="flag">{_e(flag)}</td></tr>'
        )
    worse_count = sum(1 for r in rows if r.get("regressed"))
    verdict = (
        f"<p><strong class='flag'>{worse_count} figure(s) worse than the tolerance.</strong></p>"
        if worse_count
        else "<p>No figure worse than the tolerance.</p>"
    )
    return (
        "<section id='compare'><h2>Against the last release</h2>"
        f"<p>This run beside <code>{_e(name)}</code>; a figure more than "
        f"{tolerance:g} % worse (and, for times, more than {cmp.NOISE_FLOOR_S * 1000:.0f} ms) "
        "is marked WORSE and fails the run.</p>"
        f"{verdict}<table><tr><th>figure</th><th class='num'>this run</th>"
        "<th class='num'>last release</th><th class='num'>ratio</th><th></th></tr>"
        f"{''.join(body)}</table></section>"
    )


# --- the boards and their updates ------------------------------------------------------------


def _boards(report: dict[str, Any]) -> str:
    per_board = model.board_updates(report)
    if not per_board:
        return "<section id='boards'><h2>Updates</h2><p class='muted'>No update ran.</p></section>"
    devices = {(d.get("address") or d.get("name") or "?"): d for d in report.get("devices") or []}
    out = ["<section id='boards'><h2>Updates, per board</h2>", _legend()]
    for board, updates in per_board.items():
        device = devices.get(board, {})
        before = (device.get("firmware_before") or {}).get("firmware")
        after = (device.get("firmware_after") or {}).get("firmware")
        facts = ", ".join(
            x
            for x in (
                f"firmware before the run {before}" if before else "",
                f"after {after}" if after else "",
            )
            if x
        )
        out.append(
            f'<div class="board" data-board="{_e(board)}"><h2>Board {_e(board)}</h2>'
            + (f"<p class='facts'>{_e(facts)}</p>" if facts else "")
        )
        out += [_update(u, n) for n, u in enumerate(updates, 1)]
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


def _legend() -> str:
    phases = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{_e(model.PHASE_LABELS[p])}</span>'
        for p, c in PHASE_COLOURS.items()
    )
    marks = "".join(
        f'<span><i class="swatch" style="background:{MARKER_COLOURS[k]}"></i>{_e(v)}</span>'
        for k, v in model.MARKER_LABELS.items()
        if k in MARKER_COLOURS
    )
    return (
        f'<div class="legend"><strong>phases:</strong>{phases}</div>'
        f'<div class="legend"><strong>markers:</strong>{marks}<span>'
        '<i class="swatch" style="background:#2e7d32"></i>acknowledged offset '
        "(solid), erase (dashed)</span></div>"
    )


def _update(update: dict[str, Any], index: int) -> str:
    outcome = str(update.get("outcome") or "?")
    test = str(update.get("test") or "?")
    purpose = update.get("purpose") or "test"
    title = f"{test} [{purpose} {update.get('update')}]"
    image = update.get("image") or {}
    facts = (
        f"{outcome}; {float(update.get('duration_s') or 0):.2f} s; "
        f"{float(update.get('throughput_bps') or 0) / 1000:.1f} kB/s while transferring; "
        f"reconnects {update.get('reconnects')}, resumes {update.get('resumes')}, "
        f"restarts {update.get('restarts')}, re-sent {update.get('bytes_resent')} B; "
        f"image {image.get('size')} B crc32 {image.get('crc32')}"
        + (f"; rssi {update['rssi_dbm']} dBm" if update.get("rssi_dbm") is not None else "")
    )
    error = update.get("error")
    phases = update.get("phase_s") or {}
    where = ", ".join(
        f"{model.PHASE_LABELS.get(p, p)} {float(s):.2f} s"
        for p, s in sorted(phases.items(), key=lambda kv: -float(kv[1]))
    )
    events = model.events(update)
    event_rows = "".join(
        f"<tr><td class='num'>{float(ev['t']):.3f}</td><td>{_e(ev['kind'])}</td>"
        f"<td>{_e(ev['detail'])}</td></tr>"
        for ev in events
    )
    return (
        f'<article class="update {_e(outcome)}" data-update="{index}" '
        f'data-test="{_e(test)}"><h3>{_e(title)}</h3><p class="facts">{_e(facts)}</p>'
        + (f'<p class="flag"><strong>{_e(error)}</strong></p>' if error else "")
        + f'<div class="timeline-wrap">{timeline_svg(update)}</div>'
        + (f'<p class="where">Where the time went: {_e(where)}.</p>' if where else "")
        + (
            f"<details><summary>events ({len(events)})</summary><table><tr>"
            f"<th class='num'>t (s)</th><th>event</th><th>detail</th></tr>{event_rows}"
            "</table></details>"
            if events
            else "<p class='muted'>No event times in this report (written before the "
            "release page).</p>"
        )
        + "</article>"
    )


def x_of(t: float, end: float) -> float:
    """The SVG x of time ``t`` on a timeline that ends at ``end``."""
    return PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * max(0.0, min(t / end, 1.0))


def _y_of(fraction: float) -> float:
    return PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * max(0.0, min(fraction, 1.0))


def timeline_svg(update: dict[str, Any]) -> str:
    """One update as inline SVG: phase bands, markers at the events' times, the erase and
    the acknowledged offset as lines (0 to the image's size), a time axis in seconds."""
    end = model.end_time(update)
    out = [
        # width and font as attributes too: pytest-html shows it without this page's CSS
        f'<svg class="timeline" viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" role="img" '
        f'width="100%" font-size="11" font-family="sans-serif" data-end="{end:g}">',
        f"<title>{_e(update.get('test'))}: timeline over {end:.2f} s</title>",
        f'<rect class="plot-area" x="{PLOT_LEFT}" y="{BAND_TOP}" '
        f'width="{PLOT_RIGHT - PLOT_LEFT}" height="{PLOT_BOTTOM - BAND_TOP}" '
        'fill="#fafafa" stroke="#ccc"/>',
        f'<text x="4" y="{BAND_TOP + 17}">phase</text>',
        f'<text x="4" y="{PLOT_TOP + 10}">100 %</text>',
        f'<text x="4" y="{PLOT_BOTTOM}">0</text>',
    ]
    for band in model.bands(update):
        x0, x1 = x_of(band.start, end), x_of(band.end, end)
        colour = PHASE_COLOURS.get(band.phase, "#e0e0e0")
        out.append(
            f'<rect class="band" data-phase="{_e(band.phase)}" x="{x0:.2f}" y="{BAND_TOP}" '
            f'width="{max(x1 - x0, 0.5):.2f}" height="{BAND_HEIGHT}" fill="{colour}">'
            f"<title>{_e(band.label)}: {band.start:.3f} to {band.end:.3f} s "
            f"({band.end - band.start:.3f} s)</title></rect>"
        )
        if x1 - x0 > 8 * len(band.label):
            out.append(
                f'<text x="{(x0 + x1) / 2:.2f}" y="{BAND_TOP + 17}" '
                f'text-anchor="middle">{_e(band.label)}</text>'
            )
    out += _ticks(end)
    out += _progress_lines(update, end)
    for marker in model.markers(update):
        x = x_of(marker.t, end)
        colour = MARKER_COLOURS.get(marker.kind, "#555")
        tall = marker.kind in TALL_MARKERS
        y0, y1 = (BAND_TOP - 8, PLOT_BOTTOM) if tall else (BAND_TOP - 8, BAND_TOP + BAND_HEIGHT)
        out.append(
            f'<line class="marker {_e(marker.kind)}" data-kind="{_e(marker.kind)}" '
            f'data-t="{marker.t:g}" x1="{x:.2f}" x2="{x:.2f}" y1="{y0}" y2="{y1}" '
            f'stroke="{colour}" stroke-width="{3 if tall else 2}"'
            + (' stroke-dasharray="5 3"' if marker.kind == "link-failure" else "")
            + f"><title>{marker.t:.3f} s: {_e(marker.label)}: {_e(marker.detail)}</title></line>"
        )
        if marker.kind == "drop":
            out.append(
                f'<path class="drop-head" d="M{x - 6:.2f} {BAND_TOP - 14} h12 l-6 8 z" '
                f'fill="{colour}"/>'
            )
    out.append("</svg>")
    return "".join(out)


def _ticks(end: float) -> list[str]:
    steps = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
    step = next((s for s in steps if end / s <= 10), end / 10)
    out = []
    for i in range(math.floor(end / step) + 1):
        t = i * step
        x = x_of(t, end)
        out.append(
            f'<line class="tick" x1="{x:.2f}" x2="{x:.2f}" y1="{PLOT_BOTTOM}" '
            f'y2="{PLOT_BOTTOM + 4}" stroke="#888"/>'
            f'<text x="{x:.2f}" y="{PLOT_BOTTOM + 16}" text-anchor="middle">{t:g}</text>'
        )
    out.append(
        f'<text x="{PLOT_RIGHT}" y="{SVG_HEIGHT - 2}" text-anchor="end">'
        f"seconds (end {end:.2f} s)</text>"
    )
    return out


def _progress_lines(update: dict[str, Any], end: float) -> list[str]:
    out = []
    lines = (("erase", ' stroke-dasharray="4 3"', "#ef6c00"), ("transfer", "", "#2e7d32"))
    for phase, dash, colour in lines:
        points = model.progress(update, phase)
        if not points:
            continue
        out.append(
            f'<path class="progress {phase}" d="{_path(points, end)}" fill="none" '
            f'stroke="{colour}" stroke-width="2"{dash}><title>{_e(phase)} progress'
            "</title></path>"
        )
    return out


def _path(points: Iterable[model.Point], end: float) -> str:
    """Points joined; across a gap (a drop, a stall) the line holds, then steps to the next
    point: the offset did not move while nothing was acknowledged."""
    d: list[str] = []
    last: model.Point | None = None
    for point in points:
        x, y = x_of(point.t, end), _y_of(point.fraction)
        if last is None:
            d.append(f"M{x:.2f} {y:.2f}")
        elif point.t - last.t > 0.25 or point.fraction < last.fraction:
            d.append(f"H{x:.2f} V{y:.2f}")
        else:
            d.append(f"L{x:.2f} {y:.2f}")
        last = point
    return " ".join(d)


# --- the kill table --------------------------------------------------------------------------


def _kill_table(data: dict[str, Any]) -> str:
    bugs = data.get("bugs") or {}
    killed = sum(1 for b in bugs.values() if b.get("killed"))
    rows = []
    for name, bug in sorted(bugs.items(), key=lambda kv: (bool(kv[1].get("killed")), kv[0])):
        caught = list(bug.get("caught_by") or [])
        example = ", ".join(caught[:2]) + (f" (+{len(caught) - 2})" if len(caught) > 2 else "")
        css = "" if bug.get("killed") else "worse"
        rows.append(
            f'<tr class="{css}" data-bug="{_e(name)}"><td><code>{_e(name)}</code></td>'
            f'<td class="flag">{"killed" if bug.get("killed") else "SURVIVED"}</td>'
            f'<td class="num">{len(caught)}</td>'
            f'<td class="num">{len(bug.get("caught_on_hardware_too") or [])}</td>'
            f"<td>{_e(example)}</td></tr>"
        )
    return (
        "<section id='kill-table'><h2>Kill table</h2>"
        f"<p>{killed} of {len(bugs)} firmware bugs killed by hil_tests "
        f"({_e(data.get('tests'))} tests per run, {_e(data.get('seconds'))} s wall); "
        "docs/firmware-bugs.md says what each bug does.</p>"
        "<table><tr><th>firmware bug</th><th></th><th class='num'>caught by</th>"
        "<th class='num'>on hardware too</th><th>for example</th></tr>"
        f"{''.join(rows)}</table></section>"
    )


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)

"""Each update's timeline in the reports a project already has: when pytest-html is
installed and writing a report (``--html``), the test's row gets the timeline of every
update it made as an extra (inline SVG, the release page's drawing).

Acts only when pytest-html is active in this run; otherwise does nothing at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..release_report.render import timeline_svg


def attach_timelines(
    config: pytest.Config, report: pytest.TestReport, records: list[dict[str, Any]]
) -> None:
    """Add the timelines of ``records`` (the test's update records) to ``report.extras``."""
    if not records or not config.pluginmanager.has_plugin("html"):
        return
    try:
        from pytest_html import extras  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a plugin named "html" that is not pytest-html
        return
    added = [
        extras.html(f'<div class="smartball-timeline">{timeline_svg(record)}</div>')
        for record in records
    ]
    report.extras = [*getattr(report, "extras", []), *added]  # type: ignore[attr-defined]

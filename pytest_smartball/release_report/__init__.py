"""The release page (issue 25): ``--smartball-html PATH`` or ``smartball-report`` write one
self-contained HTML file over the ``--smartball-report`` JSON: per board each update as a
timeline, the timing contract's figures against their limits, the comparison with the last
release and the kill table.

:mod:`.trace` thins an update's progress for the JSON report; :mod:`.model` reads what to
draw from an update's record; :mod:`.render` writes the page; :mod:`.command` is the
``smartball-report`` command. All but the command are pure.
"""

from __future__ import annotations

from .render import render_report, timeline_svg

__all__ = ["render_report", "timeline_svg"]

"""``smartball-report REPORT.json``: the release page over a ``--smartball-report`` file.

Bad input (a missing file, not JSON, not such a report) is one sentence on stderr and exit
code 2; the page is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .render import render_report

#: Exit codes: as smartball-ota's for bad input.
EXIT_OK = 0
EXIT_BAD_INPUT = 2


class Unusable(ValueError):
    """An input file cannot be used (one sentence)."""


def load_json(path: str | Path, what: str, key: str) -> dict[str, Any]:
    """A JSON object from ``path`` that has ``key`` (what the file must be, for the
    sentence)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Unusable(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise Unusable(f"{path} is not JSON; pass {what}") from None
    if not isinstance(data, dict) or key not in data:
        raise Unusable(f"{path} is not {what}")
    return data


def load_report(path: str | Path) -> dict[str, Any]:
    return load_json(path, "a report that --smartball-report wrote", "smartball_report")


def load_kill_table(path: str | Path) -> dict[str, Any]:
    return load_json(
        path, "the kill-table.json of python -m tests.gate.kill_table --out DIR", "bugs"
    )


def write_page(
    path: str | Path,
    report: dict[str, Any],
    compare: dict[str, Any] | None = None,
    kill_table: dict[str, Any] | None = None,
    *,
    compare_name: str | None = None,
) -> Path:
    """Render and write the page atomically (a reader never sees half a page)."""
    path = Path(path)
    page = render_report(report, compare, kill_table, compare_name=compare_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the page (one file system), named per process: two runs never share it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="smartball-report",
        description="Write the release page (one self-contained HTML file) over a "
        "--smartball-report JSON report.",
    )
    ap.add_argument("report", metavar="REPORT.json", help="what --smartball-report wrote")
    ap.add_argument(
        "-o",
        "--output",
        metavar="PAGE.html",
        help="where to write the page (default: REPORT with the suffix .html)",
    )
    ap.add_argument(
        "--compare",
        metavar="PREVIOUS_REPORT.json",
        help="the last release's report: its figures beside this run's, worse ones marked "
        "(default: the comparison --smartball-compare wrote into REPORT, if any)",
    )
    ap.add_argument(
        "--kill-table",
        metavar="KILL_TABLE.json",
        help="kill-table.json of python -m tests.gate.kill_table --out DIR",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = load_report(args.report)
        previous = load_report(args.compare) if args.compare else None
        kill = load_kill_table(args.kill_table) if args.kill_table else None
        out = Path(args.output) if args.output else Path(args.report).with_suffix(".html")
        write_page(out, report, previous, kill, compare_name=args.compare)
    except Unusable as exc:
        print(f"smartball-report: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(
            f"smartball-report: cannot write the page: {exc.strerror or exc} ({exc.filename})",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(f"smartball-report: {out}")
    return EXIT_OK


if __name__ == "__main__":  # python -m pytest_smartball.release_report.command
    sys.exit(main())

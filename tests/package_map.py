"""README.md's package map, rendered from the tree: one row per package folder of
``pytest_smartball`` and ``smartball_sim``, led by its ``__init__`` docstring's first sentence
and naming every module in it with its own docstring's first sentence.

``python -m tests.package_map --write`` puts the map between README.md's markers;
``--check`` (and ``tests/system/test_structure.py``) fails when README's map is not the
tree's, which is how every module stays named.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The installed packages the map shows, each by the folder its source lives in.
PACKAGES = (ROOT / "pytest_smartball", ROOT / "sim" / "smartball_sim")
BEGIN = "<!-- BEGIN package-map (python -m tests.package_map --write) -->"
END = "<!-- END package-map -->"

_ROLE = re.compile(r":[a-z]+:`~?\.?([^`]+)`")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z`(*])")


def first_sentence(source: str) -> str:
    """The first sentence of a module's docstring, on one line, as Markdown."""
    docstring = ast.get_docstring(ast.parse(source)) or ""
    paragraph = " ".join(docstring.split("\n\n", 1)[0].split())
    sentence = _SENTENCE_END.split(paragraph, maxsplit=1)[0]
    sentence = _ROLE.sub(r"`\1`", sentence).replace("``", "`")
    return sentence.replace("|", "\\|")


def package_folders() -> list[Path]:
    """Every package folder of the mapped packages, parents before their children."""
    return sorted(init.parent for package in PACKAGES for init in package.rglob("__init__.py"))


def row(folder: Path) -> str:
    """One folder's row: its lead, then each module it holds (``__init__.py`` aside)."""
    lead = first_sentence((folder / "__init__.py").read_text(encoding="utf-8"))
    modules = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    named = "; ".join(
        f"`{p.name}`: {first_sentence(p.read_text(encoding='utf-8')).rstrip('.')}" for p in modules
    )
    where = folder.relative_to(ROOT).as_posix()
    return f"| `{where}/` | {lead}<br>{named} |"


def render() -> str:
    """The map as README.md holds it between its markers."""
    rows = [row(folder) for folder in package_folders()]
    return "\n".join(["| package | what its modules are |", "| --- | --- |", *rows])


def in_readme(text: str) -> str:
    """The part of README.md between the package-map markers."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write() -> None:
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{render()}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.package_map", description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write the map into README.md")
    action.add_argument("--check", action="store_true", help="exit 1 if README's map is stale")
    args = parser.parse_args(argv)
    if args.write:
        write()
        return 0
    if in_readme(README.read_text(encoding="utf-8")) != render():
        print("README.md's package map is stale: python -m tests.package_map --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

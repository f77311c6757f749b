"""Structure rules beside the import rules of test_citizen.py: no module grows past ~600
lines, and README.md's package map is the one the tree renders now (so every module of
both packages is named in it, by its own docstring)."""

from __future__ import annotations

from pathlib import Path

from tests import package_map

ROOT = Path(__file__).resolve().parents[2]
#: Where the project's Python lives (the root conftest.py too); a module past this many
#: lines wants splitting by responsibility.
SOURCE_DIRS = ("pytest_smartball", "sim", "tests", "hil_tests", "bench")
MAX_LINES = 600


def python_modules() -> list[Path]:
    found = [path for d in SOURCE_DIRS for path in (ROOT / d).rglob("*.py")]
    return sorted([*found, ROOT / "conftest.py"])


def line_count(path: Path) -> int:
    """Lines as ``wc -l`` counts them (newline characters)."""
    return path.read_bytes().count(b"\n")


def test_no_module_is_longer_than_600_lines() -> None:
    long = {
        path.relative_to(ROOT).as_posix(): lines
        for path in python_modules()
        if (lines := line_count(path)) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


def test_the_modules_counted_include_every_source_folder() -> None:
    counted = {path.relative_to(ROOT).parts[0] for path in python_modules()}
    assert counted == {*SOURCE_DIRS, "conftest.py"}


def test_the_readme_package_map_is_the_one_the_tree_renders() -> None:
    readme = package_map.in_readme(package_map.README.read_text(encoding="utf-8"))
    assert readme == package_map.render(), (
        "README.md's package map differs from the tree: python -m tests.package_map --write"
    )


def test_the_package_map_names_every_module_of_both_packages() -> None:
    rendered = package_map.render()
    for package in package_map.PACKAGES:
        for module in package.rglob("*.py"):
            if module.name != "__init__.py":
                folder = module.parent.relative_to(ROOT).as_posix()
                row = next(line for line in rendered.splitlines() if f"`{folder}/`" in line)
                assert f"`{module.name}`:" in row, f"{module} is not named in its folder's row"

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


def test_every_top_level_folder_of_python_is_counted() -> None:
    """A new folder of the project's Python must join SOURCE_DIRS (the venv, hidden folders
    and build output aside)."""
    generated = {"build", "dist"}
    with_python = {
        folder.name
        for folder in ROOT.iterdir()
        if folder.is_dir()
        and not folder.name.startswith(".")
        and folder.name not in generated
        and not folder.name.endswith(".egg-info")
        and any(folder.rglob("*.py"))
    }
    assert with_python == set(SOURCE_DIRS)


def test_the_readme_package_map_is_the_one_the_tree_renders() -> None:
    readme = package_map.in_readme(package_map.README.read_text(encoding="utf-8"))
    assert readme == package_map.render(), (
        "README.md's package map differs from the tree: python -m tests.package_map --write"
    )


def test_every_module_of_both_packages_is_in_a_mapped_folder_and_says_what_it_is() -> None:
    """The map names a module by its folder's row and its docstring's first sentence: so
    every module sits in a package folder of the map and has a first sentence to show."""
    folders = set(package_map.package_folders())
    for package in package_map.PACKAGES:
        for module in package.rglob("*.py"):
            assert module.parent in folders, f"{module}: its folder is no package of the map"
            sentence = package_map.first_sentence(module.read_text(encoding="utf-8"))
            assert sentence, f"{module}: no docstring to name it by in README's map"

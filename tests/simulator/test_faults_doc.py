"""docs/faults.md against the code: every fault spec it shows parses and round-trips, its
tables cover every effect, trigger and profile (with the profiles' real expansions), and
its shell and Python examples run and do what the document says.

Specs are collected from ``--faults <spec>``, ``--faults '<spec>'``, ``--sim-faults=<spec>``,
``faults("<spec>")``, ``set_faults("<spec>")`` and ``parse("<spec>")`` anywhere in the
document, from every inline code span that starts with an effect or profile name, and from
the example columns of its tables. Specs listed under "Rejected spec" must fail to parse.

The ``smartball-ota`` commands in ``sh`` blocks run in-process (``# exit N`` gives the
expected exit code); the output pasted after them (fault logs, stderr events, the error
line) must match a real run, times aside. ``python`` blocks run too: snippets with
``exec``, test examples in an inner pytest session, where only tests named
``*fails_on_purpose*`` may fail.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from pytest_smartball.cli import main
from smartball_sim.faults import EFFECTS, PROFILES, TRIGGERS, Effect, FaultPlan, FaultSpecError
from smartball_sim.make_image import make_image

pytest_plugins = ["pytester"]

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "faults.md"
DOC = DOC_PATH.read_text(encoding="utf-8")


# --- reading the document -----------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    info: str
    text: str
    index: int  # position among the document's fenced blocks


def fenced_blocks() -> list[Block]:
    found = re.finditer(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", DOC, re.MULTILINE | re.DOTALL)
    return [Block(m.group(1).strip(), m.group(2), i) for i, m in enumerate(found)]


def prose() -> str:
    """The document without its fenced blocks."""
    return re.sub(r"^```[^\n`]*\n.*?^```[ \t]*$", "", DOC, flags=re.MULTILINE | re.DOTALL)


def inline_code(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def table(header_first_cell: str) -> list[list[str]]:
    """The rows (cells stripped) of the table whose header row starts with that cell."""
    lines = DOC.splitlines()
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if line.startswith("|") and _cells(line)[0] == header_first_cell
        ),
        None,
    )
    assert start is not None, f"no table with a {header_first_cell!r} column in {DOC_PATH}"
    rows = []
    for line in lines[start + 2 :]:  # past the header and its --- row
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    return rows


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def code_in(cell: str) -> list[str]:
    return inline_code(cell)


def only_code(cell: str) -> str:
    spans = code_in(cell)
    assert len(spans) == 1, f"expected one code span in table cell {cell!r}"
    return spans[0]


_SPEC_PATTERNS = (
    r"--faults\s+'([^']*)'",
    r'--faults\s+"([^"]*)"',
    r"--faults\s+([^\s'\"`|]+)",
    r"--sim-faults='([^']*)'",
    r"--sim-faults=([^\s'\"`|]+)",
    r"(?:faults|parse)\(\s*\"([^\"]*)\"\s*\)",
    r"(?:faults|parse)\(\s*'([^']*)'\s*\)",
)

_NAMES = sorted({*EFFECTS, *PROFILES}, key=len, reverse=True)
_STARTS_WITH_A_NAME = re.compile(rf"^(?:{'|'.join(map(re.escape, _NAMES))})(?=$|[:@,])")


def rejected_specs() -> set[str]:
    return {only_code(row[0]) for row in table("Rejected spec")}


def shown_specs() -> set[str]:
    """Every spec the document presents as usable."""
    specs: set[str] = set()
    for pattern in _SPEC_PATTERNS:
        specs.update(re.findall(pattern, DOC))
    for span in inline_code(prose()):
        # a bare effect name (`race`, `slow-erase`) is a name in a sentence, not a spec
        if _STARTS_WITH_A_NAME.match(span) and span not in EFFECTS:
            specs.add(span)
    for effect_row in effect_rows():
        specs.add(effect_row.example)
    for row in table("Trigger"):
        specs.add(only_code(row[3]))
    for row in table("You write"):
        specs.update(code_in(row[0]) + code_in(row[1]))
    for row in table("Profile"):
        specs.update(code_in(row[0]) + code_in(row[1]))
    return specs - rejected_specs()


@dataclass(frozen=True)
class EffectRow:
    effect: str
    argument: str
    example: str


def effect_rows() -> list[EffectRow]:
    return [EffectRow(only_code(r[0]), r[1], only_code(r[2])) for r in table("Effect")]


# --- fault specs --------------------------------------------------------------------------


def test_the_document_shows_specs_in_every_form() -> None:
    specs = shown_specs()
    assert len(specs) >= 40, sorted(specs)
    for needle in ("field-linux", "drop@erase:50%", "reboot@offset:200000", "flaky"):
        assert needle in specs
    assert "lose:MSG_OTA_READY" in specs  # from @pytest.mark.faults("...")
    assert "slow-erase:30s,drop@erase:50%" in specs  # from set_faults("...")


@pytest.mark.parametrize("spec", sorted(shown_specs()))
def test_every_spec_shown_parses_and_round_trips(spec: str) -> None:
    plan = FaultPlan.parse(spec)
    assert plan, f"{spec!r} parses to an empty plan"
    canonical = str(plan)
    assert FaultPlan.parse(canonical) == plan
    assert str(FaultPlan.parse(canonical)) == canonical


@pytest.mark.parametrize("spec", sorted(rejected_specs()))
def test_every_rejected_spec_is_rejected(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        FaultPlan.parse(spec)


def test_canonical_spelling_table() -> None:
    rows = table("You write")
    assert rows
    for row in rows:
        written, canonical = only_code(row[0]), only_code(row[1])
        assert str(FaultPlan.parse(written)) == canonical, written
        assert FaultPlan.parse(canonical) == FaultPlan.parse(written)


# --- the tables cover the code ------------------------------------------------------------

_ARGUMENT_WORDS = {
    None: "none",
    "seconds": "duration",
    "count": "count",
    "count_or_type": "count",
    "percent": "percent",
    "offset": "byte offset",
}


def test_effects_table_lists_every_effect_once_with_its_argument_and_an_example() -> None:
    rows = effect_rows()
    names = [row.effect for row in rows]
    assert sorted(names) == sorted(EFFECTS), "the effects table must list each effect once"
    assert len(names) == len(set(names))
    for row in rows:
        kind = EFFECTS[Effect(row.effect)][0]
        assert row.argument.lower().startswith(_ARGUMENT_WORDS[kind]), row
        if kind == "count_or_type":
            assert "type" in row.argument
        (fault,) = FaultPlan.parse(row.example).faults
        assert fault.effect == row.effect, row


def test_triggers_table_lists_every_trigger_with_a_matching_example() -> None:
    rows = table("Trigger")
    kinds = [only_code(row[0]) for row in rows if row[0] != "none"]
    assert sorted(kinds) == sorted(TRIGGERS)
    assert any(row[0] == "none" for row in rows), "untriggered faults need a row too"
    for row in rows:
        (fault,) = FaultPlan.parse(only_code(row[3])).faults
        expected = "now" if row[0] == "none" else only_code(row[0])
        assert fault.trigger.kind == expected, row


def test_profiles_table_shows_the_real_expansions() -> None:
    shown = {only_code(row[0]): only_code(row[1]) for row in table("Profile")}
    assert shown == PROFILES
    for name, expansion in shown.items():
        assert FaultPlan.parse(name) == FaultPlan.parse(expansion)


@pytest.mark.parametrize("name", [*EFFECTS, *TRIGGERS, *PROFILES])
def test_every_effect_trigger_and_profile_is_mentioned(name: str) -> None:
    assert f"`{name}" in DOC


def test_the_timeline_section_title_matches_the_plugin() -> None:
    from pytest_smartball.plugin.recording import TIMELINE_TITLE

    assert f"`{TIMELINE_TITLE}`" in DOC


# --- the shell examples -------------------------------------------------------------------


@dataclass(frozen=True)
class ShellExample:
    argv: list[str]
    exit_code: int
    output: str  # the text blocks that follow the command's block, if any
    #: ``python -c CODE`` that reads the command's stdout (``cmd | python -c ...``), if any
    reader: str | None = None


def shell_examples() -> list[ShellExample]:
    blocks = fenced_blocks()
    examples = []
    for block in blocks:
        if block.info != "sh":
            continue
        following = []
        for later in blocks[block.index + 1 :]:
            if later.info != "text":
                break
            following.append(later.text)
        output = "\n".join(following)
        for line in block.text.splitlines():
            command, _, comment = line.partition("  #")
            part = next(
                (p for p in command.split("&&") if p.strip().startswith("smartball-ota ")), None
            )
            if part is None:
                continue
            part, _, reader = part.partition(" | ")  # the command, and what reads its output
            code = re.search(r"exit (\d+)", comment)
            reader_argv = shlex.split(reader) if reader else []
            examples.append(
                ShellExample(
                    shlex.split(part)[1:],
                    int(code.group(1)) if code else 0,
                    output,
                    reader_argv[2] if reader_argv[:2] == ["python", "-c"] else None,
                )
            )
    return examples


SHELL_EXAMPLES = shell_examples()


#: A progress event as the CLI prints it on stderr: ``[   15.6s] link-lost: ...``.
SHOWN_EVENT = r"^\[\s*\d+\.\d+s\] (.*)$"


def test_the_shell_examples_are_found() -> None:
    assert len(SHELL_EXAMPLES) >= 5
    assert all(example.argv[0] == "flash" for example in SHELL_EXAMPLES)
    assert any(example.exit_code != 0 for example in SHELL_EXAMPLES)
    # at least one pastes the progress events, so test_shell_example_runs compares them
    assert any(re.search(SHOWN_EVENT, e.output, re.MULTILINE) for e in SHELL_EXAMPLES)


def _fault_lines(text: str) -> list[str]:
    """The fault log under "Faults on the simulated device (N):", without the times."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Faults on the simulated device" in line)
    out = []
    for line in lines[start + 1 :]:
        m = re.match(r"^\s+\d+\.\d+s  (.*)$", line)
        if not m:
            break
        out.append(m.group(1).rstrip())
    return out


@pytest.mark.parametrize("example", SHELL_EXAMPLES, ids=[" ".join(e.argv) for e in SHELL_EXAMPLES])
def test_shell_example_runs(
    example: ShellExample,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    image = Path("build/demo.bin")  # `python -m smartball_sim.make_image build/demo.bin`
    image.parent.mkdir()
    image.write_bytes(make_image())
    assert str(image) in example.argv
    code = main(example.argv)
    out, err = capsys.readouterr()
    assert code == example.exit_code, out + err
    assert "Traceback" not in out + err
    if "Faults on the simulated device" in example.output:
        # the fault log pasted in the document is what the run logs (times aside)
        assert _fault_lines(example.output) == _fault_lines(out)
    if "--json" in example.argv and example.output:
        logged = [re.sub(r"^\s*\d+\.\d+s  ", "", r) for r in json.loads(out)["fault_log"]]
        shown = re.findall(r"'\s*\d+\.\d+s  ([^']*)'", example.output)
        assert logged == shown
    shown_events = re.findall(SHOWN_EVENT, example.output, re.MULTILINE)
    if shown_events:  # the example pastes stderr: all the events the run reports (times aside)
        assert shown_events == re.findall(r"\[\s*\d+\.\d+s\] ([^\r\n]*)", err)
    first_output_line = next((ln for ln in example.output.splitlines() if ln.strip()), "")
    if first_output_line.startswith("smartball-ota: "):
        assert first_output_line.split(":")[1] in err
    if example.reader is not None:
        out = _read_with(example.reader, out)
    # every pasted line ("..." aside) is a line of the run, figures and times included
    run_lines = {line.rstrip() for line in (out + "\n" + err).splitlines()}
    for line in example.output.splitlines():
        if line.strip() and line.strip() != "...":
            assert line.rstrip() in run_lines, (
                f"docs/faults.md shows a line no run prints: {line!r}"
            )


def _read_with(code: str, stdout: str) -> str:
    """What ``cmd | python -c CODE`` prints, given the command's stdout."""
    import contextlib
    import io
    import sys

    printed = io.StringIO()
    with mock.patch.object(sys, "stdin", io.StringIO(stdout)), contextlib.redirect_stdout(printed):
        exec(compile(code, "<docs/faults.md reader>", "exec"), {})
    return printed.getvalue()


# --- the Python examples ------------------------------------------------------------------

PYTHON_BLOCKS = [b for b in fenced_blocks() if b.info == "python"]
SNIPPETS = [b for b in PYTHON_BLOCKS if "def test_" not in b.text]
TEST_BLOCKS = [b for b in PYTHON_BLOCKS if "def test_" in b.text]


def test_the_python_examples_are_found() -> None:
    assert len(SNIPPETS) >= 2 and len(TEST_BLOCKS) >= 2
    assert any("@pytest.mark.faults(" in b.text for b in TEST_BLOCKS)
    assert any("sim_device.set_faults(" in b.text for b in TEST_BLOCKS)


@pytest.mark.parametrize("block", SNIPPETS, ids=[f"block{b.index}" for b in SNIPPETS])
def test_python_snippet_runs(block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(block.text, f"{DOC_PATH}:block{block.index}", "exec"), {"__name__": "doc"})


INNER_INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
timeout = 30
"""


def test_python_test_examples_pass_or_fail_as_the_document_says(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".ini", pytest=INNER_INI)
    names: list[str] = []
    for block in TEST_BLOCKS:
        names += re.findall(r"def (test_\w+)", block.text)
        pytester.makepyfile(**{f"test_doc_block{block.index}": block.text})
    failing = [n for n in names if "fails_on_purpose" in n]
    assert failing, "the timeline example must fail on purpose"
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", timeout=120
    )
    result.assert_outcomes(passed=len(names) - len(failing), failed=len(failing))
    output = result.stdout.str()
    assert "smartball timeline (client | device)" in output
    assert re.search(r"device  reboot +\[offset:60000\]", output)


# --- figures in the prose -----------------------------------------------------------------


def _run_cli(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[str, str]:
    monkeypatch.chdir(tmp_path)
    Path("build").mkdir(exist_ok=True)
    Path("build/demo.bin").write_bytes(make_image())
    assert main(argv) == 0
    out, err = capsys.readouterr()
    return out, err


def test_the_field_linux_walkthrough_shows_a_runs_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    start = DOC.index("What `field-linux` does to the field-sized image")
    text = DOC[start : DOC.index("\n## ", start)]
    out, err = _run_cli(
        ["flash", "build/demo.bin", "--sim", "--sim-trust", "none", "--faults", "field-linux"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    stamps = re.findall(r"\[\s*(\d+\.\d+)s\]", err)  # stderr's events
    stamps += re.findall(r"^\s+(\d+\.\d+)s  ", out, re.MULTILINE)  # the fault log
    times = {f"{float(t):.1f}" for t in stamps}
    shown = re.findall(r"(\d+\.\d) s\b", text)
    assert len(shown) >= 5
    for figure in shown:
        assert figure in times, f"docs/faults.md: {figure} s is no time of the field-linux run"
    pages = re.search(r"the (\d+)-page erase", text)
    assert pages is not None and int(pages.group(1)) == -(-len(make_image()) // 4096)
    for offset in re.findall(r"at offset (\d+)", text):
        assert f"resume: at offset {offset} of" in err


def test_the_flaky_figures_in_the_effects_table_are_a_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = re.search(
        r"Observed with `(flaky:[\d.]+%)`, the ([\d,]+)-byte image and the CLI's default "
        r"`--seed 0`: (\d+) drops, (\d+) resumes, ([\d,]+) bytes re-sent",
        DOC,
    )
    assert m is not None, "the flaky row's figures are not where this test looks"
    spec, size, drops, resumes, resent = m.groups()
    assert int(size.replace(",", "")) == len(make_image())
    out, _ = _run_cli(
        ["flash", "build/demo.bin", "--sim", "--sim-trust", "none", "--faults", spec],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert out.count(f"drop  [applied] ({spec})") == int(drops)
    assert re.search(rf", {resumes} resumes,", out), out
    assert f"({resent.replace(',', '')} re-sent)" in out, out

"""How strong is hil_tests, measured without a hand-picked list of bugs: mutation analysis
of the reference firmware model (issue 20).

    python -m tests.gate.mutation [--sample N --seed S | --all] [--jobs 2] [--out DIR]
                                 [--floor RATE] [--timeout SECONDS]

The mutants are cosmic-ray's (every operator it has, over every module of
``MODULES``: the simulated SmartBall's firmware and its flash, not its radio, stack or
fault injector). Some cannot change anything the gate could see; they are excluded by a
rule stated in :func:`excluded_by_rule`, never one by one. The rest are the population:
``--sample N`` draws N of them uniformly with a fixed seed (CI; the same N and seed and
source give the same mutants), ``--all`` takes every one (nightly).

Each mutant runs in a copy of the tree of its own under ``--out`` (the working tree is
never touched; two runs with different ``--out`` never meet), two at a time: ``pytest``
of the gate's tests (kill_table.GATE_TESTS) ``--device=sim`` with the kill table's observer
(kill_observer.py), which ends the run at the first test that catches it. Each mutant is then

* ``caught``: a test failed on its own terms (the kill table's rule);
* ``crashed``: tests failed only because the simulator raised (or could not be imported);
* ``hung``: a test ran past the observer's per-test timeout, or the run past ``--timeout``;
* ``survived``: every test passed;
* ``equivalent``: it survived and is one of the mutants argued, in ``EQUIVALENTS``
  (mutation_equivalents.json), to behave exactly as the reference in every way the
  protocol can observe; each comes with its argument.

The kill rate is caught / (mutants - equivalent); crashed and hung are counted apart and
are not kills (a crash is the simulator failing, not the gate catching a bug). Exit
status 1 when the rate is below ``--floor``, or the control run (the copy unmutated)
fails. Survivors are printed as diffs either way.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.gate.kill_table import GATE_TESTS, observed_suite_command

ROOT = Path(__file__).resolve().parents[2]
#: The reference firmware model: what a SmartBall's firmware decides, and its flash.
MODULES = (
    "sim/smartball_sim/firmware/model.py",
    "sim/smartball_sim/firmware/activation.py",
    "sim/smartball_sim/firmware/data.py",
    "sim/smartball_sim/firmware/erase.py",
    "sim/smartball_sim/firmware/types.py",
    "sim/smartball_sim/firmware/flash.py",
    "sim/smartball_sim/firmware/flash_controller.py",
    "sim/smartball_sim/firmware/signed.py",
    "sim/smartball_sim/firmware/swap.py",
)
EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.json")
#: What a copy of the tree leaves out: environments, caches, build output, VCS.
NOT_COPIED = shutil.ignore_patterns(
    ".venv", ".git", "build", "__pycache__", ".mypy_cache", ".ruff_cache", ".hypothesis"
)
#: As the kill table's runs: the fuzz properties scaled down, no shrinking.
FUZZ_EXAMPLES = 2
LOG_RECEIVERS = frozenset({"log", "logger", "logging"})


@dataclass(frozen=True, slots=True, order=True)
class Mutant:
    module: str  # relative to ROOT
    operator: str  # cosmic-ray's operator name
    occurrence: int  # the operator's n-th position in the module
    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def id(self) -> str:
        return f"{Path(self.module).name}:{self.operator.rpartition('/')[2]}#{self.occurrence}"


@dataclass(slots=True)
class MutantRun:
    mutant: Mutant
    verdict: str  # caught, crashed, hung, survived, equivalent
    why: str = ""
    seconds: float = 0.0
    diff: str = ""


# --- the population -------------------------------------------------------------------


def generate(root: Path = ROOT, modules: Iterable[str] = MODULES) -> list[Mutant]:
    """Every mutant cosmic-ray's operators make of ``modules``, in a stable order."""
    from cosmic_ray.commands.init import init
    from cosmic_ray.work_db import WorkDB, use_db

    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        with use_db(str(Path(tmp) / "session.sqlite"), WorkDB.Mode.create) as db:
            init([root / m for m in modules], db, {})
            items = list(db.work_items)
    mutants = []
    for item in items:
        for spec in item.mutations:
            mutants.append(
                Mutant(
                    module=str(Path(spec.module_path).relative_to(root)),
                    operator=spec.operator_name,
                    occurrence=spec.occurrence,
                    line=spec.start_pos[0],
                    column=spec.start_pos[1],
                    end_line=spec.end_pos[0],
                    end_column=spec.end_pos[1],
                )
            )
    return sorted(mutants)


@dataclass(frozen=True, slots=True)
class Span:
    start: tuple[int, int]
    end: tuple[int, int]
    rule: str

    def holds(self, mutant: Mutant) -> bool:
        return (
            self.start <= (mutant.line, mutant.column)
            and (mutant.end_line, mutant.end_column) <= self.end
        )


def _span(node: ast.AST, lines: list[str], rule: str) -> Span:
    """A node's extent in characters (ast counts UTF-8 bytes; cosmic-ray characters)."""

    def chars(line: int, byte_col: int) -> int:
        return len(lines[line - 1].encode("utf-8")[:byte_col].decode("utf-8", "ignore"))

    end_line = getattr(node, "end_lineno", None) or node.lineno  # type: ignore[attr-defined]
    end_col = getattr(node, "end_col_offset", None) or 0
    return Span(
        (node.lineno, chars(node.lineno, node.col_offset)),  # type: ignore[attr-defined]
        (end_line, chars(end_line, end_col)),
        rule,
    )


def invisible_spans(source: str) -> list[Span]:
    """The parts of a module whose mutants no test of the device can observe, by rule:

    * ``annotation``: type annotations (every module has ``from __future__ import
      annotations``: they are strings nobody evaluates);
    * ``type-checking``: ``if TYPE_CHECKING:`` blocks (they never run);
    * ``log``: the arguments of a logging call (``log.info(...)``): text in the
      simulator's log, never on the radio;
    * ``exception-text``: the arguments of the exception a ``raise`` builds (its message;
      whether and where it is raised stays under test);
    * ``repr``: ``__repr__`` and ``__str__`` bodies (how the simulator prints itself);
    * ``bug-branch``: what runs only when a catalogued bug is switched on: the body of an
      ``if`` (or the first value of an ``x if ... else y``) whose condition holds only if
      ``Bug.NAME in self.bugs`` (alone, or one operand of an ``and``), and the other
      operands of that ``and`` (side-effect-free comparisons: without the bug the
      condition is false whatever they say). The reference has no bugs, so none of it
      decides anything there. The switch itself stays: ``in`` made ``not in`` turns the
      bug on in the reference, a mutant like any other."""
    tree = ast.parse(source)
    lines = source.splitlines()
    spans: list[Span] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name in ("__repr__", "__str__"):
                spans.append(_span(node, lines, "repr"))
            if node.returns is not None:
                spans.append(_span(node.returns, lines, "annotation"))
            all_args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            all_args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            spans += [_span(a.annotation, lines, "annotation") for a in all_args if a.annotation]
        elif isinstance(node, ast.AnnAssign):
            spans.append(_span(node.annotation, lines, "annotation"))
        elif isinstance(node, ast.If) and (
            isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        ):
            spans.append(_span(node, lines, "type-checking"))
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in LOG_RECEIVERS
            ):
                spans += [_span(a, lines, "log") for a in node.args]
        elif isinstance(node, ast.If | ast.IfExp) and _only_with_a_bug(node.test):
            body = node.body if isinstance(node.body, list) else [node.body]
            spans += [_span(part, lines, "bug-branch") for part in body]
            if isinstance(node.test, ast.BoolOp):  # the and's other operands
                others = [v for v in node.test.values if not _is_bug_switch_on(v)]
                spans += [_span(v, lines, "bug-branch") for v in others]
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            call = node.exc
            spans += [_span(a, lines, "exception-text") for a in call.args]
            spans += [_span(k.value, lines, "exception-text") for k in call.keywords]
    return spans


def _is_bug_switch_on(test: ast.expr) -> bool:
    """``Bug.NAME in <anything>``: true only when the bug is switched on."""
    return (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.In)
        and isinstance(test.left, ast.Attribute)
        and isinstance(test.left.value, ast.Name)
        and test.left.value.id == "Bug"
    )


def _only_with_a_bug(test: ast.expr) -> bool:
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_only_with_a_bug(value) for value in test.values)
    return _is_bug_switch_on(test)


def excluded_by_rule(mutant: Mutant, spans: list[Span]) -> str:
    """The rule that excludes a mutant (see :func:`invisible_spans`), or ""."""
    return next((s.rule for s in spans if s.holds(mutant)), "")


def population(mutants: list[Mutant], root: Path = ROOT) -> tuple[list[Mutant], Counter[str]]:
    """The mutants the gate could see, and how many each rule excluded."""
    spans = {m: invisible_spans((root / m).read_text(encoding="utf-8")) for m in MODULES}
    kept: list[Mutant] = []
    excluded: Counter[str] = Counter()
    for mutant in mutants:
        rule = excluded_by_rule(mutant, spans.get(mutant.module) or [])
        if rule:
            excluded[rule] += 1
        else:
            kept.append(mutant)
    return kept, excluded


def draw(mutants: list[Mutant], size: int, seed: int) -> list[Mutant]:
    """``size`` of the mutants, uniformly without replacement, by a fixed seed: the ones
    whose seeded hash of their id is smallest. Each mutant's rank depends on it alone, so
    a mutant that leaves the population (a new rule, a line removed) takes only itself
    out of the sample, and the next one in rank takes its place."""

    def rank(mutant: Mutant) -> bytes:
        return hashlib.sha256(f"{seed}:{mutant.id}".encode()).digest()

    return sorted(sorted(mutants, key=rank)[:size])


def margin(rate: float, n: int, z: float = 1.96) -> float:
    """Half the width of the 95 % Wilson interval of a rate measured on n mutants."""
    if n == 0:
        return 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(abs(centre + half - rate), abs(rate - (centre - half)))


# --- running one mutant ----------------------------------------------------------------


def mutated_source(mutant: Mutant, root: Path = ROOT) -> tuple[str, str]:
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator

    original = (root / mutant.module).read_text(encoding="utf-8")
    mutated = mutate_code(original, get_operator(mutant.operator)(), mutant.occurrence)
    if mutated is None:
        raise RuntimeError(f"{mutant.id}: cosmic-ray applied no mutation at that occurrence")
    return original, mutated


def diff_of(mutant: Mutant, original: str, mutated: str) -> str:
    return "".join(
        difflib.unified_diff(
            original.splitlines(keepends=True),
            mutated.splitlines(keepends=True),
            f"a/{mutant.module}",
            f"b/{mutant.module}",
            n=1,
        )
    )


def changed_lines(diff: str) -> tuple[str, ...]:
    """What a mutant changes, without line numbers or occurrence counts: the removed and
    added lines, stripped. It names an equivalent mutant even after the module moves."""
    return tuple(
        line[0] + line[1:].strip()
        for line in diff.splitlines()
        if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))
    )


def copy_tree(into: Path) -> None:
    shutil.copytree(ROOT, into, ignore=NOT_COPIED)


def run_suite(tree: Path, tmp: Path, timeout_s: float, extra: list[str]) -> tuple[str, str]:
    """The gate's tests (GATE_TESTS) in ``tree`` (its own packages first on the path),
    stopped at the first catch. Returns (verdict, why) by the kill table's rules."""
    observations = tmp / "observations.json"
    command = observed_suite_command(
        GATE_TESTS, observations, FUZZ_EXAMPLES, tmp / "pytest", ["--kill-first-catch", *extra]
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
        "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "sim")]),
        "HYPOTHESIS_PROFILE": "kill",
    }
    done = _run(command, tree, env, timeout_s)
    if done is None:
        return "hung", f"the run outlasted {timeout_s:.0f} s"
    returncode, output = done
    tail = output.strip().splitlines()[-5:]
    if not observations.exists():
        return "crashed", "no test ran: " + " / ".join(tail)
    seen: dict[str, dict[str, Any]] = json.loads(observations.read_text(encoding="utf-8"))
    by_verdict: dict[str, list[str]] = {}
    for test, entry in seen.items():
        verdict = "hung" if entry["outcome"] == "running" else entry["verdict"]
        by_verdict.setdefault(verdict, []).append(f"{test}: {entry.get('why', '')}")
    for verdict in ("caught", "crashed", "hung", "error"):
        if verdict in by_verdict:
            return ("crashed" if verdict == "error" else verdict), by_verdict[verdict][0][:300]
    if returncode not in (0, 5):
        return "crashed", f"pytest exited {returncode}: " + " / ".join(tail)
    return "survived", ""


#: The pytest runs under way: a SIGTERM or Ctrl-C to the harness ends them with it.
_RUNNING: set[subprocess.Popen[str]] = set()
_LOCK = threading.Lock()
_STOPPING = threading.Event()


def _run(
    command: list[str], cwd: Path, env: dict[str, str], timeout_s: float
) -> tuple[int, str] | None:
    """(exit status, output) of a command in a process group of its own, or None when it
    outlasted ``timeout_s`` (then the whole group was killed)."""
    with _LOCK:
        if _STOPPING.is_set():
            raise SystemExit(1)
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: pytest's children end with it
        )
        _RUNNING.add(process)
    try:
        output, _ = process.communicate(timeout=timeout_s)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        _kill(process)
        process.communicate()
        return None
    finally:
        with _LOCK:
            _RUNNING.discard(process)


def _kill(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended by itself meanwhile


def _end_runs(signum: int, frame: object) -> None:
    """SIGTERM or SIGINT: no new run starts, the running ones end, the harness exits."""
    _STOPPING.set()
    with _LOCK:
        for process in list(_RUNNING):
            _kill(process)
    raise SystemExit(128 + signum)


def where_it_imports(tree: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "sim")])}
    code = "import smartball_sim, pytest_smartball, hil_tests, tests; print(smartball_sim.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, env=env
    )
    return done.stdout.strip()


def run_mutant(
    mutant: Mutant, out: Path, timeout_s: float, extra: list[str], equivalents: dict[str, str]
) -> MutantRun:
    if _STOPPING.is_set():
        raise SystemExit(1)  # the harness is ending: no new copies
    started = time.monotonic()
    original, mutated = mutated_source(mutant)
    workdir = out / mutant.id.replace(":", "-").replace("#", "-")
    tree = workdir / "tree"
    copy_tree(tree)
    (tree / mutant.module).write_text(mutated, encoding="utf-8")
    verdict, why = run_suite(tree, workdir, timeout_s, extra)
    diff = diff_of(mutant, original, mutated)
    argued = equivalents.get(equivalence_key(mutant, diff))
    if verdict == "survived" and argued:
        verdict, why = "equivalent", argued
    shutil.rmtree(tree, ignore_errors=True)  # the diff and the observations stay
    run = MutantRun(mutant, verdict, why, time.monotonic() - started, diff)
    (workdir / "result.json").write_text(json.dumps(asdict(run), indent=1), encoding="utf-8")
    return run


def enclosing_function(mutant: Mutant, root: Path = ROOT) -> str:
    """The innermost function a mutant is in and its line there, ``Class.method+7`` (the
    line within the function tells two identical lines of one function apart, and moves
    only when the function itself is edited), or the line number at module level."""
    tree = ast.parse((root / mutant.module).read_text(encoding="utf-8"))
    best, best_size = f"+{mutant.line}", 10**9

    def visit(node: ast.AST, prefix: str) -> None:
        nonlocal best, best_size
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                end = child.end_lineno or child.lineno
                size = end - child.lineno
                if child.lineno <= mutant.line <= end and size < best_size:
                    best = f"{prefix}{child.name}+{mutant.line - child.lineno}"
                    best_size = size
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return best


def equivalence_key(mutant: Mutant, diff: str) -> str:
    """Where (module, function) and what (operator, changed lines) a mutant changes: not
    its line or occurrence number, which move when the module is edited elsewhere."""
    where = [mutant.module, enclosing_function(mutant), mutant.operator]
    return json.dumps([*where, *changed_lines(diff)])


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """A mutant's key (module, operator, what it changes) -> the argument that it is
    equivalent to the reference. The file is keyed by mutant id for the reader; an entry
    holds ``module``, ``function``, ``operator``, ``changes`` (changed_lines) and
    ``argument``."""
    data: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return {
        json.dumps([e["module"], e["function"], e["operator"], *e["changes"]]): e["argument"]
        for e in data.values()
    }


def rates(runs: list[MutantRun]) -> tuple[Counter[str], int, float]:
    counts = Counter(r.verdict for r in runs)
    judged = len(runs) - counts["equivalent"]
    return counts, judged, (counts["caught"] / judged if judged else 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gate.mutation", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sample", type=int, default=40, help="mutants drawn (default 40)")
    group.add_argument("--all", action="store_true", help="every mutant (nightly)")
    group.add_argument(
        "--mutant", action="append", metavar="ID", help="only these (ids as --list prints)"
    )
    parser.add_argument("--seed", type=int, default=20, help="the draw's seed (default 20)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants at once (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per mutant, seconds")
    parser.add_argument("--floor", type=float, default=0.0, help="the lowest kill rate passed")
    parser.add_argument("--out", type=Path, default=None, help="copies and results go here")
    parser.add_argument("--list", action="store_true", help="print the population and stop")
    args, extra = parser.parse_known_args(argv)
    signal.signal(signal.SIGTERM, _end_runs)
    signal.signal(signal.SIGINT, _end_runs)
    generated = generate()
    kept, excluded = population(generated)
    rules = ", ".join(f"{n} {rule}" for rule, n in sorted(excluded.items()))
    print(
        f"mutation: {len(generated)} mutants of the firmware model ({len(MODULES)} modules); "
        f"{len(generated) - len(kept)} excluded by rule ({rules}); population {len(kept)}"
    )
    if args.list:
        print("\n".join(m.id for m in kept))
        return 0
    if args.mutant:
        by_id = {m.id: m for m in generated}
        unknown = sorted(set(args.mutant) - set(by_id))
        if unknown:
            listing = "python -m tests.gate.mutation --list"
            print(f"mutation: no mutant {', '.join(unknown)} ({listing})")
            return 2
        chosen = [by_id[i] for i in args.mutant]
        how = f"the {len(chosen)} mutant(s) asked for"
    elif args.all:
        chosen, how = kept, "all of them"
    else:
        chosen = draw(kept, args.sample, args.seed)
        how = f"a uniform sample of {len(chosen)}, seed {args.seed}"
    print(f"mutation: running {how}, {args.jobs} at a time, {args.timeout:.0f} s each at most")
    # Absolute: each run works in its own copy of the tree, and writes its results here.
    out = (args.out or Path(tempfile.mkdtemp(prefix="mutation-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    control_tree = out / "control" / "tree"
    copy_tree(control_tree)
    imported = where_it_imports(control_tree)
    if not imported.startswith(str(control_tree)):
        print(f"mutation: FAILED: the copy imports the simulator from {imported or '?'}")
        return 1
    verdict, why = run_suite(control_tree, out / "control", args.timeout, extra)
    shutil.rmtree(control_tree, ignore_errors=True)
    if verdict != "survived":
        print(f"mutation: FAILED: the gate's tests fail on the unmutated copy: {verdict}: {why}")
        return 1

    equivalents = load_equivalents()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(
            pool.map(lambda m: run_mutant(m, out, args.timeout, extra, equivalents), chosen)
        )
    elapsed = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = children.ru_utime + children.ru_stime  # wall time depends on what else runs
    counts, judged, rate = rates(runs)
    for run in runs:
        if run.verdict in ("survived", "equivalent", "hung", "crashed"):
            print(
                f"\n--- {run.verdict}: {run.mutant.id} ({run.why})"
                if run.why
                else f"\n--- {run.verdict}: {run.mutant.id}"
            )
            print(run.diff.rstrip())
    spread = margin(rate, judged)
    print(
        f"\nmutation: {counts['caught']} of {judged} mutants caught ({rate:.0%}, 95 % interval "
        f"±{spread:.0%}); {counts['survived']} survived, {counts['crashed']} only crashed the "
        f"simulator, {counts['hung']} hung; {counts['equivalent']} equivalent (argued in "
        f"{EQUIVALENTS.name}); {elapsed:.0f} s wall, {cpu:.0f} s CPU"
    )
    print(f"mutation: floor: a kill rate of {args.floor:.0%}")
    (out / "mutation.json").write_text(
        json.dumps(
            {
                "generated": len(generated),
                "excluded": dict(excluded),
                "population": len(kept),
                "seed": None if args.all else args.seed,
                "counts": dict(counts),
                "kill_rate": round(rate, 4),
                "seconds": round(elapsed, 1),
                "cpu_seconds": round(cpu, 1),
                "mutants": [asdict(r) for r in runs],
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    print(f"mutation: details in {out / 'mutation.json'}")
    if rate < args.floor:
        print(
            f"mutation: FAILED: the kill rate {rate:.1%} is below the floor {args.floor:.0%}: "
            "a survivor above is a test to write, or an equivalent mutant to argue"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

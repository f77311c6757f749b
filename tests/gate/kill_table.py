"""How strong is the HIL suite as a release gate? Run it against every firmware bug of the
catalogue (``sim/smartball_sim/firmware/bugs.json``) and print the kill table: bug
-> the tests that caught it. Mutation testing of the gate itself.

    python -m tests.gate.kill_table [--jobs 2] [--bug NAME ...] [--out DIR] [--write-doc]

Each bug gets its own run of ``pytest GATE_TESTS --device=sim --sim-firmware-bug NAME``
(kill_observer.py classifies every test), and a control run without a bug comes first:
the suite must pass it, else no failure under a bug means anything. A bug is killed when
at least one test failed because of it; a test that failed because the simulator itself
raised, that hung until pytest-timeout, or whose set-up broke did not catch it. Exit
status 1 when a bug survives (or the control fails): a surviving bug is a missing test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_smartball import contract

ROOT = Path(__file__).resolve().parents[2]
CONTROL = "(none)"
#: What the gate runs: the release suite and the simulator-only update fuzzer beside it.
GATE_TESTS = ["hil_tests", "tests/simulator/test_fuzz_update.py"]
#: Examples per hypothesis property in the kill runs (the fuzz suites scale from it):
#: every run repeats the whole suite, so the fuzzers get a fiftieth of the CI run's
#: examples, without shrinking (HYPOTHESIS_PROFILE=kill, conftest.py).
FUZZ_EXAMPLES = 2
#: pytest processes per bug at most: one, plus one more after each hung test.
MAX_PROCESSES = 10
DOC = ROOT / "docs" / "firmware-bugs.md"
#: The run whose figures the doc shows (written with them by --write-doc).
RECORDED = ROOT / "docs" / "kill-table.json"
BEGIN, END = "<!-- BEGIN kill-table -->", "<!-- END kill-table -->"


@dataclass(slots=True)
class BugRun:
    bug: str
    seconds: float = 0.0
    exit_code: int = 0
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_tail: str = ""

    def with_verdict(self, verdict: str) -> list[str]:
        return sorted((t for t, v in self.tests.items() if v["verdict"] == verdict), key=by_name)

    @property
    def killers(self) -> list[str]:
        return self.with_verdict("caught")

    def killers_on_hardware(self, control: BugRun | None = None) -> list[str]:
        """The catching tests that run on a board as they ran here: neither this run nor
        the control run marked them simulator-only (a marker, a fixture, or a simulator
        fault armed while they ran)."""
        sim_only = (
            {t for t, v in control.tests.items() if v["hardware"] != "yes"} if control else set()
        )
        return [t for t in self.killers if self.tests[t]["hardware"] == "yes" and t not in sim_only]

    @property
    def fired_not_caught(self) -> list[str]:
        """Tests in which the bug's deviation ran and which passed all the same."""
        return sorted(
            (t for t, v in self.tests.items() if v.get("fired") and v["verdict"] == "passed"),
            key=by_name,
        )

    @property
    def killed(self) -> bool:
        return bool(self.killers)

    def as_record(self, control: BugRun | None = None) -> dict[str, Any]:
        """What the table shows of this run, as JSON (kill-table.json, docs/kill-table.json)."""
        return {
            "killed": self.killed,
            "caught_by": self.killers,
            "caught_on_hardware_too": self.killers_on_hardware(control),
            "fired_not_caught": self.fired_not_caught,
            "crashed": self.with_verdict("crashed"),
            "hung": self.with_verdict("hung"),
            "error": self.with_verdict("error"),
            "seconds": round(self.seconds, 1),
        }


def observed_suite_command(
    tests: list[str], observations: Path, fuzz_examples: int, basetemp: Path, extra: list[str]
) -> list[str]:
    """The pytest command of one observed run of the HIL suite on the simulator (the kill
    table's and the mutation harness's): no cache, a fixed order, the kill observer writing
    ``observations``."""
    return [
        sys.executable,
        "-m",
        "pytest",
        *tests,
        "--device=sim",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-p",
        "tests.gate.kill_observer",
        f"--kill-observations={observations}",
        f"--fuzz-examples={fuzz_examples}",
        f"--basetemp={basetemp}",
        *extra,
    ]


def run_one(bug: str, out: Path, fuzz_examples: int, extra: list[str]) -> BugRun:
    """The suite against one bug. A test that hangs ends its pytest process (see
    kill_observer.py); it is recorded as hung and the tests not yet run get a new process."""
    name = bug.strip("()")
    run = BugRun(bug)
    started = time.monotonic()
    remaining: list[str] = []
    for attempt in range(MAX_PROCESSES):
        observations = out / f"{name}.{attempt}.json"
        command = observed_suite_command(
            remaining or GATE_TESTS,
            observations,
            fuzz_examples,
            out / ("tmp-" + name),
            [*([] if bug == CONTROL else [f"--sim-firmware-bug={bug}"]), *extra],
        )
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "HYPOTHESIS_PROFILE": "kill"},
            check=False,
        )
        run.exit_code = done.returncode
        run.output_tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        if not observations.exists():
            break
        seen = json.loads(observations.read_text(encoding="utf-8"))
        hung = [test for test in seen.values() if test["outcome"] == "running"]
        for test in hung:
            test["outcome"] = test["verdict"] = "hung"
            test["why"] = "ran past the kill runs' per-test timeout"
        run.tests.update({k: v for k, v in seen.items() if v["outcome"] != "not run"})
        remaining = [k for k, v in seen.items() if v["outcome"] == "not run"]
        run.tests.update({k: seen[k] for k in remaining})
        if not remaining or not hung:  # done, or stopped for another reason: say so
            break
    run.seconds = time.monotonic() - started
    return run


def short(nodeid: str) -> str:
    """``hil_tests/test_x.py::test_y[p]``, ``tests/simulator/test_x.py::...`` -> ``test_x::...``."""
    path, _, name = nodeid.partition("::")
    return f"{Path(path).stem}::{name}"


def by_name(nodeid: str) -> tuple[str, str]:
    """Tests in the order of their short names, whichever folder holds them (the table's
    examples do not depend on where a module lives)."""
    return short(nodeid), nodeid


def one_per_module(nodeids: list[str]) -> list[str]:
    """The first test of each module: examples that show the different kinds of check."""
    seen: dict[str, str] = {}
    for nodeid in nodeids:
        seen.setdefault(nodeid.partition("::")[0], nodeid)
    return list(seen.values())


HEADER = [
    "| firmware bug | caught by (tests) | of them on hardware too "
    "| fired, not caught | crashed or hung | for example |",
    "|---|---|---|---|---|---|",
]


def table_lines(bugs: dict[str, dict[str, Any]], *, examples: int = 3) -> list[str]:
    """The kill table as Markdown, one row per bug of a run's record (``as_record``): how
    many tests caught it, how many of them run on a board as they ran here, in how many
    more its deviation ran and the test passed, and how many only crashed or hung."""
    lines = list(HEADER)
    for bug, row in bugs.items():
        killers: list[str] = row["caught_by"]
        hardware: list[str] = row["caught_on_hardware_too"]
        fired = len(row["fired_not_caught"])
        broken = len(row["crashed"]) + len(row["hung"])
        if not killers:
            why = "the simulator crashed or hung" if broken else "nothing failed"
            lines.append(f"| `{bug}` | **SURVIVED** ({why}) | 0 | {fired} | {broken} | |")
            continue
        shown = one_per_module(hardware or killers)[:examples]
        sample = ", ".join(f"`{short(t)}`" for t in shown)
        more = f" (+{len(killers) - len(shown)})" if len(killers) > len(shown) else ""
        lines.append(
            f"| `{bug}` | {len(killers)} | {len(hardware)} | {fired} | {broken} | {sample}{more} |"
        )
    return lines


def doc_block(record: dict[str, Any]) -> list[str]:
    """What docs/firmware-bugs.md shows of a recorded run: its table and summary line."""
    return [*table_lines(record["bugs"]), "", record["summary"]]


def doc_table(text: str) -> list[str]:
    """The lines between the kill-table markers of a document."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n").splitlines()


def write_doc(record: dict[str, Any]) -> None:
    """The run's table into the doc, and the run itself beside it (RECORDED): a test
    (tests/system/test_kill_table.py) checks that the doc's figures are this run's."""
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = "\n".join([BEGIN, *doc_block(record), END])
    DOC.write_text(head + block + tail, encoding="utf-8")
    RECORDED.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gate.kill_table", description=__doc__)
    names = [b.name for b in contract.firmware_bugs()]
    parser.add_argument("--bug", action="append", choices=names, help="only these bugs")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--fuzz-examples", type=int, default=FUZZ_EXAMPLES)
    parser.add_argument("--out", type=Path, default=None, help="keep the observations here")
    parser.add_argument("--write-doc", action="store_true", help=f"update the table in {DOC}")
    args, extra = parser.parse_known_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="kill-table-"))
    out.mkdir(parents=True, exist_ok=True)
    bugs = args.bug or names
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(run_one, b, out, args.fuzz_examples, extra) for b in (CONTROL, *bugs)
        ]
        control, *runs = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = children.ru_utime + children.ru_stime  # wall time depends on what else runs
    failed_control = [
        t for t, v in control.tests.items() if v["verdict"] not in ("passed", "skipped")
    ]
    gate = " and ".join(GATE_TESTS)
    print(f"kill table: {len(runs)} firmware bugs against {gate} ({len(control.tests)} tests)")
    if control.exit_code != 0 or failed_control or not control.tests:
        print("kill table: FAILED: the suite does not pass on the reference firmware:")
        print("\n".join(f"  {t}: {control.tests[t]['why']}" for t in failed_control))
        print(control.output_tail)
        return 1
    record_bugs = {r.bug: r.as_record(control) for r in runs}
    print("\n".join(table_lines(record_bugs)))
    survivors = [r.bug for r in runs if not r.killed]
    crashes = [
        f"{r.bug}: {short(t)}: {r.tests[t]['why']}" for r in runs for t in r.with_verdict("crashed")
    ]
    summary = (
        f"{len(runs) - len(survivors)} of {len(runs)} bugs killed; {len(control.tests)} tests "
        f"per run; {elapsed:.0f} s wall, {cpu:.0f} s CPU, {args.jobs} runs at once"
    )
    print(summary)
    print("kill table: floor: every bug of the catalogue caught by at least one test")
    for line in crashes:
        print(f"kill table: not counted (the simulator crashed): {line}")
    record = {
        "bugs": record_bugs,
        "tests": len(control.tests),
        "seconds": round(elapsed, 1),
        "cpu_seconds": round(cpu, 1),
        "summary": summary,
    }
    (out / "kill-table.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(f"kill table: details in {out / 'kill-table.json'}")
    if args.write_doc:
        write_doc(record)
    if survivors:
        print(
            f"kill table: FAILED: {len(survivors)} firmware bug(s) survived the suite: "
            f"{', '.join(survivors)}; each is a missing test (docs/firmware-bugs.md)"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

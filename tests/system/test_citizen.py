"""pytest-smartball is installed into other people's environments: it changes nothing it does
not own, imports the simulator only when asked for, and its packages depend one way.

* An unrelated project's tests behave the same with the plugin installed, disabled
  (``-p no:smartball``), and under ``--device=sim`` or ``--device=real``: the plugin acts
  only on tests that use its fixtures or markers.
* ``smartball_sim`` is loaded only by ``pytest_smartball.targets``, and only when a test or a
  command asks for a simulated device; a target module loads at import no other target's
  stack and nothing its own target loads only when it starts.
* ``smartball_sim`` imports nothing of the client but the codec, and no module of either
  package imports itself back through a circle; nor, counting the imports made only for the
  type checker (``if TYPE_CHECKING:``), does any module of the client or the simulator.
* The OTA engine's core (``pytest_smartball.ota`` but its engine, settings and results
  included) is sans-I/O: importing it loads neither bleak nor the link nor asyncio.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "pytest_smartball": ROOT / "pytest_smartball",
    "smartball_sim": ROOT / "sim" / "smartball_sim",
}
#: The modules that may import the simulator: they start simulated targets.
SIM_IMPORTERS = "pytest_smartball.targets."
#: The ground floor both sides stand on: the contract package (the codec, the contract's data and
#: vectors, the manifest's codec, and the platform's crypto for docs/protocol.md section 16).
#: The simulator may import nothing else of the client's package, and it imports nothing else.
CONTRACT = "pytest_smartball.contract"

UNRELATED_TESTS = """
import asyncio
import time

import pytest


@pytest.mark.asyncio
async def test_a_real_sleep_takes_real_time():
    # A test of a real serial port, say: its sleeps must stay real.
    loop = asyncio.get_running_loop()
    wall, clock = time.perf_counter(), loop.time()
    await asyncio.sleep(0.2)
    assert time.perf_counter() - wall >= 0.19
    assert loop.time() - clock >= 0.19


def test_sync():
    assert sum(range(4)) == 6
"""

RECORD_SIM_MODULES = """
import json
import sys


def pytest_sessionfinish(session):
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "smartball_sim")
    with open("loaded.json", "w") as f:
        json.dump(loaded, f)
"""

INNER_INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
"""


@pytest.fixture
def unrelated(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".ini", pytest=INNER_INI)
    pytester.makeconftest(RECORD_SIM_MODULES)
    pytester.makepyfile(test_unrelated=UNRELATED_TESTS)
    return pytester


def loaded_sim_modules(pytester: pytest.Pytester) -> list[str]:
    return json.loads((pytester.path / "loaded.json").read_text())


@pytest.mark.parametrize(
    "args",
    [(), ("-p", "no:smartball"), ("--device=sim",), ("--device=real",)],
    ids=["installed", "disabled", "device-sim", "device-real"],
)
def test_unrelated_tests_run_as_if_the_plugin_were_not_there(
    unrelated: pytest.Pytester, args: tuple[str, ...]
) -> None:
    result = unrelated.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=2)
    # --device=real on a machine without Bluetooth: no preflight, since no test needs a device.
    assert "smartball preflight" not in result.stdout.str()
    assert loaded_sim_modules(unrelated) == []


def test_a_test_that_asks_for_the_simulator_loads_it(unrelated: pytest.Pytester) -> None:
    """The control of the test above: the recording can see the simulator when it is used."""
    unrelated.makepyfile(test_uses_it="def test_device(sim_device):\n    assert sim_device\n")
    result = unrelated.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert "smartball_sim.device" in loaded_sim_modules(unrelated)


def run_python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


SIM_LOADED = "[m for m in sys.modules if m.split('.')[0] == 'smartball_sim']"


def test_importing_the_plugin_loads_no_simulator() -> None:
    out = run_python(f"import sys, pytest_smartball.plugin; print({SIM_LOADED})")
    assert out.strip() == "[]"


def test_the_firmware_bug_names_reach_help_without_the_simulator() -> None:
    """The catalogue lives beside the simulator (smartball_sim/firmware/bugs.json); the
    plugin's and the CLI's --help list its names from the file, not by importing it."""
    out = run_python(
        "import contextlib, io, sys\n"
        "from pytest_smartball import contract\n"
        "from pytest_smartball.cli.args import build_parser\n"
        "help = io.StringIO()\n"
        "with contextlib.redirect_stdout(help), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['flash', '--help'])\n"
        "text = ''.join(help.getvalue().split())  # argparse wraps at hyphens\n"
        "names = [b.name for b in contract.firmware_bugs()]\n"
        f"print(len(names), all(n in text for n in names), {SIM_LOADED})\n"
    )
    count, listed, loaded = out.strip().splitlines()[-1].split(" ", 2)
    assert int(count) >= 12 and listed == "True" and loaded == "[]", out


def test_a_cli_command_without_sim_loads_no_simulator(tmp_path: Path) -> None:
    # info on the real radio fails here for want of BlueZ (exit 3): the simulator stays out.
    code = (
        "import sys\n"
        "from pytest_smartball.cli import main\n"
        f"bus = 'unix:path={tmp_path / 'no-bus'}'\n"
        "import os; os.environ['DBUS_SYSTEM_BUS_ADDRESS'] = bus\n"
        "code = main(['info', '--address', 'AA:BB:CC:DD:EE:FF'])\n"
        f"print(code, {SIM_LOADED})\n"
    )
    last = run_python(code).strip().splitlines()[-1]
    assert last == "3 []"
    with_sim = run_python(code.replace("'info', ", "'info', '--sim', '--scan-timeout', '1', "))
    assert "smartball_sim.device" in with_sim.strip().splitlines()[-1]


def modules(package: str) -> list[str]:
    root = PACKAGES[package]
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join((package, *parts)))
    return names


#: The modules of ``pytest_smartball.ota`` that work over the link; every other one (and the
#: package itself) is the sans-I/O core.
OTA_OVER_THE_LINK = ("pytest_smartball.ota.engine",)
#: What the core must not load: the radio's library, the link (but its settings, plain data
#: an update's settings hold, and the package that names them), an event loop.
IO_LOADED = (
    "[m for m in sys.modules if m.split('.')[0] in ('bleak', 'asyncio')"
    " or m.split('.')[:2] == ['pytest_smartball', 'link']"
    " and m not in ('pytest_smartball.link', 'pytest_smartball.link.settings')]"
)


def ota_core() -> list[str]:
    ota = [
        m for m in modules("pytest_smartball") if m.split(".")[:2] == ["pytest_smartball", "ota"]
    ]
    return [m for m in ota if m not in OTA_OVER_THE_LINK]


@pytest.mark.parametrize("module", ota_core())
def test_the_ota_core_imports_without_bleak_the_link_or_asyncio(module: str) -> None:
    """In a fresh interpreter, so it is what an import really loads."""
    loaded = json.loads(run_python(f"import sys, json, {module}; print(json.dumps({IO_LOADED}))"))
    roots = sorted({".".join(m.split(".")[: 2 if m.startswith("pytest_") else 1]) for m in loaded})
    assert loaded == [], f"importing {module} loaded {roots}: keep the core free of I/O"


def test_the_ota_engine_loads_bleak_and_the_public_names_still_reach_it() -> None:
    """The control of the test above (the recording sees an import of the link), and the
    package's names over the link are still there, loaded when first used; what an update
    is given and gives back (settings, limits, events, result) comes without the link."""
    code = (
        "import sys, json\n"
        "import pytest_smartball.ota as ota\n"
        "from pytest_smartball.ota import Limits, OtaEvent, OtaResult, OtaSettings\n"
        "OtaSettings(limits=Limits(max_recoveries=3)); OtaResult().to_dict()\n"
        f"before = {IO_LOADED}\n"
        "from pytest_smartball.ota import OtaEngine\n"
        f"print(json.dumps([before, {IO_LOADED}, OtaEngine.__module__, ota.OtaResult.__name__]))"
    )
    before, after, engine_module, result = json.loads(run_python(code))
    assert before == []
    assert {"bleak", "pytest_smartball.link.nus"} <= set(after)
    assert (engine_module, result) == ("pytest_smartball.ota.engine", "OtaResult")


#: Modules that need an optional extra to import: checked where the extra is installed.
NEEDS_EXTRA = {"pytest_smartball.plugin.farm.lab": "labgrid"}


def loaded_on_import(module: str, *prefixes: str) -> list[str]:
    """The modules named by ``prefixes`` or below them that importing ``module`` loads, in
    a fresh interpreter."""
    if module in NEEDS_EXTRA:
        pytest.importorskip(NEEDS_EXTRA[module])
    loaded = json.loads(
        run_python(f"import sys, json, {module}; print(json.dumps(list(sys.modules)))")
    )
    return sorted(m for m in loaded if any(m == x or m.startswith(x + ".") for x in prefixes))


@pytest.mark.parametrize(
    "module", [m for m in modules("pytest_smartball") if not m.startswith(SIM_IMPORTERS)]
)
def test_client_modules_load_the_simulator_only_to_start_a_target(module: str) -> None:
    loaded = loaded_on_import(module, "smartball_sim")
    assert loaded == [], f"importing {module} loaded the simulator: {loaded}"


#: What importing each target module must not load yet: another target's stack, and what
#: its own target loads only when it starts (a new target module must say what it defers).
TARGETS_DEFER = {
    "pytest_smartball.targets.bumble": (
        "bumble",  # Google's stack: an optional extra, loaded when a Bumble target opens
        "smartball_sim.bumble.central",
        "smartball_sim.device",
        "smartball_sim.bluez",
        "smartball_sim.machines.vhci",
    ),
    "pytest_smartball.targets.emulated_bluez": (
        "bumble",
        "smartball_sim.bumble",
        "smartball_sim.machines.vhci",
        "smartball_sim.fronts.in_process",
    ),
    "pytest_smartball.targets.labgrid_loopback": (
        "bumble",
        "smartball_sim.bumble",
        "smartball_sim.machines.vhci",
        "smartball_sim.fronts.in_process",
    ),
    "pytest_smartball.targets.simulated": (
        "bumble",
        "smartball_sim.bumble",
        # BlueZ's words (smartball_sim.bluez.errors) are the in-process front's too; the
        # emulated bluetoothd is not
        "smartball_sim.bluez.emulator",
        "smartball_sim.bluez.launcher",
        "smartball_sim.machines.vhci",
    ),
    # the virtual radio is started (pytest_configure, the CLI), not imported
    "pytest_smartball.targets.vhci_bluez": ("bumble", "smartball_sim"),
}


def test_every_target_module_says_what_it_defers() -> None:
    targets = [m for m in modules("pytest_smartball") if m.startswith(SIM_IMPORTERS)]
    assert sorted(TARGETS_DEFER) == targets


@pytest.mark.parametrize(("module", "deferred"), sorted(TARGETS_DEFER.items()))
def test_a_target_module_loads_only_what_its_target_needs_before_it_starts(
    module: str, deferred: tuple[str, ...]
) -> None:
    loaded = loaded_on_import(module, *deferred)
    assert loaded == [], f"importing {module} loaded {loaded} before its target started"


def test_only_the_target_modules_import_the_simulator_anywhere() -> None:
    """Function-level imports too: a lazy import elsewhere would still couple the client to it."""
    for module in modules("pytest_smartball"):
        if module.startswith(SIM_IMPORTERS) or module == SIM_IMPORTERS.rstrip("."):
            continue  # the targets (the package's names its type hints use of the simulator)
        for imported in imports_of(module, top_level_only=False, type_only=True):
            assert imported.split(".")[0] != "smartball_sim", f"{module} imports {imported}"


#: The pytest plugin's folder: every pytest concern of the package, and only there.
PLUGIN = "pytest_smartball.plugin"
#: What only the plugin may import: pytest, its internals and other pytest plugins. (Not
#: looptime: the CLI's virtual clock is a library, although its package imports pytest when
#: installed, for a fixture of its own; ``--help`` and the real radio never load it.)
PYTEST_WORLD = ("pytest", "_pytest", "pytest_asyncio", "pytest_html", "xdist")


def _is_pytest(imported: str) -> bool:
    return imported.split(".")[0] in PYTEST_WORLD or (
        imported.split(".")[0].startswith("pytest_") and not imported.startswith("pytest_smartball")
    )


def _is_plugin(imported: str) -> bool:
    return imported == PLUGIN or imported.startswith(PLUGIN + ".")


def test_library_code_imports_neither_pytest_nor_the_plugin() -> None:
    """The package's library (codec, image, link, engine, targets, CLI, BlueZ helpers) stands
    apart from pytest: only ``pytest_smartball.plugin`` imports it, and nothing outside that
    folder imports the plugin back (``targets`` included). Lazy and type-only imports count:
    either would tie the library to pytest all the same."""
    found = []
    for module in modules("pytest_smartball"):
        if _is_plugin(module):
            continue
        for imported in imports_of(module, top_level_only=False, type_only=True):
            if _is_pytest(imported) or _is_plugin(imported):
                found.append(f"{module} imports {imported}")
    assert found == [], "library code tied to pytest:\n" + "\n".join(found)


def test_no_pytest_is_reachable_from_smartball_ota() -> None:
    """From the console script's module, through every import any command may make (lazy
    and type-only ones too), no module of the package imports pytest or the plugin."""
    entry = "pytest_smartball.cli_entry"
    seen, todo, found = {entry}, [entry], []
    while todo:
        module = todo.pop()
        for imported in imports_of(module, top_level_only=False, type_only=True):
            if _is_pytest(imported) or _is_plugin(imported):
                found.append(f"{module} imports {imported}")
            elif imported in ALL_MODULES and imported.startswith("pytest_smartball"):
                if imported not in seen:
                    seen.add(imported)
                    todo.append(imported)
    assert "pytest_smartball.cli.commands" in seen  # the walk went through the commands
    assert found == [], "smartball-ota reaches pytest:\n" + "\n".join(found)


@pytest.mark.parametrize("argv", [["--help"], ["flash", "--help"], ["keygen", "--help"]])
def test_smartball_ota_loads_no_pytest(argv: list[str]) -> None:
    """In a fresh interpreter: the console script's module, the CLI and its parsing load
    neither pytest nor its internals (a user's ``smartball-ota`` is not a test run)."""
    code = (
        "import contextlib, json, sys\n"
        "import pytest_smartball.cli_entry\n"
        "from pytest_smartball.cli import main\n"
        f"with contextlib.suppress(SystemExit): main({argv!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{PYTEST_WORLD!r} or m.startswith('{PLUGIN}'))))\n"
    )
    loaded = json.loads(run_python(code).strip().splitlines()[-1])
    assert loaded == [], f"smartball-ota {' '.join(argv)} loaded {loaded}"


#: The folders of test modules; their other modules (helpers, conftest.py) may be imported.
TEST_DIRS = (ROOT / "tests", ROOT / "hil_tests")
TEST_MODULES = frozenset(path.stem for d in TEST_DIRS for path in d.rglob("test_*.py"))


def test_no_test_module_imports_another() -> None:
    """Test modules are collected, not imported: one that imports another runs that one's
    module-level set-up a second time and binds the two together. What several share lives
    in a helper module (tests/plugin_sessions.py, hil_tests/helpers.py, ...) or a conftest."""
    found = []
    for path in sorted(path for d in TEST_DIRS for path in d.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                ours = node.level > 0 or (node.module or "").startswith(("tests", "hil_tests"))
                base = node.module or ""
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)] if ours else []
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith(("tests.", "hil_tests."))]
            else:
                continue
            if any(name.rpartition(".")[2] in TEST_MODULES for name in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == [], "test modules importing test modules:\n" + "\n".join(found)


#: Where the test modules of tests/ live (tests/conftest.py states what goes where).
TEST_FOLDERS = ("client", "simulator", "system")


def test_every_test_module_of_tests_lives_in_a_folder_of_the_layout() -> None:
    tests = ROOT / "tests"
    astray = [
        str(path.relative_to(ROOT))
        for path in sorted(tests.rglob("test_*.py"))
        if path.relative_to(tests).parts[0] not in TEST_FOLDERS
    ]
    assert astray == [], f"test modules outside tests/{{{','.join(TEST_FOLDERS)}}}/: {astray}"


def _is_contract(module: str) -> bool:
    return module == CONTRACT or module.startswith(CONTRACT + ".")


def test_the_simulator_imports_only_the_contract_of_the_client() -> None:
    for module in modules("smartball_sim"):
        for imported in imports_of(module, top_level_only=False, type_only=True):
            if imported.split(".")[0] == "pytest_smartball" and imported != "pytest_smartball":
                assert _is_contract(imported), f"{module} imports {imported}"


def test_the_contract_is_the_ground_floor() -> None:
    """The contract imports nothing of the client or the simulator but itself, and the client
    package's __init__ imports nothing, so the simulator's one arrow into the client's package
    lands on the ground floor and nowhere above it."""
    assert imports_of("pytest_smartball", top_level_only=False, type_only=True) <= {"__future__"}
    contract = [m for m in modules("pytest_smartball") if _is_contract(m)]
    assert {"pytest_smartball.contract.codec", "pytest_smartball.contract.signing"} <= set(contract)
    for module in contract:
        for imported in imports_of(module, top_level_only=False, type_only=True):
            if imported.split(".")[0] in PACKAGES and imported != "pytest_smartball":
                assert _is_contract(imported), f"{module} imports {imported}"


def test_no_import_circle_counting_type_only_imports() -> None:
    """Issue 22: a circle closed only by ``if TYPE_CHECKING:`` imports is still a circle (a
    module that needs another's types to be read). Every top-level import counts, type-only
    ones too; what a function imports when it runs does not. (A circle of run-time imports
    is one of these too.)"""
    nodes = [m for package in PACKAGES for m in modules(package)]
    graph = import_graph(nodes, type_only=True)
    circles = import_circles(graph)
    assert circles == [], "import circles (type-only imports counted):\n" + "\n".join(
        " <-> ".join(circle) for circle in circles
    )


def test_the_circle_finder_finds_a_type_only_circle() -> None:
    """The finder itself: a circle through an ``if TYPE_CHECKING:`` import is found, and
    one only a function-level import closes is not."""
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"a"}}) == [["a"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []
    device = imports_of("smartball_sim.device", top_level_only=True, type_only=True)
    assert "smartball_sim.fault_injector" in device  # a run-time import, counted
    seam = "smartball_sim.radio.seam"  # imports the fault plan under `if TYPE_CHECKING:`
    assert "smartball_sim.faults" in imports_of(seam, top_level_only=True, type_only=True)
    assert "smartball_sim.faults" not in imports_of(seam, top_level_only=True, type_only=False)


def import_graph(nodes: list[str], *, type_only: bool) -> dict[str, set[str]]:
    """Module -> the modules among ``nodes`` it imports at its top level."""
    known = set(nodes)
    return {
        module: {
            m for m in imports_of(module, top_level_only=True, type_only=type_only) if m in known
        }
        for module in nodes
    }


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import one another round a circle (the strongly connected
    components of more than one module, or a module importing itself), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                connect(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph.get(module, ()):
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return sorted(found)


ALL_MODULES = frozenset(m for package in PACKAGES for m in modules(package))


def imports_of(module: str, *, top_level_only: bool, type_only: bool = False) -> set[str]:
    """The modules ``module`` imports at run time (resolved, relative ones too; not those in
    ``if TYPE_CHECKING:`` blocks unless ``type_only``); ``top_level_only`` also skips imports
    inside functions, which cannot form a circle at import time."""
    package, *rest = module.split(".")
    root = PACKAGES[package]
    path = root.joinpath(*rest)
    is_package = (path / "__init__.py").exists()
    source = (path / "__init__.py") if is_package else path.with_suffix(".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    base = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def walk(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    target = ".".join([*anchor, node.module] if node.module else anchor)
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import protocol` imports the module
                    submodule = f"{target}.{alias.name}"
                    found.add(submodule if submodule in ALL_MODULES else target)
            elif isinstance(node, ast.If) and _is_type_checking(node.test) and not type_only:
                continue  # for the type checker only: nothing is imported at run time
            elif not top_level_only or isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []) or []:
                        walk([child] if isinstance(child, ast.stmt) else child.body)

    walk(tree.body)
    found.discard(module)  # `from . import x` in a package's __init__ names the package
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


#: Concept names once defined several times over (issue 22): one class each now, where it
#: belongs; a different concept of the simulator or a suite carries a different name.
ONE_DEFINITION = ("LinkClosed", "Outcome", "Session", "Timing")


def test_a_concept_is_defined_once_across_the_client_the_simulator_and_the_suites() -> None:
    defined: dict[str, list[str]] = {name: [] for name in ONE_DEFINITION}
    for folder in ("pytest_smartball", "sim", "hil_tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef) and node.name in defined:
                    defined[node.name].append(str(path.relative_to(ROOT)))
    twice = {name: where for name, where in defined.items() if len(where) != 1}
    assert not twice, f"defined other than once (rename the other concept): {twice}"

"""The pytest plugin as a neighbour in someone else's project, through inner pytest sessions:
its options in --help, a project's own --device beside ours (also from addopts and under
xdist), and the header lines it adds only to a run that uses it.

Each inner session runs in a fresh pytester directory with its own pytest.ini and no
conftest.py (tests/plugin_sessions.py), so the plugin is there only because the ``pytest11``
entry point loads it, as for a user. The cheap sessions (usage errors) run in-process.
"""

from __future__ import annotations

import pytest

from ..plugin_sessions import INNER_INI, assert_clean_usage_error, run

pytest_plugins = ["pytester"]

# --- loading, --help, the report header ------------------------------------------------


def test_help_lists_the_smartball_options(inner: pytest.Pytester) -> None:
    result = run(inner, "--help")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "SmartBall device under test:",
            "*--smartball-device={sim,real}*",
            "*--ble-name=BLE_NAME*",
            "*--ble-address=BLE_ADDRESS*",
            "*--ble-adapter=BLE_ADAPTER*",
            "*--ble-scan-timeout=SECONDS*",
            "*--firmware=FIRMWARE*",
            "*--baseline-firmware=PATH*",
            "*--smartball-report=PATH*",
            "*--sim-seed=SIM_SEED*",
            "*--sim-faults=SIM_FAULTS*",
        ]
    )
    result.stdout.fnmatch_lines(["*--device={sim,real}*"])
    # The help's '%%' reaches argparse escaped, and shows as one '%'.
    assert "50%%" not in result.stdout.str()


# --- a good neighbour: another --device, other projects' headers ---------------------------

#: A project of someone else's, with its own --device (free text, as --device=cpu|gpu often is).
THEIR_CONFTEST = """
def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="cpu or gpu")
"""

THEIR_TESTS = """
def test_their_option_is_theirs(pytestconfig):
    assert pytestconfig.getoption("--device") == "gpu"


def test_the_smartball_fixtures_still_work(smartball, pytestconfig):
    assert smartball.sim is not None
    assert pytestconfig.getoption("smartball_device") == "sim"
"""

CLASH_SENTENCE = "--device belongs to another plugin or this project's conftest here"


@pytest.mark.parametrize("order", ["entry-point-first", "conftest-loads-the-plugin"])
def test_a_conftest_with_its_own_device_option_keeps_it(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    conftest = THEIR_CONFTEST
    extra: tuple[str, ...] = ()
    if order == "conftest-loads-the-plugin":
        # The conftest is registered first and loads the plugin itself (its options come
        # after the conftest's).
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        conftest = 'pytest_plugins = ["pytest_smartball.plugin"]\n' + conftest
        extra = ("-p", "asyncio", "-p", "looptime")
    inner.makeconftest(conftest)
    inner.makepyfile(test_theirs=THEIR_TESTS)
    result = run(inner, *extra, "--device=gpu")
    assert "option dest" not in result.stderr.str() and "Traceback" not in result.stderr.str()
    result.assert_outcomes(passed=2)
    result = run(inner, *extra, "--device=gpu", "--smartball-device=sim")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"smartball: {CLASH_SENTENCE}*--smartball-device=sim*"])
    # --device=real meant ours, but reaches theirs: one sentence says how to ask for ours.
    sentence = assert_clean_usage_error(run(inner, *extra, "--device=real"), CLASH_SENTENCE)
    assert "--smartball-device=real" in sentence and sentence.count(". ") == 0
    # In a run of only their own tests, --device=sim is theirs to mean what they like.
    inner.makepyfile(
        test_only_theirs="def test_sim(pytestconfig):\n"
        "    assert pytestconfig.getoption('--device') == 'sim'\n"
    )
    run(inner, *extra, "test_only_theirs.py", "--device=sim").assert_outcomes(passed=1)


def test_a_device_clash_under_xdist_names_the_fix_instead_of_crashing_the_workers(
    inner: pytest.Pytester,
) -> None:
    """xdist's controller collects nothing: the workers find the tests that need the
    device, and a usage error raised there crashed them (INTERNALERROR, a traceback)."""
    inner.makeconftest(THEIR_CONFTEST)
    inner.makepyfile(
        test_theirs="def test_theirs(pytestconfig):\n"
        "    assert pytestconfig.getoption('--device') == 'real'\n\n\n"
        "def test_ours(smartball):\n    assert smartball\n"
    )
    result = run(inner, "-n", "2", "--device=real")
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    result.assert_outcomes(passed=1, errors=1)
    assert CLASH_SENTENCE in out and "--smartball-device=real" in out


@pytest.mark.parametrize("where", ["PYTEST_ADDOPTS", "addopts"])
def test_a_device_clash_is_found_in_addopts_too(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """--device=real from PYTEST_ADDOPTS or the ini's addopts is no less meant than one
    typed: running the SmartBall tests on the simulator instead would pass unasked."""
    inner.makeconftest(THEIR_CONFTEST)
    inner.makepyfile(test_ours="def test_ours(smartball):\n    assert smartball\n")
    if where == "PYTEST_ADDOPTS":
        monkeypatch.setenv("PYTEST_ADDOPTS", "--device=real")
    else:
        inner.makefile(".ini", pytest=INNER_INI + "addopts = --device real\n")
    assert_clean_usage_error(run(inner), CLASH_SENTENCE, "--smartball-device=real")


def test_smartball_device_always_works(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_ours="def test_kind(smartball):\n    assert smartball.sim is None\n")
    result = run(inner, "--smartball-device=real", "-p", "no:smartball-recorder", inprocess=True)
    # --device=real spelled the long way reaches the plugin: it checks for a bench.
    assert "--device=real" in result.stdout.str() + result.stderr.str()


def test_where_device_is_theirs_our_sentences_name_smartball_device(
    inner: pytest.Pytester,
) -> None:
    """A sentence that tells the user to type --device=sim, in a project where --device is
    someone else's option, sends them the wrong way."""
    inner.makeconftest(THEIR_CONFTEST)
    inner.makepyfile(
        test_ours="import pytest\n\n\n"
        "def test_kind(smartball):\n    assert smartball\n\n\n"
        "@pytest.mark.real_only\ndef test_bench(smartball):\n    assert smartball\n"
    )
    skipped = run(inner, "-rs", "--smartball-device=sim", inprocess=True)
    skipped.assert_outcomes(passed=1, skipped=1)
    skipped.stdout.fnmatch_lines(["*needs real hardware (--smartball-device=real)*"])
    sentence = assert_clean_usage_error(
        run(inner, "--smartball-device=real", "-p", "no:smartball-recorder", inprocess=True)
    )
    assert sentence.startswith("ERROR: --smartball-device=real: "), sentence
    assert "--device=" not in sentence.replace("--smartball-device=", ""), sentence


def test_no_header_lines_in_a_project_that_does_not_use_the_plugin(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = run(inner, "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if line.startswith("smartball:")]
    assert "virtual time" not in result.stdout.str()
    assert "smartball." not in (inner.path / "out.xml").read_text()  # their XML as it was


def test_header_lines_under_xdist_once_the_workers_used_the_plugin(
    inner: pytest.Pytester,
) -> None:
    """xdist's controller collects nothing, so it learns only from the workers' results
    that the run used the plugin: the lines come with the summary instead."""
    inner.makepyfile(test_ours="def test_sim(sim_device):\n    assert sim_device\n")
    result = run(inner, "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["smartball: device=sim *", "smartball: simulated SmartBall, *"])


@pytest.mark.parametrize("quiet", ["-q", "--no-header"])
def test_no_late_header_lines_where_the_header_is_not_shown(
    inner: pytest.Pytester, quiet: str
) -> None:
    inner.makepyfile(test_ours="def test_sim(sim_device):\n    assert sim_device\n")
    result = run(inner, quiet)
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if line.startswith("smartball:")]


def test_no_header_lines_for_a_projects_own_options_that_look_like_ours(
    inner: pytest.Pytester,
) -> None:
    """An embedded project's own --firmware or --sim-speed is not a SmartBall option."""
    inner.makeconftest(
        "def pytest_addoption(parser):\n"
        "    parser.addoption('--firmware-dir')\n"
        "    parser.addoption('--sim-speed')\n"
    )
    inner.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = run(inner, "--firmware-dir=out", "--sim-speed=2", "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if line.startswith("smartball:")]
    assert "smartball." not in (inner.path / "out.xml").read_text()
    # One of ours, spelled out, is a run about SmartBalls.
    result = run(inner, "--sim-seed=3")
    result.stdout.fnmatch_lines(["smartball: simulated SmartBall, seed=3 *"])


def test_header_lines_once_tests_that_use_the_plugin_are_collected(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(test_ours="def test_sim(sim_device):\n    assert sim_device\n")
    result = run(inner)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "collected 1 item",
            "smartball: device=sim *",
            "smartball: simulated SmartBall, seed=0 faults=none (virtual time in the tests "
            "that use its fixtures)",
        ]
    )

"""``--sim-trust``: what the plugin's simulated SmartBall trusts (docs/protocol.md section
16). ``test`` provisions the repository's test key (a signed-only ball), ``none`` a v1
ball; the default is the release firmware's (see pytest_smartball.options)."""

from __future__ import annotations

import pytest

from pytest_smartball.options import SIM_TRUST_DEFAULT

pytest_plugins = ["pytester"]

INNER_INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
timeout = 15
"""
BASE_ARGS = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")

SIGNED_ONLY_TEST = """
def test_trust(sim_device):
    info = sim_device.firmware.info()
    with open("trust.txt", "w") as out:
        out.write(f"{info.signed_only} {info.trusted_key_id}")
"""


@pytest.mark.parametrize("firmware", ["python", "c"])
@pytest.mark.parametrize("trust", ["test", "none", None])
def test_the_plugins_simulated_ball_trusts_what_sim_trust_says(
    pytester: pytest.Pytester, trust: str | None, firmware: str
) -> None:
    """The same for the Python model and the C core (``--sim-firmware=c``, a signed-only
    ball by default too: the decision is trust_options', whatever the firmware)."""
    from pytest_smartball.contract import signing

    pytester.makefile(".ini", pytest=INNER_INI)
    pytester.makepyfile(test_trust=SIGNED_ONLY_TEST)
    args = [f"--sim-trust={trust}"] if trust else []
    args.append(f"--sim-firmware={firmware}")
    result = pytester.runpytest_subprocess(*BASE_ARGS, "--device=sim", *args, timeout=60)
    result.assert_outcomes(passed=1)
    signed_only, key = (pytester.path / "trust.txt").read_text().split()
    if (trust or SIM_TRUST_DEFAULT) == "test":
        assert (signed_only, int(key)) == ("True", signing.test_trusted_key().key_id)
    else:
        assert (signed_only, key) == ("False", "0")


def test_a_trust_that_is_not_a_choice_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".ini", pytest=INNER_INI)
    pytester.makepyfile(test_trust=SIGNED_ONLY_TEST)
    result = pytester.runpytest_subprocess(*BASE_ARGS, "--sim-trust=maybe", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--sim-trust" in result.stderr.str()


def test_the_sim_trust_marker_overrides_the_option(pytester: pytest.Pytester) -> None:
    pytester.makefile(".ini", pytest=INNER_INI)
    pytester.makepyfile(
        test_trust="import pytest\n\n\n@pytest.mark.sim_trust('none')\n"
        + SIGNED_ONLY_TEST.lstrip("\n")
    )
    result = pytester.runpytest_subprocess(
        *BASE_ARGS, "--device=sim", "--sim-trust=test", timeout=60
    )
    result.assert_outcomes(passed=1)
    assert (pytester.path / "trust.txt").read_text().split() == ["False", "0"]

"""The contract monitor through the plugin: a test that asks for ``smartball_monitor``
fails (a failure, not an error) with the monitor's first violation even when its own
assertions pass; the same test without it, in a neighbour's project, is left alone."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER_INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
timeout = 30
"""
BASE_ARGS = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")

INNER = """
import pytest

pytestmark = pytest.mark.asyncio


async def test_update(ota, {fixture}):
    result = await ota().run()
    assert result.success, result.error
"""


@pytest.mark.parametrize("watched", [True, False])
def test_a_deviation_the_engine_recovers_from_fails_a_watched_test(
    pytester: pytest.Pytester, watched: bool
) -> None:
    pytester.makefile(".ini", pytest=INNER_INI)
    fixture = "smartball_monitor" if watched else "firmware_image"
    pytester.makepyfile(test_inner=INNER.format(fixture=fixture))
    result = pytester.runpytest_subprocess(
        *BASE_ARGS, "--device=sim", "--sim-firmware-bug", "late-reset", timeout=120
    )
    if watched:
        result.assert_outcomes(failed=1)
        out = result.stdout.str()
        assert "contract violation [done.disconnect]" in out, out
        assert "MsgOtaDone" in out  # the trace around it
    else:
        result.assert_outcomes(passed=1)

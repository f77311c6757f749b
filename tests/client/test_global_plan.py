"""Which tests ``--sim-faults`` (a plan for every test) applies to: the device of every
test, so updates through the OTA engine meet it; a test on the raw NUS link (the ``nus``
fixture) is skipped with a reason instead, since a raw link has no recovery by design.
"""

from __future__ import annotations

import pytest

from tests.plugin_sessions import BASE_ARGS, INNER_INI

pytest_plugins = ["pytester"]

TESTS = """
import pytest
from pytest_smartball.contract import codec as p


@pytest.mark.asyncio
async def test_raw_link(nus):
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,), 5.0)
    assert info.protocol_version == p.PROTOCOL_VERSION


@pytest.mark.asyncio
async def test_update(ota, sim_device):
    result = await ota().run()
    assert result.success, result.error
    assert [(r.fault, r.trigger) for r in sim_device.fault_log] == [("drop", "erase:50%")]
"""


def test_a_global_plan_skips_raw_link_tests_with_a_reason(pytester: pytest.Pytester) -> None:
    pytester.makefile(".ini", pytest=INNER_INI)
    pytester.makepyfile(test_global=TESTS)
    result = pytester.runpytest_subprocess(
        *BASE_ARGS, "-rs", "--sim-faults=drop@erase:50%", timeout=60
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED * a raw NUS link test: --sim-faults 'drop@erase:50%' applies to updates*"]
    )


def test_without_a_global_plan_raw_link_tests_run(pytester: pytest.Pytester) -> None:
    pytester.makefile(".ini", pytest=INNER_INI)
    pytester.makepyfile(test_global=TESTS.replace('[("drop", "erase:50%")]', "[]"))
    result = pytester.runpytest_subprocess(*BASE_ARGS, timeout=60)
    result.assert_outcomes(passed=2)

"""``pytest --device=real --bluez=emulated``: the plugin's real-device path (preflight,
fixtures, return to baseline) against the emulated BlueZ the run starts and stops."""

from __future__ import annotations

import os
import re
import shutil

import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None,
    reason="needs dbus-daemon (apt-get install -y dbus-daemon); .ci/run installs it",
)

INNER = """
import os
import pytest
from pytest_smartball.contract import codec as p

pytestmark = pytest.mark.asyncio


async def test_info_over_bluez(nus, emulated_bluez):
    assert os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == emulated_bluez.bus.address
    print("DAEMON-PID", emulated_bluez.daemon_pid)
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert info.protocol_version == 1


# Real BlueZ 5.66 drops a characteristic's MTU property on disconnect without a signal and
# brings it back silently; bleak reading the device fresh on this test's loop after
# preflight's connect reports 23 - 3 = 20. The link acquires the MTU itself.
async def test_write_size_after_preflight_connected(nus):
    assert nus.max_write == 244  # MTU 247 - 3


async def test_update_over_bluez(ota, firmware_image, emulated_bluez):
    result = await ota().run()
    assert result.success, result.error
    crc = emulated_bluez.call(lambda: emulated_bluez.device.firmware.active.crc32)
    assert crc == firmware_image.crc32
"""


def test_the_real_path_runs_against_the_emulated_bluez(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "asyncio_default_test_loop_scope = function\n"
    )
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(
        "--device=real",
        "--bluez=emulated",
        "--ble-address=C0:FF:EE:00:00:07",
        "-s",
        "-p",
        "no:cacheprovider",
        timeout=60,
    )
    result.assert_outcomes(passed=3)
    output = result.stdout.str()
    assert "smartball preflight" in output or "smartball: BlueZ 5.72" in output
    found = re.search(r"DAEMON-PID (\d+)", output)
    assert found is not None, output
    pid = int(found.group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the run stopped its dbus-daemon


def test_emulated_bluez_needs_device_real(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--bluez=emulated", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--bluez=emulated*--device=real*"])

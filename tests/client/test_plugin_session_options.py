"""A simulated session of the pytest plugin, through inner pytest sessions: its fixtures,
markers, virtual time and header, and the options that shape it (--sim-seed, --sim-faults,
--firmware), with --device=real failing fast where there is no Bluetooth.

Inner tests check what they can see (fixtures, clocks, fault plans) and hand values the
outer test compares across sessions (CRCs) back through a small file.
"""

from __future__ import annotations

import random
import zlib
from importlib.metadata import version

import pytest

from ..plugin_sessions import assert_clean_usage_error, run

pytest_plugins = ["pytester"]

NAME = "Bouncy"
ADDRESS = "12:34:56:78:9A:BC"


def read_values(pytester: pytest.Pytester, name: str) -> dict[str, str]:
    text = (pytester.path / name).read_text()
    return dict(line.split("=", 1) for line in text.split())


MAIN_TESTS = f"""
import asyncio
import time

import pytest

from pytest_smartball.contract import codec as p


def test_loaded_from_the_entry_point(request):
    plugin = request.config.pluginmanager.get_plugin("smartball")
    assert plugin is not None and plugin.__name__ == "pytest_smartball.plugin"


def test_ble_name_and_address_reach_the_device(smartball, sim_device):
    assert smartball.is_sim
    assert (smartball.name, smartball.address) == ({NAME!r}, {ADDRESS!r})
    assert (sim_device.name, sim_device.address) == ({NAME!r}, {ADDRESS!r})
    assert smartball.sim is sim_device


@pytest.mark.asyncio
async def test_nus_answers_info(nus, sim_device):
    assert nus.is_connected
    assert (nus.device.name, nus.device.address) == ({NAME!r}, {ADDRESS!r})
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo), info
    assert info == sim_device.firmware.info()
    assert info.active_image_crc32 == sim_device.firmware.active.crc32


@pytest.mark.asyncio
async def test_runs_on_virtual_time(smartball):
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.sleep(3600)  # on a real clock the inner run's 15 s timeout would stop it
    assert loop.time() - t0 >= 3600


@pytest.mark.real_only
def test_real_only():
    raise AssertionError("a real_only test ran on the simulator")


@pytest.mark.sim_only
def test_sim_only(sim_device):
    assert sim_device is not None


def test_no_fault_plan_by_default(sim_device):
    assert sim_device.injector.pending == []
    assert sim_device.fault_log == []


@pytest.mark.faults("drop@erase:50%")
def test_faults_marker_sets_the_plan(sim_device):
    assert [str(f) for f in sim_device.injector.pending] == ["drop@erase:50%"]


@pytest.mark.faults("drop@erase:50%")
@pytest.mark.asyncio
async def test_faults_marker_fires_during_ota(ota, sim_device, firmware_image):
    result = await ota().run()
    assert result.success, result.error
    assert [(r.fault, r.trigger) for r in sim_device.fault_log] == [("drop", "erase:50%")]
    assert result.reconnects >= 1
    assert result.info_after.active_image_crc32 == firmware_image.crc32

"""


def test_sim_session_fixtures_markers_and_header(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_inner=MAIN_TESTS)
    result = run(
        inner,
        "-v",
        "--strict-markers",
        "--sim-seed=5",
        f"--ble-name={NAME}",
        f"--ble-address={ADDRESS}",
    )
    result.stdout.fnmatch_lines(
        [
            f"smartball: device=sim target={ADDRESS} firmware=generated bleak={version('bleak')}",
            "smartball: simulated SmartBall, seed=5 faults=none (virtual time in the tests "
            "that use its fixtures)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*::test_real_only SKIPPED (needs real hardware*",
            "*::test_sim_only PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(["plugins: *smartball-*"])
    result.assert_outcomes(passed=8, skipped=1)


# --- --sim-seed ----------------------------------------------------------------------

SEED_TESTS = """
def test_write_crc(firmware_image, sim_device, pytestconfig):
    (pytestconfig.rootpath / "crc.txt").write_text(
        f"image={firmware_image.crc32:08x} device={sim_device.firmware.active.crc32:08x}"
    )
"""


def test_sim_seed_makes_the_generated_image_reproducible(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_seed=SEED_TESTS)
    seen = []
    for seed in ("11", "11", "12"):
        result = run(inner, f"--sim-seed={seed}", inprocess=True)
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"smartball: simulated SmartBall, seed={seed} *"])
        seen.append(read_values(inner, "crc.txt"))
        (inner.path / "crc.txt").unlink()
    first, again, other = seen
    assert first == again
    assert first["image"] != other["image"]
    assert first["device"] != other["device"]


# --- --sim-faults --------------------------------------------------------------------

FAULTS_TESTS = """
import pytest


def test_plan_applies(sim_device):
    assert [str(f) for f in sim_device.injector.pending] == ["drop@offset:100000"]


@pytest.mark.faults("reboot@offset:5")
def test_plan_adds_to_the_marker(sim_device):
    assert [str(f) for f in sim_device.injector.pending] == [
        "drop@offset:100000",
        "reboot@offset:5",
    ]


@pytest.mark.asyncio
async def test_ota_survives_the_drop(ota, smartball, sim_device, firmware_image):
    assert (sim_device.name, smartball.address) == ("Other", "C0:FF:EE:00:00:01")
    assert firmware_image.size > 100_000
    result = await ota().run()
    assert result.success, result.error
    assert [(r.fault, r.trigger) for r in sim_device.fault_log] == [("drop", "offset:100000")]
    assert result.reconnects >= 1
    assert result.info_after.active_image_crc32 == firmware_image.crc32
"""


def test_sim_faults_applies_to_every_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_faults=FAULTS_TESTS)
    result = run(inner, "--strict-markers", "--sim-faults=drop-in-transfer", "--ble-name=Other")
    result.stdout.fnmatch_lines(
        [
            "smartball: device=sim target=name 'Other' *",
            "smartball: simulated SmartBall, seed=0 faults=drop-in-transfer "
            "(virtual time in the tests "
            "that use its fixtures)",
        ]
    )
    result.assert_outcomes(passed=3)


def test_invalid_sim_faults_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_never="def test_never():\n    raise AssertionError('ran')\n")
    result = run(inner, "--sim-faults=drop@erase:50%,bogus", inprocess=True)
    line = assert_clean_usage_error(result, "--sim-faults", "'bogus'")
    assert "unknown effect" in line


# --- --firmware ----------------------------------------------------------------------


def test_missing_firmware_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_never="def test_never():\n    raise AssertionError('ran')\n")
    result = run(inner, "--firmware=no-such-image.bin", inprocess=True)
    assert_clean_usage_error(result, "--firmware", "no-such-image.bin", "no such file")


FIRMWARE_TESTS = """
import pytest


def test_image_is_the_file(firmware_image):
    assert firmware_image.size == {size}
    assert firmware_image.crc32 == {crc:#010x}
    assert firmware_image.source.endswith("app.bin")


@pytest.mark.asyncio
async def test_ota_flashes_the_file(ota, firmware_image, sim_device):
    result = await ota().run()
    assert result.success, result.error
    assert result.info_after.active_image_crc32 == {crc:#010x}
    assert result.info_after.active_image_size == {size}
    assert sim_device.firmware.active.data == firmware_image.data
"""


def test_firmware_option_is_flashed(inner: pytest.Pytester) -> None:
    data = random.Random(2024).randbytes(50_001)
    (inner.path / "app.bin").write_bytes(data)
    crc = zlib.crc32(data)
    inner.makepyfile(test_fw=FIRMWARE_TESTS.format(size=len(data), crc=crc))
    # an unsigned file: a v1 ball (the plugin's simulated ball is signed-only by default)
    result = run(inner, "--firmware=app.bin", "--sim-trust=none")
    result.stdout.fnmatch_lines(["smartball: device=sim * firmware=app.bin *"])
    result.assert_outcomes(passed=2)


# --- --device=real without Bluetooth -------------------------------------------------


def test_device_real_without_bluez_fails_fast(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hermetic even on a machine with BlueZ: point dbus-fast at a system bus that is not there.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={inner.path / 'no-bus'}")
    inner.makepyfile(test_never="def test_never(smartball):\n    raise AssertionError('ran')\n")
    # A hang would hit the subprocess timeout: every step of preflight is bounded.
    result = run(inner, "--device=real", timeout=60)
    line = assert_clean_usage_error(result, "--device=real", "D-Bus", "BlueZ")
    assert line.count(". ") == 0, f"not one sentence: {line}"

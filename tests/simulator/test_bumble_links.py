"""The simulated SmartBall over Google's Bumble stack: how links end (reason codes,
callbacks, services), refused connects, and a link dropped as the connection is made (issue
21), through bleak's front-end, the engine and the CLI. All waiting is on looptime's
virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError
from bumble import hci
from bumble.device import Device

from pytest_smartball.cli import main as cli_main
from pytest_smartball.cli.output import install_logging
from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.loops import run as run_loop
from pytest_smartball.ota import OtaEngine, OtaEvent, OtaResult
from pytest_smartball.targets.bumble import make_bumble_target
from smartball_sim.device import SimDevice
from smartball_sim.faults import FaultPlan
from smartball_sim.make_image import make_image
from tests.simulator.fault_classes import Budgets, Link, time_bound

from .bumble_world import (
    ADDRESS,
    SERVICE_DISCOVERY,
    Host_,
    connected,
    find,
    make_world,
)

#: The async tests run on looptime's virtual clock (the plugin gives it only to tests that
#: use its fixtures or markers).
pytestmark = pytest.mark.looptime


# --- link ends: reason codes, callbacks, services ------------------------------------------


@pytest.mark.asyncio
async def test_a_drop_is_a_dead_link_0x08_and_clears_the_services() -> None:
    world, device = make_world()
    host = await connected(world)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    device.disconnect("test")
    await asyncio.sleep(0.1)
    assert host.disconnect_times == [t0]  # at once: Bumble's link has no supervision timeout
    assert host.reason == hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR == 0x08
    assert not host.client.is_connected
    with pytest.raises(BleakError, match=SERVICE_DISCOVERY):
        await host.command(p.CmdInfo())
    assert device.advertising
    await host.client.connect()  # and it comes back
    assert device.link is not None and device.link.number == 2


@pytest.mark.asyncio
async def test_a_reset_after_done_hangs_up_0x13_and_the_device_boots_into_the_image() -> None:
    world, device = make_world()
    host = await connected(world)
    image = make_image(5000, 3)
    chunk = 232  # whole words, within an ATT write at MTU 247
    await host.command(p.CmdOtaStart(len(image), p.crc32(image), chunk))
    await asyncio.sleep(1)
    for offset in range(0, len(image), chunk):
        await host.command(p.CmdOtaData(offset, image[offset : offset + chunk]))
        await asyncio.sleep(0.01)
    await host.command(p.CmdOtaFinish())
    await asyncio.sleep(1)
    assert p.MsgOtaDone in host.types()
    assert host.reason == hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR == 0x13
    assert not device.advertising  # booting
    await asyncio.sleep(device.radio.boot_s)
    assert device.advertising
    assert device.firmware.active.data == image


@pytest.mark.asyncio
async def test_a_reboot_fault_is_a_dead_link_and_a_silent_boot() -> None:
    world, device = make_world("reboot@cmd:CMD_INFO#1")
    host = await connected(world)
    central = world.central
    assert central is not None
    await host.command(p.CmdInfo())
    await asyncio.sleep(0.1)
    assert host.reason == 0x08
    assert device.firmware.boot_count == 2
    heard: list[float] = []
    loop = asyncio.get_running_loop()
    central.on(Device.EVENT_ADVERTISEMENT, lambda adv: heard.append(loop.time()))
    t0 = loop.time()
    await BleakScanner.discover(timeout=device.radio.boot_s + 0.5, backend=world.scanner_backend)
    assert heard and min(heard) - t0 >= device.radio.boot_s - 0.1  # silent while it boots


@pytest.mark.asyncio
async def test_an_advertising_pause_drops_the_link_and_silences_the_device() -> None:
    world, device = make_world()
    host = await connected(world)
    central = world.central
    assert central is not None
    loop = asyncio.get_running_loop()
    heard: list[float] = []
    central.on(Device.EVENT_ADVERTISEMENT, lambda adv: heard.append(loop.time()))
    t0 = loop.time()
    device.set_faults("adv-pause:5s")
    await asyncio.sleep(0.1)
    assert host.reason == 0x08
    await BleakScanner.discover(timeout=6, backend=world.scanner_backend)
    assert heard, "never advertised again"
    assert 5.0 <= min(heard) - t0 <= 5.0 + device.radio.adv_interval_s + 0.01


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["erase", "transfer", "verify", "after-done"])
async def test_the_engine_finishes_after_a_drop(when: str) -> None:
    """A drop during the erase, the transfer, the verify, and after DONE (before the
    device's own reset): the link dies (0x08) and the engine still ends with the device
    running the image."""
    plans = {
        "erase": "drop@erase:50%",
        "transfer": "drop@offset:10000",
        "verify": "drop@cmd:CMD_OTA_FINISH#1",
        "after-done": "",
    }
    image = FirmwareImage(make_image(30_000, 5), "drop.bin")
    target = make_bumble_target(faults=plans[when], seed=1)
    device = target.device
    reasons: list[int | None] = []

    def on_event(event: OtaEvent) -> None:
        if when == "after-done" and event.kind == "done":
            device.disconnect("test: the link died after DONE")
        if event.kind in ("link-lost", "device-reset") and engine.link is not None:
            client = engine.link._client
            if client is not None:
                reasons.append(client._backend.last_disconnect_reason)  # type: ignore[attr-defined]

    engine = OtaEngine(image, target.backend, address=device.address, on_event=on_event)
    result = await engine.run()
    assert result.success, result.error
    assert device.firmware.active.data == image.data
    assert reasons and reasons[0] == 0x08, reasons
    if when != "after-done":
        assert [r.fault for r in device.fault_log] == ["drop"]


@pytest.mark.asyncio
async def test_a_reset_during_the_transfer_restarts_or_resumes_and_finishes() -> None:
    image = FirmwareImage(make_image(30_000, 6), "reset.bin")
    target = make_bumble_target(faults="reboot@offset:12000", seed=2)
    result = await OtaEngine(image, target.backend, address=target.device.address).run()
    assert result.success, result.error
    assert target.device.firmware.boot_count == 3  # the fault, then the switch to the image
    assert target.device.firmware.active.data == image.data


# --- refused connects -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_connect_fail_is_an_unanswered_link_0x3e_after_6_intervals() -> None:
    world, device = make_world("connect-fail")
    found = await find(world)
    host = Host_(world, found)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(BleakError, match="0x3E"):
        await host.client.connect()
    # established at the next advertisement, given up 6 intervals (15 ms each) later
    assert loop.time() - t0 == pytest.approx(6 * 0.015, abs=device.radio.adv_interval_s + 0.01)
    assert device.link is None and host.disconnects == []
    await host.client.connect()  # the next attempt is answered
    assert device.link is not None and device.link.number == 1
    assert [r.detail for r in device.fault_log if r.trigger == "applied"] == [
        "unanswered: HCI 0x3E connection failed to be established"
    ]


@pytest.mark.asyncio
async def test_connect_timeout_hangs_until_the_host_gives_up() -> None:
    world, device = make_world("connect-timeout")
    found = await find(world)
    client = BleakClient(found, backend=world.client_backend, timeout=7)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await client.connect()
    assert loop.time() - t0 == pytest.approx(7, abs=0.2)
    assert device.link is None
    await client.connect()
    assert client.is_connected and device.link is not None


@pytest.mark.asyncio
async def test_a_cancelled_connect_leaves_no_link_behind() -> None:
    """Bumble's controller ignores LE Create Connection Cancel; CentralController ends the
    attempt, so a connect that timed out while the device was silent does not complete
    later behind the host's back."""
    world, device = make_world()
    await world.start()
    device.pause_advertising(10)
    client = BleakClient(ADDRESS, backend=world.client_backend, timeout=3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await client.connect()
    assert loop.time() - t0 == pytest.approx(3)  # not when the device happens to come back
    await asyncio.sleep(10)  # the device advertises again
    assert device.advertising and device.link is None
    assert world.central is not None and not world.central.connections
    await client.connect()
    assert client.is_connected


# --- a link dropped as the connection is made (issue 21) ------------------------------------

CONNECT_DROP_PLANS = [
    "drop@connect:1",
    "drop@offset:1000,drop@connect:2,drop@connect:3,drop@connect:4,drop@connect:5",
]
CONNECT_DROP_IMAGE = FirmwareImage(make_image(64_000, 21), "connect-drop.bin")


def _bumble_update(plan: str) -> tuple[OtaResult, SimDevice]:
    target = make_bumble_target(faults=plan, seed=3)
    engine = OtaEngine(CONNECT_DROP_IMAGE, target.backend, address=target.device.address)
    return run_loop(engine.run(), virtual=True), target.device


@pytest.mark.parametrize("plan", CONNECT_DROP_PLANS)
def test_a_drop_as_the_connection_is_made_ends_the_connect_at_once(plan: str) -> None:
    """The drop reaches the connect in progress (it used to reach nobody: the set-up's first
    ATT request waited out the 20 s connect timeout), so the update ends within the fuzz
    oracle's bound for the plan, in virtual time."""
    clean, _ = _bumble_update("")
    assert clean.success, clean.error
    result, device = _bumble_update(plan)
    assert result.success, result.error
    assert device.firmware.active.data == CONNECT_DROP_IMAGE.data
    parsed = FaultPlan.parse(plan)
    assert [r.fault for r in device.fault_log] == ["drop"] * len(parsed.faults)
    budgets = Budgets.of(link=Link.BUMBLE)
    bound = time_bound(parsed, CONNECT_DROP_IMAGE.size, budgets, clean.duration_s)
    assert result.duration_s <= bound, (result.duration_s, bound)


@pytest.mark.asyncio
async def test_a_connect_whose_link_drops_as_it_is_made_raises_at_once() -> None:
    world, _ = make_world("drop@connect:1")
    found = await find(world)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    client = BleakClient(found, backend=world.client_backend, timeout=20)
    with pytest.raises(BleakError, match="dropped as it was made"):
        await client.connect()
    assert loop.time() - t0 < 1.0  # not the 20 s connect timeout
    assert client._backend.last_disconnect_reason == 0x08  # type: ignore[attr-defined]
    host = Host_(world, await find(world))  # the next connect is a good one
    await host.open()
    assert host.client.is_connected
    await host.client.disconnect()


def _cli_connect_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """``smartball-ota flash --sim --sim-link bumble --faults drop@connect:1``: stdout, stderr."""
    image = tmp_path / "connect-drop.bin"
    image.write_bytes(CONNECT_DROP_IMAGE.data)
    argv = [
        "flash",
        str(image),
        "--sim",
        "--sim-trust",
        "none",
        "--sim-link",
        "bumble",
        "--faults",
        CONNECT_DROP_PLANS[0],
    ]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_no_bumble_log_line_reaches_the_cli_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, err = _cli_connect_drop(tmp_path, capsys)
    assert not [line for line in err.splitlines() if "bumble." in line], err


@pytest.mark.parametrize(("verbosity", "shown"), [(0, False), (2, False), (3, True)])
def test_bumble_loggers_reach_stderr_only_with_vvv(
    verbosity: int, shown: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    uninstall = install_logging(verbosity)
    try:
        logging.getLogger("bumble.host").warning("connection 0x0001 not found")
        logging.getLogger("pytest_smartball.test").warning("ours")
    finally:
        uninstall()
    err = capsys.readouterr().err
    assert ("connection 0x0001 not found" in err) is shown
    assert "ours" in err


@pytest.mark.parametrize("plan", CONNECT_DROP_PLANS)
def test_the_connections_counted_agree_with_the_devices_log(
    plan: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The device numbers every link it makes, one dropped as it was made included (docs/
    faults.md); the host counts the connections the update used (``connects``) and, apart,
    the connect attempts that failed and bleak-retry-connector made again. Together they are
    the device's links (these plans make no link without NUS)."""
    with caplog.at_level(logging.INFO, logger="sim.device"):  # the device's log
        result, _ = _bumble_update(plan)
    assert result.success, result.error
    links = [r for r in caplog.records if re.search(r"connected \(link #\d+\)", r.message)]
    assert result.failed_connect_attempts >= 1, result
    assert result.connects + result.failed_connect_attempts == len(links), (
        result.connects,
        result.failed_connect_attempts,
        [r.message for r in links],
    )
    failed = [e for e in result.events if e.kind == "connect-attempt-failed"]
    assert len(failed) == result.failed_connect_attempts, result.events


def test_the_summary_says_what_each_connection_count_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = _cli_connect_drop(tmp_path, capsys)
    assert "connections    2 (0 after a lost link)" in out, out
    said = "failed connects 1 (connect attempts that failed or dropped as they were made; "
    assert said in out, out

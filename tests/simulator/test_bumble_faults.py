"""The simulated SmartBall over Google's Bumble stack: faults that change bytes, the faults
only BlueZ has (refused with a sentence), and the field failure the engine finishes. All
waiting is on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio

import pytest
from bleak.exc import BleakError

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.bumble import make_bumble_target
from smartball_sim.bumble.central import BumbleWorld
from smartball_sim.bumble.faults import BlueZOnlyFault
from smartball_sim.bumble.local_link import SmartBallLink
from smartball_sim.bumble.peripheral import serve_smartball
from smartball_sim.device import SimDevice
from smartball_sim.make_image import make_image

from .bumble_world import (
    ADDRESS,
    IMAGE,
    SERVICE_DISCOVERY,
    connected,
    make_world,
)

#: The async tests run on looptime's virtual clock (the plugin gives it only to tests that
#: use its fixtures or markers).
pytestmark = pytest.mark.looptime


# --- faults that change bytes ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_lost_and_corrupted_notifications_and_lost_writes() -> None:
    world, device = make_world(
        "lose:MSG_INFO,corrupt@cmd:CMD_OTA_STATUS#2,write-drop@cmd:CMD_INFO#2"
    )
    host = await connected(world)
    for msg in (p.CmdInfo(), p.CmdOtaStatus(), p.CmdOtaStatus(), p.CmdInfo(), p.CmdInfo()):
        await host.command(msg)
        await asyncio.sleep(0.05)
    # INFO 1 lost; STATUS 1 arrives; STATUS 2 corrupted (dropped by the decoder);
    # INFO 2 arms write-drop, so INFO 3 is never received.
    assert host.types() == [p.MsgOtaStatus, p.MsgInfo]
    assert host.decoder.stats.bad_crc == 1
    assert device.firmware.commands_seen == {p.MsgType.CMD_INFO: 2, p.MsgType.CMD_OTA_STATUS: 2}


@pytest.mark.asyncio
async def test_slow_erase_takes_its_time() -> None:
    world, _ = make_world("slow-erase:12s")
    host = await connected(world)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await host.command(p.CmdOtaStart(8192, 0x1234, 100))
    while p.MsgOtaReady not in host.types():  # noqa: ASYNC110 - bounded by the test timeout
        await asyncio.sleep(0.1)
    assert loop.time() - t0 == pytest.approx(12, abs=0.2)


def test_bluez_only_faults_are_refused_with_a_sentence() -> None:
    for spec in ("race:1s", "stale-cache@connect:2"):
        with pytest.raises(BlueZOnlyFault, match=r"BlueZ host's failure.*--sim-link=model"):
            make_bumble_target(faults=spec)
    device = SimDevice(active_image=IMAGE)
    world = BumbleWorld([device])
    assert world.find(ADDRESS) is device
    with pytest.raises(BlueZOnlyFault):
        asyncio.run(_serve_then_set(device, "stale-cache"))


async def _serve_then_set(device: SimDevice, spec: str) -> None:
    await serve_smartball(device, SmartBallLink())
    device.set_faults(spec)


def test_a_profile_leaves_out_its_bluez_faults_and_says_so() -> None:
    target = make_bumble_target(faults="field-linux")
    assert not [f for f in target.device.fault_plan.faults if f.effect == "race"]
    (note,) = [r for r in target.device.fault_log if r.trigger == "not applied"]
    assert note.fault == "race:1.5s" and "BlueZ" in note.detail


# --- the field failure ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_naive_field_flow_fails_as_in_the_field_and_the_engine_finishes() -> None:
    from tests.naive_client import naive_flash

    image = FirmwareImage(make_image(20_000, 4), "field.bin")
    naive = make_bumble_target(faults="slow-erase:30s,drop@erase:50%")
    with pytest.raises(BleakError, match=SERVICE_DISCOVERY):
        await naive_flash(naive.backend, naive.device.address, image.data)
    assert [r.trigger for r in naive.device.fault_log if r.fault == "drop"] == ["erase:50%"]
    robust = make_bumble_target(faults="slow-erase:30s,drop@erase:50%")
    result = await OtaEngine(image, robust.backend, address=robust.device.address).run()
    assert result.success, result.error
    assert robust.device.firmware.active.data == image.data

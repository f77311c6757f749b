"""The Bumble radio bus the simulated SmartBall sits on: centrals by public address, a world
started again in a new event loop, advertising resumed on a rounded clock, and no flood at
one instant for a device whose flash is behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from bumble import hci
from bumble.device import Device, Peer
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.loops import run as run_loop
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.bumble import make_bumble_target
from smartball_sim.bumble.central import CentralController
from smartball_sim.bumble.local_link import SmartBallLink
from smartball_sim.bumble.peripheral import serve_smartball
from smartball_sim.device import SimDevice
from smartball_sim.make_image import make_image

from .bumble_world import (
    ADDRESS,
    IMAGE,
    connected,
    make_world,
)

#: The async tests run on looptime's virtual clock (the plugin gives it only to tests that
#: use its fixtures or markers).
pytestmark = pytest.mark.looptime


# --- the radio bus --------------------------------------------------------------------------


def _central_on(link: LocalLink, random: str, public: str) -> Device:
    controller = CentralController("central", link=link, public_address=public)
    return Device(
        name="central",
        address=hci.Address(random),
        host=Host(controller, AsyncPipeSink(controller)),
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(("link_class", "works"), [(SmartBallLink, True), (LocalLink, False)])
async def test_a_central_connecting_with_its_public_address(
    link_class: Callable[[], LocalLink], works: bool
) -> None:
    """What the kernel does through vhci: scan with a random address, connect with the
    public one. Bumble's LocalLink names the central by its random address and the
    peripheral drops its data; SmartBallLink routes it by the connection's address."""
    link = link_class()
    device = SimDevice(active_image=IMAGE)
    await serve_smartball(device, link)
    central = _central_on(link, "F0:00:00:00:00:0A", "00:11:22:33:44:55")
    await central.power_on()
    connection = await central.connect(
        hci.Address(ADDRESS), own_address_type=hci.OwnAddressType.PUBLIC, timeout=5
    )
    assert str(connection.self_address).startswith("00:11:22:33:44:55")
    peer = Peer(connection)
    if works:
        assert await asyncio.wait_for(peer.request_mtu(247), 5) == 247
    else:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(peer.request_mtu(247), 5)


def test_a_world_starts_again_in_a_new_event_loop() -> None:
    """A host that opens a loop per session: the Bumble stacks start again in the new loop
    and the same device answers (what the firmware keeps across loops is its own rule)."""
    world, device = make_world()

    async def session(msg: p.Message) -> list[type]:
        host = await connected(world)
        await host.command(msg)
        await asyncio.sleep(0.1)
        return host.types()

    assert run_loop(session(p.CmdInfo()), virtual=True) == [p.MsgInfo]
    assert device.link is not None  # the first loop ended with its link up
    assert run_loop(session(p.CmdOtaStatus()), virtual=True) == [p.MsgOtaStatus]
    assert device.link is not None and device.link.number == 2


@pytest.mark.asyncio
async def test_advertising_resumes_when_a_pause_ends_on_a_rounded_clock() -> None:
    """Found by the fuzzer: looptime ran the end-of-pause timer at a time that read just
    before the pause's end, the device was still silent, the timer was set again for the
    remaining fraction of a microsecond, and the loop spun at one frozen instant."""
    image = FirmwareImage(make_image(12_287, 0), "pause.bin")
    target = make_bumble_target(faults="adv-pause:1.5s@offset:8325", seed=3)
    result = await OtaEngine(image, target.backend, address=target.device.address).run()
    assert result.success, result.error
    assert target.device.firmware.active.data == image.data


@pytest.mark.asyncio
async def test_a_device_whose_flash_is_behind_is_not_flooded_at_one_instant() -> None:
    """Found by the fuzzer: after lost writes the engine rewound to the device's offset and
    re-sent a window at once, the full receive buffer refused it, and so on: with no airtime
    the clock never moved on and the flash never made room. The engine now waits for the
    next ACK when a rewind lands where the last one did (a local fix of the engine's
    pacing, see the report)."""
    image = FirmwareImage(make_image(10_418, 0), "flood.bin")
    target = make_bumble_target(
        faults="connect-timeout@erase:53%,write-drop:3@cmd:CMD_OTA_DATA#13", seed=0
    )
    result = await OtaEngine(image, target.backend, address=target.device.address).run()
    assert result.success, result.error
    assert target.device.firmware.active.data == image.data

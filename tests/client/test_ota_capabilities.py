"""The OTA engine and what the device offers or says that this host may not know: a message
type it does not know (P13), INFO and STATUS in one connection event, and the progressive
erase asked for only when offered, declined on request, and surviving the faults (P2, P3,
P18).

Runs on looptime's virtual clock (the plugin marks asyncio tests on --device=sim), so a
30 s erase or a 20 s advertising pause costs no wall time and timings are exact. What was
sent is observed at the device (what its firmware received), not asked of the engine.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import Limits, OtaEngine, OtaSettings, State
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.device import SimDevice
from smartball_sim.radio.airlog import Packet, Sender

from .ota_checks import assert_flashed, received_starts

#: These tests are about the transfer, its faults and its outcomes: they flash unsigned
#: images onto a v1 ball; a signed-only ball's update is tests/client/test_ota_signed.py's.
pytestmark = [pytest.mark.asyncio, pytest.mark.sim_only, pytest.mark.sim_trust("none")]

# --- P13: what this host does not know -----------------------------------------------------------


async def test_an_unknown_message_type_from_the_device_is_ignored(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    notify = sim_device._notify

    def with_news(frame: bytes) -> None:
        notify(p.encode_frame(0xB7, b"a newer device's message"))
        notify(frame)

    sim_device.firmware._send = with_news
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)


async def test_info_and_status_share_a_connection_event_until_a_switch_is_asked_for(
    firmware_image: FirmwareImage,
) -> None:
    """One round trip for both before the update (STATUS always follows INFO then); after
    the reset INFO alone, since it may end the update."""
    target = make_sim_target()
    assert target.sim is not None
    log: list[Packet] = []
    target.sim.air_log = log
    result = await OtaEngine(firmware_image, target.backend).run()
    assert_flashed(target.sim, firmware_image, result)
    first = [pkt for pkt in log if pkt.link == 1]
    info, status, start = [pkt for pkt in first if pkt.sender is Sender.HOST][:3]
    assert info.time == status.time < start.time  # INFO and STATUS in one event
    last = [pkt for pkt in log if pkt.link == max(pkt.link for pkt in log)]
    assert [pkt.sender for pkt in last] == [Sender.HOST, Sender.DEVICE]  # INFO, MSG_INFO


# --- capabilities (P2, P3, P18) ----------------------------------------------------------------


@pytest.mark.parametrize("plan", ["", "drop@erase:50%", "drop@offset:60000", "reboot@offset:60000"])
async def test_progressive_erase_is_asked_for_when_offered_and_survives_the_faults(
    plan: str, firmware_image: FirmwareImage
) -> None:
    """P18: READY at once, each page erased before its first write; resume and restart as
    in the normal mode."""
    target = make_sim_target(progressive_erase=True, faults=plan)
    assert target.sim is not None
    starts = received_starts(target.sim)
    result = await OtaEngine(firmware_image, target.backend).run()
    assert_flashed(target.sim, firmware_image, result)
    assert {s.flags for s in starts} == {p.StartFlag.PROGRESSIVE_ERASE}
    assert all(s.chunk_size % 4 == 0 for s in starts)
    assert result.phase_s.get(State.WAITING_READY.value, 0.0) < 1.0  # no up-front erase
    if plan.startswith("reboot"):
        assert result.restarts == 1
    elif plan:
        assert result.resumes == 1


async def test_progressive_erase_can_be_declined(firmware_image: FirmwareImage) -> None:
    target = make_sim_target(progressive_erase=True)
    assert target.sim is not None
    starts = received_starts(target.sim)
    settings = OtaSettings(limits=Limits(progressive_erase=False))
    result = await OtaEngine(firmware_image, target.backend, settings=settings).run()
    assert_flashed(target.sim, firmware_image, result)
    assert [s.flags for s in starts] == [0]
    assert result.phase_s[State.WAITING_READY.value] > 1.0  # the whole erase first


async def test_a_device_without_the_capability_gets_no_flags(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    starts = received_starts(sim_device)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert [s.flags for s in starts] == [0]

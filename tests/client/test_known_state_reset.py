"""The known-state check between HIL tests meets a device that resets under it (a test that
ended at DONE on firmware that resets a moment later): the reset ends the link, and the
check connects once more instead of failing the teardown."""

from __future__ import annotations

import pytest

from pytest_smartball.known_state import find_idle_and_info
from pytest_smartball.link import LinkLost, LinkSettings
from pytest_smartball.ota import OtaSettings
from pytest_smartball.targets.simulated import make_sim_target

pytestmark = [pytest.mark.asyncio, pytest.mark.sim_only]

SETTINGS = OtaSettings(link=LinkSettings(scan_timeout_s=5))


async def test_a_reset_during_the_check_is_met_by_one_more_connect() -> None:
    target = make_sim_target(faults="reboot@cmd:CMD_OTA_STATUS#1")
    assert target.sim is not None
    state, info = await find_idle_and_info(
        target.backend, name=target.name, address=target.address, settings=SETTINGS
    )
    assert state == "idle" and info == target.sim.firmware.info()
    assert [r.fault for r in target.sim.fault_log] == ["reboot"]


async def test_a_device_that_resets_every_time_still_fails_the_check() -> None:
    target = make_sim_target(faults="reboot@cmd:CMD_OTA_STATUS#1,reboot@cmd:CMD_OTA_STATUS#2")
    assert target.sim is not None
    with pytest.raises(LinkLost):
        await find_idle_and_info(
            target.backend, name=target.name, address=target.address, settings=SETTINGS
        )
    assert [r.fault for r in target.sim.fault_log] == ["reboot", "reboot"]

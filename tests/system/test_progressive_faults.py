"""The race and stale-cache fault plans pass in both erase modes (issue 15), on the links
they exist on: the in-process model link and the emulated BlueZ (real bleak, its BlueZ
backend, dbus-fast and a dbus-daemon). Bumble refuses them (they are a BlueZ host's
failures, tests/simulator/test_bumble_faults.py); the real-BlueZ VM stage runs them in normal
mode only.

A device that offers progressive erase gets the flag from the engine (its default), so the
progressive runs below are the ones whose READY grants the wider window."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import BleBackend
from pytest_smartball.ota import EventKind, OtaEngine
from pytest_smartball.targets import FAST_OTA
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.make_image import make_image

pytestmark = [pytest.mark.asyncio, pytest.mark.sim_only]

IMAGE = FirmwareImage(make_image(40_000, 9), "modes-40000.bin")
TWO_PAGES = 8192


def window_of_ready(events: list[str]) -> set[str]:
    return {detail.rsplit(" ", 1)[-1] for detail in events}


@pytest.mark.looptime
@pytest.mark.parametrize("progressive", [False, True], ids=["normal", "progressive"])
@pytest.mark.parametrize(
    "plan", ["race:1.5s", "stale-cache", "race:1.5s@connect:2", "stale-cache@connect:2"]
)
async def test_model_link(plan: str, progressive: bool) -> None:
    target = make_sim_target(
        faults=plan, progressive_erase=progressive, progressive_window_bytes=TWO_PAGES
    )
    device = target.sim
    assert device is not None
    result = await OtaEngine(IMAGE, target.backend).run()
    assert result.success, result.error
    assert device.firmware.active.data == IMAGE.data
    assert EventKind.SERVICES_MISSING in [e.kind for e in result.events]
    ready = [e.detail for e in result.events if e.kind is EventKind.READY]
    assert window_of_ready(ready) == ({"36"} if progressive else {"16"})


@pytest.mark.looptime(False)  # real sockets, a real daemon: real time
@pytest.mark.skipif(
    shutil.which("dbus-daemon") is None,
    reason="needs dbus-daemon (apt-get install -y dbus-daemon); .ci/run installs it",
)
@pytest.mark.parametrize("progressive", [False, True], ids=["normal", "progressive"])
@pytest.mark.parametrize(("plan", "clear_cache"), [("race:0.01s", False), ("stale-cache", True)])
async def test_emulated_bluez(plan: str, clear_cache: bool, progressive: bool) -> None:
    from smartball_sim.bluez.launcher import EmulatedBluez, emulated_smartball

    address = "C0:FF:EE:00:00:01"
    device = emulated_smartball(
        address=address, progressive_erase=progressive, progressive_window_bytes=TWO_PAGES
    )
    image = FirmwareImage(make_image(16_000, 9), "modes-16000.bin")
    with EmulatedBluez([device]) as bluez:
        bluez.call(bluez.device.set_faults, plan)
        settings = replace(FAST_OTA, clear_cache=clear_cache)
        backend = BleBackend(adapter="hci0")
        result = await OtaEngine(image, backend, address=address, settings=settings).run()
        assert result.success, result.error
        assert bluez.call(lambda: bluez.device.firmware.active.crc32) == image.crc32
        applied = bluez.call(lambda: [r.fault for r in bluez.device.fault_log])
        assert plan.split(":")[0] in applied
    ready = [e.detail for e in result.events if e.kind is EventKind.READY]
    assert window_of_ready(ready) == ({"36"} if progressive else {"16"})

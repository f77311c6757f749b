"""The OTA engine against the simulator's faults it survives: every field failure of an
update that finishes (drops, reboots, advertising pauses, lost messages and writes, missing
services, stack errors, a device whose buffer overflows), resumed or restarted as the device
says, with no more re-sent than a window per drop.

Runs on looptime's virtual clock (the plugin marks asyncio tests on --device=sim), so a
30 s erase or a 20 s advertising pause costs no wall time and timings are exact. What was
sent is observed at the device (what its firmware received), not asked of the engine.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import replace

import pytest
from bleak.exc import BleakError

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import EventKind, OtaEngine, OtaSettings, State
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.device import SimDevice
from tests.naive_client import naive_flash

from .ota_checks import CHUNK, FIELD_IMAGE, WINDOW, assert_flashed, commands_received, event_kinds

#: These tests are about the transfer, its faults and its outcomes: they flash unsigned
#: images onto a v1 ball; a signed-only ball's update is tests/client/test_ota_signed.py's.
pytestmark = [pytest.mark.asyncio, pytest.mark.sim_only, pytest.mark.sim_trust("none")]


def received_data_offsets(device: SimDevice) -> list[int]:
    """The offset of every CMD_OTA_DATA the device's firmware receives from now on."""
    offsets: list[int] = []
    decoder = p.FrameDecoder()
    receive = device.firmware.receive

    def recording(data: bytes) -> None:
        for frame in decoder.feed(data):
            if frame.type == p.MsgType.CMD_OTA_DATA:
                offsets.append(int.from_bytes(frame.payload[:4], "little"))
        decoder.reset()  # the firmware sees whole writes; a lost tail must not stick
        receive(data)

    device.firmware.receive = recording  # type: ignore[method-assign]
    return offsets


# --- updates that finish ------------------------------------------------------------------


async def test_clean_update_of_the_field_image_with_a_30s_erase(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, looptime: float
) -> None:
    sim_device.set_faults("slow-erase:30s")
    result = await ota(FIELD_IMAGE).run()
    assert_flashed(sim_device, FIELD_IMAGE, result)
    assert result.phase_s[State.WAITING_READY.value] >= 30.0
    assert result.bytes_resent == 0 and result.reconnects == 0 and result.rewinds == 0
    assert result.connects == 2  # the second one checks the new image after the reset
    assert result.resumes == 0 and result.restarts == 0
    # READY means "send at full rate now" (P17): no stabilisation pause by default.
    assert State.STABILISING.value not in result.phase_s


async def test_field_failure_naive_client_fails_and_engine_finishes(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, smartball
) -> None:
    plan = "slow-erase:30s,drop@erase:50%"
    sim_device.set_faults(plan)
    with pytest.raises(BleakError, match="Service Discovery has not been performed yet"):
        await naive_flash(smartball.backend, sim_device.address, FIELD_IMAGE.data)
    assert sim_device.firmware.active.crc32 != FIELD_IMAGE.crc32

    sim_device.set_faults(plan)
    result = await ota(FIELD_IMAGE).run()
    assert_flashed(sim_device, FIELD_IMAGE, result)
    assert EventKind.LINK_LOST in event_kinds(result)


async def test_naive_client_succeeds_without_faults(smartball, sim_device: SimDevice) -> None:
    """Control for the test above: the naive flow fails because of the drop, not the sim."""
    image = FirmwareImage(random.Random(1).randbytes(20_000))
    await naive_flash(smartball.backend, sim_device.address, image.data)
    for _ in range(100):
        if sim_device.firmware.bootloader.pending_image is None and sim_device.booted:
            break
        await asyncio.sleep(0.1)
    assert sim_device.firmware.active.crc32 == image.crc32


async def test_resume_mid_transfer_at_the_device_offset(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("drop@offset:60000")
    offsets = received_data_offsets(sim_device)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.resumes == 1 and result.restarts == 0
    resume = next(e for e in result.events if e.kind is EventKind.RESUME)
    resumed_at = int(resume.detail.split()[2])
    assert resumed_at >= 60_000
    # The device received the first pass up to the drop, then the second from exactly its
    # own offset, in order: nothing skipped, nothing it already had.
    second = offsets.index(resumed_at)
    first_pass, resumed = offsets[:second], offsets[second:]
    assert first_pass == list(range(0, resumed_at, CHUNK))
    assert resumed == list(range(resumed_at, firmware_image.size, CHUNK))
    assert 0 <= result.bytes_resent <= WINDOW * CHUNK


async def test_resume_during_erase_waits_for_ready_without_erasing_again(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("slow-erase:20s,drop@erase:40%")
    starts = commands_received(sim_device, p.MsgType.CMD_OTA_START)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.restarts == 0
    assert starts() == 1
    # One 20 s erase, not two: the reconnect found the device still erasing.
    assert result.duration_s < 40


async def test_restart_after_a_reboot_that_lost_the_session(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("reboot@offset:50000")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.restarts == 1
    assert EventKind.RESTART in event_kinds(result)


async def test_device_that_vanishes_for_20s_is_waited_for(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("adv-pause:20s@offset:50000")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.phase_s[State.SCANNING.value] >= 20.0
    assert result.resumes == 1


async def test_a_flaky_link_that_progresses_each_time_finishes(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    drops = ",".join(f"drop@offset:{n}" for n in range(10_000, 130_000, 10_000))
    sim_device.set_faults(drops)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.resumes == 12 > OtaSettings().limits.max_attempts_without_progress
    assert result.bytes_resent <= result.resumes * WINDOW * CHUNK


async def test_flaky_profile_finishes_and_resends_at_most_a_window_per_drop(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("flaky")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    drops = sum(1 for r in sim_device.fault_log if r.detail.startswith("flaky"))
    assert drops >= 2, "1 % per chunk over ~560 chunks and ~33 pages should drop a few times"
    assert result.reconnects == drops
    assert result.bytes_resent <= drops * WINDOW * CHUNK


async def test_lost_ready_ends_the_wait_by_silence_timeout_and_resumes(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("lose:MSG_OTA_READY")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    failure = next(e for e in result.events if e.kind is EventKind.LINK_FAILURE)
    timeout = OtaSettings().erase_silence_timeout_s
    assert f"no MSG_OTA_READY or erase progress after CMD_OTA_START within {timeout:g} s" in (
        failure.detail
    )


async def test_a_device_that_repeats_itself_during_the_erase_is_still_silent_about_it(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    """The erase-silence timeout restarts only when the erase gets further: the same
    PROGRESS again and again (and stale ACKs) do not keep the wait alive."""
    sim_device.set_faults("lose:MSG_OTA_READY")
    loop = asyncio.get_running_loop()

    def chatter() -> None:
        sim_device._notify(p.encode(p.MsgOtaProgress(p.OtaPhase.ERASE, 4096, 135168)))
        sim_device._notify(p.encode(p.MsgOtaAck(232)))
        loop.call_later(0.5, chatter)

    loop.call_later(0.5, chatter)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    failure = next(e for e in result.events if e.kind is EventKind.LINK_FAILURE)
    assert "no MSG_OTA_READY or erase progress after CMD_OTA_START within 5 s" in failure.detail


async def test_lost_write_is_rewound_from_the_device_status(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("write-drop@offset:40000")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert EventKind.REWIND in event_kinds(result)
    assert result.rewinds >= 1
    assert 0 < result.bytes_resent <= WINDOW * CHUNK
    assert result.reconnects == 0


async def test_lost_ack_is_recovered_by_asking_for_status(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    # A lost ACK mid-stream is absorbed by the next one (half a window later); the final
    # ACK has no successor, so losing it stalls the pipe until the ACK timeout. The fault
    # is armed when the last chunk arrives; its ACK leaves once the flash has written it.
    sim_device.set_faults(f"lose:MSG_OTA_ACK@offset:{firmware_image.size}")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert EventKind.ACK_TIMEOUT in event_kinds(result)
    assert result.reconnects == 0


async def test_two_lost_acks_with_a_full_window_in_flight_do_not_deadlock_the_credit(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    """P6: credit comes from ACKs only. With both ACKs of a window lost the host holds a
    full window and may send nothing; its STATUS gets the device to ACK (or, from a device
    before P6, a second STATUS with the same offset is taken as one)."""
    sim_device.set_faults("lose:2@offset:40000")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    # One ACK timeout: the device answers the STATUS and then ACKs (P6); a device before
    # P6 would cost two (the second STATUS taken as credit, see window.py).
    assert event_kinds(result).count(EventKind.ACK_TIMEOUT) == 1
    assert result.reconnects == 0 and result.bytes_resent == 0


@pytest.mark.parametrize("fault", ["race:1.5s", "stale-cache"])
async def test_connect_without_nus_is_retried(
    fault: str, ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults(fault)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert EventKind.SERVICES_MISSING in event_kinds(result)


async def test_clearing_the_cache_first_avoids_a_stale_gatt_database(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("stale-cache")
    result = await ota(settings=OtaSettings(clear_cache=True)).run()
    assert_flashed(sim_device, firmware_image, result)
    assert EventKind.CACHE_CLEARED in event_kinds(result)
    assert EventKind.SERVICES_MISSING not in event_kinds(result)


async def test_a_cache_clear_that_fails_with_an_os_error_is_a_warning_not_an_escape(
    firmware_image: FirmwareImage,
) -> None:
    """OtaEngine.run() never raises: no system D-Bus (FileNotFoundError) while clearing the
    cache is a warning, and the update goes on."""
    target = make_sim_target()

    async def no_dbus(address: str) -> bool:
        raise FileNotFoundError(2, "No such file or directory", "/run/dbus/system_bus_socket")

    backend = replace(target.backend, forget=no_dbus)
    settings = OtaSettings(clear_cache=True)
    result = await OtaEngine(firmware_image, backend, settings=settings).run()
    assert_flashed(target.sim, firmware_image, result)  # type: ignore[arg-type]
    warning = next(e for e in result.events if e.kind is EventKind.WARNING)
    assert "could not clear the cache" in warning.detail and "FileNotFoundError" in warning.detail


async def test_an_os_error_from_the_stack_mid_transfer_is_a_link_failure_not_an_escape(
    ota: Callable[..., OtaEngine],
    sim_device: SimDevice,
    firmware_image: FirmwareImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run() never raises for the stack's trouble, an OS error the link does not know
    included (a D-Bus socket refused, say): it recovers like from any link failure."""
    write = sim_device.write
    failed: list[int] = []

    async def refusing(link: object, data: bytes) -> None:
        if len(data) > 1 and data[1] == p.MsgType.CMD_OTA_DATA and not failed:
            failed.append(1)
            raise PermissionError(13, "Permission denied")
        await write(link, data)  # type: ignore[arg-type]

    monkeypatch.setattr(sim_device, "write", refusing)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    failure = next(e for e in result.events if e.kind is EventKind.LINK_FAILURE)
    assert "PermissionError" in failure.detail and result.reconnects == 1


async def test_connect_failures_are_retried(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("connect-fail:3")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert sum(1 for r in sim_device.fault_log if r.fault == "connect-fail") == 3


async def test_a_radio_faster_than_the_flash_overflows_a_small_buffer_and_still_finishes(
    firmware_image: FirmwareImage,
) -> None:
    """E3: a device whose buffer is smaller than the window it announced refuses DATA; the
    host rewinds, counts it, and halves its own window instead of re-sending a whole one."""
    from smartball_sim.device import RadioTimings
    from smartball_sim.firmware.model import FlashTimings
    from smartball_sim.radio.profiles import RadioProfile

    fast_radio = RadioTimings(link=RadioProfile(connection_interval_s=0.0075, packets_per_event=6))
    small_buffer = FlashTimings(rx_buffer_chunks=2)
    target = make_sim_target(radio=fast_radio, flash=small_buffer)
    assert target.sim is not None
    result = await OtaEngine(firmware_image, target.backend).run()
    assert_flashed(target.sim, firmware_image, result)
    fw = target.sim.firmware
    assert fw.data.dropped_full > 0, "the buffer never overflowed"
    assert result.rewinds == event_kinds(result).count(EventKind.REWIND) > 0
    assert fw.data.rejected_behind == 0
    # Paced: without the halving this device gets 4 images' worth re-sent (window.py).
    assert result.bytes_resent < 3 * firmware_image.size, result.bytes_resent


async def test_a_device_that_refuses_on_a_link_without_airtime_is_paced(
    firmware_image: FirmwareImage,
) -> None:
    """A 2-chunk buffer under a window of 16 on a link whose connection events are 1 µs
    apart (as an in-process stack without airtime): refused bursts, some refused without a
    word (the device rate-limits its STATUS replies). The pause after a repeated refusal
    and the short ACK wait after a refusal keep it going: 74 s of (virtual) transfer,
    against 141 s without the pause and 646 s without the short wait."""
    from smartball_sim.device import RadioTimings
    from smartball_sim.firmware.model import FlashTimings
    from smartball_sim.radio.profiles import RadioProfile

    no_airtime = RadioTimings(
        link=RadioProfile(connection_interval_s=0.000001, packets_per_event=100)
    )
    target = make_sim_target(radio=no_airtime, flash=FlashTimings(rx_buffer_chunks=2))
    assert target.sim is not None
    result = await OtaEngine(firmware_image, target.backend).run()
    assert_flashed(target.sim, firmware_image, result)
    assert result.reconnects == 0
    assert result.phase_s[State.TRANSFERRING.value] < 100

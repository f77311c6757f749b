"""The OTA engine against the simulator's faults: every field failure, survived or failed cleanly.

Runs on looptime's virtual clock (the plugin marks asyncio tests on --device=sim), so a
30 s erase or a 20 s advertising pause costs no wall time and timings are exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from bleak.exc import BleakError

from hil_tests.naive_client import naive_flash
from pytest_smartball import protocol as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import FailureKind, OtaEngine, OtaResult, OtaSettings, State
from smartball_sim.device import SimDevice

pytestmark = [pytest.mark.asyncio, pytest.mark.sim_only]

FIELD_IMAGE = FirmwareImage(random.Random(323194).randbytes(323_194), "field-323194.bin")
CHUNK = 232  # MTU 247: 244-byte writes minus 10 bytes of DATA framing, in whole words
WINDOW = 16


def assert_flashed(device: SimDevice, image: FirmwareImage, result: OtaResult) -> None:
    assert result.success, result.error
    assert device.firmware.active.data == image.data
    assert result.info_after is not None
    assert result.info_after.active_image_crc32 == image.crc32


def assert_untouched(device: SimDevice, baseline_crc: int, result: OtaResult) -> None:
    assert not result.success
    assert device.firmware.active.crc32 == baseline_crc, "old image must stay active"
    assert device.firmware.pending_image is None, "no partial image may be marked complete"
    assert device.firmware.state != p.OtaState.COMPLETE


def event_kinds(result: OtaResult) -> list[str]:
    return [e.kind for e in result.events]


async def test_clean_update_of_the_field_image_with_a_30s_erase(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, looptime: float
) -> None:
    sim_device.set_faults("slow-erase:30s")
    result = await ota(FIELD_IMAGE).run()
    assert_flashed(sim_device, FIELD_IMAGE, result)
    assert result.phase_s[State.WAITING_READY.value] >= 30.0
    assert result.bytes_resent == 0 and result.reconnects == 0
    assert result.connects == 2  # the second one checks the new image after the reset
    assert result.resumes == 0 and result.restarts == 0


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
    assert "link-lost" in event_kinds(result)


async def test_naive_client_succeeds_without_faults(smartball, sim_device: SimDevice) -> None:
    """Control for the test above: the naive flow fails because of the drop, not the sim."""
    image = FirmwareImage(random.Random(1).randbytes(20_000))
    await naive_flash(smartball.backend, sim_device.address, image.data)
    await _until_rebooted(sim_device)
    assert sim_device.firmware.active.crc32 == image.crc32


async def _until_rebooted(device: SimDevice) -> None:
    import asyncio

    for _ in range(100):
        if device.firmware.pending_image is None and device.booted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the device did not reset into the new image within 10 s")


async def test_resume_mid_transfer_at_the_device_offset(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("drop@offset:60000")
    engine = ota()
    result = await engine.run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.resumes == 1 and result.restarts == 0
    resume = next(e for e in result.events if e.kind == "resume")
    resumed_at = int(resume.detail.split()[2])
    assert resumed_at >= 60_000
    offsets = engine.data_offsets_sent
    # The first pass was cut by the drop; the second starts exactly at the device's offset
    # and goes on in order: nothing is skipped, and only what was in flight is sent again.
    second = offsets.index(resumed_at, offsets.index(resumed_at) + 1)
    first_pass, resumed = offsets[:second], offsets[second:]
    assert resumed == list(range(resumed_at, firmware_image.size, CHUNK))
    high_water = min(max(first_pass) + CHUNK, firmware_image.size)
    assert result.bytes_resent == high_water - resumed_at
    assert 0 < result.bytes_resent <= WINDOW * CHUNK


async def test_resume_during_erase_waits_for_ready_without_erasing_again(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("slow-erase:20s,drop@erase:40%")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.restarts == 0
    assert sim_device.firmware.commands_seen[p.MsgType.CMD_OTA_START] == 1
    # One 20 s erase, not two: the reconnect found the device still erasing.
    assert result.duration_s < 40


async def test_restart_after_a_reboot_that_lost_the_session(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("reboot@offset:50000")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.restarts == 1
    assert "restart" in event_kinds(result)


async def test_device_that_vanishes_for_20s_is_waited_for(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("adv-pause:20s@offset:50000")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.phase_s[State.SCANNING.value] >= 20.0
    assert result.resumes == 1


async def test_retries_exhausted_is_a_clean_failure_with_the_old_image_active(
    ota: Callable[..., OtaEngine], sim_device: SimDevice
) -> None:
    baseline = sim_device.firmware.active.crc32
    sim_device.set_faults("drop@offset:30000,connect-timeout:1000@offset:30000")
    result = await ota().run()
    assert_untouched(sim_device, baseline, result)
    assert result.failure is FailureKind.LINK
    assert "without progress" in result.error and "old image" in result.error
    assert result.reconnects == 0  # it never got back in
    assert event_kinds(result).count("recover") == OtaSettings().max_attempts_without_progress


async def test_a_flaky_link_that_progresses_each_time_finishes(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    drops = ",".join(f"drop@offset:{n}" for n in range(10_000, 130_000, 10_000))
    sim_device.set_faults(drops)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.resumes == 12 > OtaSettings().max_attempts_without_progress
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
    assert any("no message from the device" in e.detail for e in result.events)


async def test_lost_write_is_rewound_from_the_device_status(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("write-drop@offset:40000")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert "rewind" in event_kinds(result)
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
    assert "ack-timeout" in event_kinds(result)


@pytest.mark.parametrize("fault", ["race:1.5s", "stale-cache"])
async def test_connect_without_nus_is_retried(
    fault: str, ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults(fault)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert "services-missing" in event_kinds(result)


async def test_clearing_the_cache_first_avoids_a_stale_gatt_database(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("stale-cache")
    result = await ota(settings=OtaSettings(clear_cache=True)).run()
    assert_flashed(sim_device, firmware_image, result)
    assert "cache-cleared" in event_kinds(result)
    assert "services-missing" not in event_kinds(result)


async def test_connect_failures_are_retried(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("connect-fail:3")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert sum(1 for r in sim_device.fault_log if r.fault == "connect-fail") == 3


async def test_image_too_large_fails_before_anything_is_sent(
    ota: Callable[..., OtaEngine], sim_device: SimDevice
) -> None:
    big = FirmwareImage(bytes(sim_device.firmware.staging_capacity + 1), "big.bin")
    result = await ota(big).run()
    assert result.failure is FailureKind.BAD_INPUT
    assert "big.bin" in result.error and "staging" in result.error
    assert p.MsgType.CMD_OTA_START not in sim_device.firmware.commands_seen


class _WrongCrcImage(FirmwareImage):
    @property
    def crc32(self) -> int:
        return p.crc32(self.data) ^ 0xFFFF


async def test_device_refusing_the_image_is_reported_and_the_old_image_stays(
    ota: Callable[..., OtaEngine], sim_device: SimDevice
) -> None:
    baseline = sim_device.firmware.active.crc32
    result = await ota(_WrongCrcImage(random.Random(3).randbytes(30_000), "bad.bin")).run()
    assert_untouched(sim_device, baseline, result)
    assert result.failure is FailureKind.REFUSED
    assert "CRC_MISMATCH" in result.error


async def test_device_that_never_answers_fails_within_bounded_time(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, looptime: float
) -> None:
    baseline = sim_device.firmware.active.crc32
    sim_device.set_faults("lose:100000")
    result = await ota().run()
    assert_untouched(sim_device, baseline, result)
    assert result.failure is FailureKind.LINK
    assert result.duration_s < 300


async def test_a_radio_faster_than_the_flash_overflows_a_small_buffer_and_still_finishes(
    firmware_image: FirmwareImage,
) -> None:
    from pytest_smartball.targets.simulated import make_sim_target
    from smartball_sim.device import RadioTimings
    from smartball_sim.firmware import FlashTimings
    from smartball_sim.radio import RadioProfile

    fast_radio = RadioTimings(link=RadioProfile(connection_interval_s=0.0075, packets_per_event=6))
    small_buffer = FlashTimings(rx_buffer_chunks=2)
    target = make_sim_target(radio=fast_radio, flash=small_buffer)
    result = await OtaEngine(firmware_image, target.backend).run()
    assert_flashed(target.sim, firmware_image, result)
    assert target.sim.firmware.data_dropped_full > 0, "the buffer never overflowed"
    assert "rewind" in event_kinds(result) or "ack-timeout" in event_kinds(result)
    assert target.sim.firmware.data_rejected_behind == 0


async def test_cache_clear_for_a_device_that_is_not_there_is_a_clean_not_found() -> None:
    from pytest_smartball.targets.simulated import make_sim_target

    target = make_sim_target()
    image = FirmwareImage(b"\x01" * 1000, "x.bin")
    settings = OtaSettings(clear_cache=True)
    engine = OtaEngine(image, target.backend, name="Other", settings=settings)
    result = await engine.run()  # used to raise DeviceNotFound out of run()
    assert result.failure is FailureKind.NOT_FOUND
    assert "Other" in result.error

"""The OTA engine against the simulator's faults: every field failure, survived or failed cleanly,
and every outcome told as it is.

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
from pytest_smartball.link import NusLink
from pytest_smartball.ota import (
    EventKind,
    FailureKind,
    Limits,
    OtaEngine,
    OtaResult,
    OtaSettings,
    Outcome,
    State,
)
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.device import SimDevice
from smartball_sim.radio.airlog import Packet, Sender
from tests.naive_client import naive_flash

#: These tests are about the transfer, its faults and its outcomes: they flash unsigned
#: images onto a v1 ball; a signed-only ball's update is tests/client/test_ota_signed.py's.
pytestmark = [pytest.mark.asyncio, pytest.mark.sim_only, pytest.mark.sim_trust("none")]


FIELD_IMAGE = FirmwareImage(random.Random(323194).randbytes(323_194), "field-323194.bin")
CHUNK = 232  # MTU 247: 244-byte writes minus 10 bytes of DATA framing, down to whole words
WINDOW = 16


def assert_flashed(device: SimDevice, image: FirmwareImage, result: OtaResult) -> None:
    assert result.success, result.error
    assert result.outcome is Outcome.SUCCEEDED and result.failure is None
    assert device.firmware.active.data == image.data
    assert result.info_after is not None
    assert result.info_after.active_image_crc32 == image.crc32


def assert_untouched(device: SimDevice, baseline_crc: int, result: OtaResult) -> None:
    assert not result.success and result.outcome is Outcome.FAILED
    assert "keeps its old image" in result.error
    assert device.firmware.active.crc32 == baseline_crc, "old image must stay active"
    assert device.firmware.pending_image is None, "no partial image may be marked complete"
    assert device.firmware.state != p.OtaState.COMPLETE


def assert_unconfirmed_and_new_image_runs(
    device: SimDevice, image: FirmwareImage, result: OtaResult
) -> None:
    assert result.outcome is Outcome.UNCONFIRMED, result.error
    assert not result.success and result.failure is None
    assert "keeps its old image" not in result.error
    assert device.firmware.active.data == image.data  # what the engine could not see


def event_kinds(result: OtaResult) -> list[EventKind]:
    return [e.kind for e in result.events]


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


def commands_received(device: SimDevice, msg_type: p.MsgType) -> Callable[[], int]:
    """How many commands of ``msg_type`` the device's firmware receives from now on."""
    seen = [0]
    receive = device.firmware.receive

    def counting(data: bytes) -> None:
        if len(data) > 1 and data[0] == p.SOF and data[1] == msg_type:
            seen[0] += 1
        receive(data)

    device.firmware.receive = counting  # type: ignore[method-assign]
    return lambda: seen[0]


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
        if sim_device.firmware.pending_image is None and sim_device.booted:
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
    assert fw.data_dropped_full > 0, "the buffer never overflowed"
    assert result.rewinds == event_kinds(result).count(EventKind.REWIND) > 0
    assert fw.data_rejected_behind == 0
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


# --- updates that cannot finish: told as they are -------------------------------------------


async def test_retries_exhausted_is_a_clean_failure_with_the_old_image_active(
    ota: Callable[..., OtaEngine], sim_device: SimDevice
) -> None:
    baseline = sim_device.firmware.active.crc32
    sim_device.set_faults("drop@offset:30000,connect-timeout:1000@offset:30000")
    result = await ota().run()
    assert_untouched(sim_device, baseline, result)
    assert result.failure is FailureKind.LINK
    assert "5 attempts in a row without progress (the limit is 5" in result.error
    assert "it resumes where the device stopped" in result.error
    assert result.reconnects == 0  # it never got back in
    assert event_kinds(result).count(EventKind.RECOVER) == (
        OtaSettings().limits.max_attempts_without_progress
    )


async def test_the_give_up_names_the_offset_the_device_said_last(
    ota: Callable[..., OtaEngine],
    sim_device: SimDevice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """E4: the device's own last word on where it is (here an ACK: every later message is
    corrupted), named as such, not a guess at where the device is."""
    heard: list[p.DeviceMessage] = []
    receive = NusLink.receive

    async def recording(self: NusLink, timeout: float) -> p.DeviceMessage:
        msg = await receive(self, timeout)
        heard.append(msg)
        return msg

    monkeypatch.setattr(NusLink, "receive", recording)
    sim_device.set_faults("corrupt:20@offset:100000")
    result = await ota(FIELD_IMAGE).run()
    assert result.outcome is Outcome.FAILED
    last = [m for m in heard if isinstance(m, p.MsgOtaAck | p.MsgOtaStatus)][-1]
    assert isinstance(last, p.MsgOtaAck)
    said = f"the device last reported offset {last.next_expected_offset} of 323194 (MSG_OTA_ACK)"
    assert said in result.error
    assert sim_device.firmware.status().next_expected_offset > 100_000  # it got further


async def test_image_too_large_fails_before_anything_is_sent(
    ota: Callable[..., OtaEngine], sim_device: SimDevice
) -> None:
    big = FirmwareImage(bytes(sim_device.firmware.staging_capacity + 1), "big.bin")
    starts = commands_received(sim_device, p.MsgType.CMD_OTA_START)
    result = await ota(big).run()
    assert result.failure is FailureKind.BAD_INPUT
    assert "big.bin" in result.error and "staging" in result.error
    assert starts() == 0


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
    assert "no MSG_INFO reply to CMD_INFO within" in result.error  # E4: the reply named
    assert result.duration_s < 300


async def test_cache_clear_for_a_device_that_is_not_there_is_a_clean_not_found() -> None:
    target = make_sim_target()
    image = FirmwareImage(b"\x01" * 1000, "x.bin")
    settings = OtaSettings(clear_cache=True)
    engine = OtaEngine(image, target.backend, name="Other", settings=settings)
    result = await engine.run()  # used to raise DeviceNotFound out of run()
    assert result.failure is FailureKind.NOT_FOUND
    assert "Other" in result.error


# --- E1: the third outcome ---------------------------------------------------------------------

#: Plans that deliver and verify the whole image and then keep the device out of reach:
#: the device runs the new image, the engine cannot see it (issue 10's three).
UNREACHABLE_AFTER_THE_SWITCH = [
    "race:600s@connect:2",
    "adv-pause:1000s@cmd:CMD_OTA_FINISH",
    "lose:MSG_OTA_DONE,connect-timeout:50@connect:2",
]


@pytest.mark.parametrize("plan", UNREACHABLE_AFTER_THE_SWITCH)
async def test_a_switch_that_cannot_be_confirmed_is_unconfirmed_not_failed(
    plan: str,
    ota: Callable[..., OtaEngine],
    sim_device: SimDevice,
    firmware_image: FirmwareImage,
    looptime: float,
) -> None:
    sim_device.set_faults(plan)
    result = await ota().run()
    assert_unconfirmed_and_new_image_runs(sim_device, firmware_image, result)
    assert "check with `smartball-ota info`" in result.error
    assert result.duration_s < 600, "bounded by the budgets, not by the fault"


async def test_a_drop_at_the_last_chunk_is_finished_without_a_resume_start(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    """Issue 10: with every byte at the device, the reconnect sends FINISH, not a START
    (which here would reset the device and lose the session)."""
    size = firmware_image.size
    sim_device.set_faults(f"drop@offset:{size},reboot@cmd:CMD_OTA_START#2")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    assert result.restarts == 0 and result.resumes == 1
    assert result.bytes_resent <= WINDOW * CHUNK
    assert not [r for r in sim_device.fault_log if r.fault == "reboot"]


async def test_a_lost_done_is_confirmed_by_info_after_the_reset(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    """Control for the third outcome: reachable after the reset, a lost DONE succeeds."""
    sim_device.set_faults("lose:MSG_OTA_DONE")
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)


# --- E2: a device that answers DONE and never resets ---------------------------------------------


async def test_a_device_that_never_resets_after_done_is_given_up_on_in_bounded_time(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, firmware_image: FirmwareImage
) -> None:
    sim_device.set_faults("no-reset")
    result = await ota().run()
    assert result.outcome is Outcome.UNCONFIRMED and result.failure is None
    assert "did not reset within 2 waits of 5 s" in result.error
    assert "It switches at its next reset: power-cycle it" in result.error
    assert "keeps its old image" not in result.error
    assert event_kinds(result).count(EventKind.NO_RESET) == OtaSettings().limits.max_reset_waits
    assert result.duration_s < 30
    # What the sentence says is what the device holds: the old image runs, the new one waits.
    assert sim_device.firmware.state == p.OtaState.COMPLETE
    assert sim_device.firmware.active.data != firmware_image.data
    sim_device.reboot()  # the power cycle the sentence asks for
    await asyncio.sleep(60)
    assert sim_device.firmware.active.data == firmware_image.data


async def flash_another_image_that_stays_pending(smartball, sim_device: SimDevice) -> int:
    """The device verifies another image and commits the switch, but does not reset (yet):
    STATUS COMPLETE for a session that is not this update's. Its CRC-32."""
    other = random.Random(5).randbytes(12_000)
    sim_device.set_faults("no-reset")
    await naive_flash(smartball.backend, sim_device.address, other)  # returns at DONE
    assert sim_device.firmware.state == p.OtaState.COMPLETE
    return p.crc32(other)


async def test_a_committed_switch_to_another_image_is_waited_out_before_start(
    ota: Callable[..., OtaEngine],
    sim_device: SimDevice,
    smartball,
    firmware_image: FirmwareImage,
) -> None:
    """P11: STATUS COMPLETE for another image's session → wait for that reset (START would
    be refused under a committed switch), then update. Here the device is power-cycled
    while the engine waits."""
    await flash_another_image_that_stays_pending(smartball, sim_device)
    starts = received_starts(sim_device)
    asyncio.get_running_loop().call_later(3.0, sim_device.reboot)
    result = await ota().run()
    assert_flashed(sim_device, firmware_image, result)
    status = next(e for e in result.events if e.kind is EventKind.STATUS)
    assert status.detail.startswith("complete") and "another" in status.detail
    assert len(starts) == 1 and result.restarts == 0  # no START under the committed switch


async def test_a_committed_switch_to_another_image_that_never_happens_is_given_up_on(
    ota: Callable[..., OtaEngine], sim_device: SimDevice, smartball
) -> None:
    other_crc = await flash_another_image_that_stays_pending(smartball, sim_device)
    starts = received_starts(sim_device)
    result = await ota().run()
    assert result.outcome is Outcome.FAILED and result.failure is FailureKind.NO_RESET
    assert f"another image (crc32 {other_crc:08x})" in result.error
    assert "Power-cycle it" in result.error
    assert starts == []


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


def received_starts(device: SimDevice) -> list[p.CmdOtaStart]:
    starts: list[p.CmdOtaStart] = []
    receive = device.firmware.receive

    def recording(data: bytes) -> None:
        if len(data) > 1 and data[1] == p.MsgType.CMD_OTA_START:
            msg = p.decode(data)
            assert isinstance(msg, p.CmdOtaStart)
            starts.append(msg)
        receive(data)

    device.firmware.receive = recording  # type: ignore[method-assign]
    return starts

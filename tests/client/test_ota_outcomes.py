"""The OTA engine's updates that cannot finish, each told as it is: a clean failure with the
old image kept, the offset the device said last (E4), the third outcome, unconfirmed, when
the switch cannot be seen (E1), and a device that never resets after DONE or under another
image's committed switch (E2, P11), beside the controls that do finish.

Runs on looptime's virtual clock (the plugin marks asyncio tests on --device=sim), so a
30 s erase or a 20 s advertising pause costs no wall time and timings are exact. What was
sent is observed at the device (what its firmware received), not asked of the engine.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.ota import EventKind, FailureKind, OtaEngine, OtaResult, OtaSettings, Outcome
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.device import SimDevice
from tests.naive_client import naive_flash

from .ota_checks import (
    CHUNK,
    FIELD_IMAGE,
    WINDOW,
    assert_flashed,
    commands_received,
    event_kinds,
    received_starts,
)

#: These tests are about the transfer, its faults and its outcomes: they flash unsigned
#: images onto a v1 ball; a signed-only ball's update is tests/client/test_ota_signed.py's.
pytestmark = [pytest.mark.asyncio, pytest.mark.sim_only, pytest.mark.sim_trust("none")]


def assert_untouched(device: SimDevice, baseline_crc: int, result: OtaResult) -> None:
    assert not result.success and result.outcome is Outcome.FAILED
    assert "keeps its old image" in result.error
    assert device.firmware.active.crc32 == baseline_crc, "old image must stay active"
    assert device.firmware.bootloader.pending_image is None, (
        "no partial image may be marked complete"
    )
    assert device.firmware.state != p.OtaState.COMPLETE


def assert_unconfirmed_and_new_image_runs(
    device: SimDevice, image: FirmwareImage, result: OtaResult
) -> None:
    assert result.outcome is Outcome.UNCONFIRMED, result.error
    assert not result.success and result.failure is None
    assert "keeps its old image" not in result.error
    assert device.firmware.active.data == image.data  # what the engine could not see


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

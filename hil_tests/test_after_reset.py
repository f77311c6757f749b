"""Consequences after the reset (issue 20): every test here leaves the device in COMPLETE,
after an ABORT, after an error or in the middle of a session, resets it (its own reset after
MSG_OTA_DONE, or the lab's power cut) and then checks what it runs, what INFO and STATUS
say and how soon it advertised again; and the timing obligations at the sizes where they
are hardest: the verify of an image filling the staging area, advertising again after a
power cut with the staging area nearly full.

Random images are never activated on hardware: their CRC is wrong on purpose or their
session is cut; the test that activates an image over the raw link uses the release image
(``--firmware``), which the plugin replaces with the baseline afterwards. Tests that need a
power cut use the ``power_cycle`` fixture (on a bench: the lab's
``pytest_smartball_power_cycle`` hook, else they skip saying so); tests marked ``faults``
need the simulator's fault injection.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.options import SmartBallOptions
from pytest_smartball.ota import OtaEngine
from pytest_smartball.ota.states import FailureKind
from pytest_smartball.targets import Target

from . import helpers as h
from .helpers import RADIO_MARGIN_S

pytestmark = pytest.mark.asyncio

PowerCycle = Callable[[], Awaitable[None]]
TIMING = contract.timing()
IDLE_STATUS = p.MsgOtaStatus(p.OtaState.IDLE, 0, 0, 0)
#: Seconds a plain reset may take to advertise again, and one that activates an image.
PLAIN_RESET_S = TIMING.reset_to_advertising_max_s(activation=False)
ACTIVATION_RESET_S = TIMING.reset_to_advertising_max_s(activation=True)
#: Three pages, a partial last word (its last chunk is not whole words).
SMALL = random.Random(21).randbytes(9_002)
#: The largest chunk READY grants: 510-byte frames, longer than one write at MTU 247.
LARGEST_CHUNK = p.MAX_DATA_CHUNK


def packed(frames: list[bytes], max_write: int) -> list[bytes]:
    """Frames back to back, cut into full writes: frames straddle writes."""
    return h.frames_to_writes(b"".join(frames), [], max_write)


async def stream(nus: NusLink, image: bytes, crc32: int, chunk_size: int, end: int) -> None:
    """START, then ``image[:end]`` in the largest chunks ``chunk_size`` gets, packed into
    full writes, every ACK interval checked."""
    ready = await h.open_session(nus, image, crc32, chunk_size, TIMING)
    await h.send_in_ack_intervals(
        nus, image, crc32, ready, [ready.max_chunk], lambda f: packed(f, nus.max_write), end=end
    )


async def expect_state_after_reset(
    target: Target, limit_s: float, info: p.MsgInfo, why: str
) -> None:
    """Once the device has reset: it advertises within ``limit_s``, INFO says ``info`` and
    STATUS says IDLE without a session (a reset ends every session, 7.7)."""
    link, took = await h.back_after_reset(target, limit_s)
    async with link:
        assert took <= limit_s + RADIO_MARGIN_S, (
            f"{why}: the device advertised {took:.2f} s after the reset, the limit is "
            f"{limit_s:g} s (reset_to_advertising_max_s)"
        )
        now = await link.request(p.CmdInfo(), (p.MsgInfo,))
        assert now == info, f"{why}: after the reset INFO says {now}, expected {info}"
        status = await link.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
        assert status == IDLE_STATUS, f"{why}: after the reset STATUS says {status}"


def skip_in_real_time_emulation(options: SmartBallOptions) -> None:
    if options.device == "real" and options.bluez in ("emulated", "vhci"):
        pytest.skip(
            "a whole staging area (480 KB, 120 pages to erase) through the simulator in real "
            "time; the --device=sim stage measures the same model on virtual time and a bench "
            "measures the board"
        )


# --- after MSG_OTA_DONE: the device's own reset -------------------------------------------------


async def test_the_largest_chunks_packed_into_writes_activate_the_release_image(
    nus: NusLink, smartball: Target, firmware_image: FirmwareImage
) -> None:
    """The release image in the largest chunks READY grants, its frames packed back to back
    across full writes: each ACK interval acknowledged, DONE with the image's CRC, the link
    ended within done_to_disconnect_max_s, advertising again within the activation's limit,
    and then INFO shows the new image (its size and CRC) and STATUS is IDLE."""
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(before, p.MsgInfo)
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    image = firmware_image.data
    await stream(nus, image, firmware_image.crc32, LARGEST_CHUNK, len(image))
    await nus.send(p.CmdOtaFinish())
    done = await nus.receive(TIMING.verify_max_s(len(image)) + RADIO_MARGIN_S)
    assert done == p.MsgOtaDone(firmware_image.crc32), done
    async with asyncio.timeout(TIMING.done_to_disconnect_max_s + RADIO_MARGIN_S):
        await nus.lost.wait()
    link, took = await h.back_after_reset(smartball, ACTIVATION_RESET_S)
    async with link:
        assert took <= ACTIVATION_RESET_S + RADIO_MARGIN_S, took
        info = await link.request(p.CmdInfo(), (p.MsgInfo,))
        assert isinstance(info, p.MsgInfo)
        assert (info.active_image_size, info.active_image_crc32) == (
            firmware_image.size,
            firmware_image.crc32,
        ), f"after DONE and the reset the device runs {info}, not the image it verified"
        assert (info.protocol_version, info.staging_capacity) == (
            before.protocol_version,
            before.staging_capacity,
        ), info
        assert await link.request(p.CmdOtaStatus(), (p.MsgOtaStatus,)) == IDLE_STATUS


@pytest.mark.faults("no-reset")
async def test_abort_in_complete_then_a_reset_runs_the_verified_image(
    nus: NusLink, smartball: Target, power_cycle: PowerCycle
) -> None:
    """ABORT in COMPLETE cancels nothing (9, 7.2): STATUS still says COMPLETE with the
    session's fields, INFO the old image until the reset, and after the reset the device
    runs the image it verified. The simulator holds COMPLETE (no-reset fault); a board
    cannot be held there, so this runs on the simulator only."""
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    crc = p.crc32(SMALL)
    await stream(nus, SMALL, crc, LARGEST_CHUNK, len(SMALL))
    await nus.send(p.CmdOtaFinish())
    done = await nus.receive(TIMING.verify_max_s(len(SMALL)) + RADIO_MARGIN_S)
    assert done == p.MsgOtaDone(crc), done
    complete = p.MsgOtaStatus(p.OtaState.COMPLETE, len(SMALL), len(SMALL), crc)
    assert await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,)) == complete
    assert await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,)) == complete
    assert await nus.request(p.CmdInfo(), (p.MsgInfo,)) == before
    await power_cycle()
    assert isinstance(before, p.MsgInfo)
    switched = replace(
        before,
        fw_major=0,
        fw_minor=0,
        fw_patch=0,
        active_image_size=len(SMALL),
        active_image_crc32=crc,
        # On a signed-only device the new image boots on trial (docs/protocol.md 16).
        image_state=p.ImageState.TEST if before.signed_only else 0,
    )
    await expect_state_after_reset(
        smartball, ACTIVATION_RESET_S, switched, "ABORT in COMPLETE, then a power cut"
    )


@pytest.mark.faults("reboot@msg:MSG_OTA_DONE")
async def test_a_reset_as_done_reaches_the_host_still_switches(
    ota: Callable[..., OtaEngine], firmware_image: FirmwareImage, sim_device: Any
) -> None:
    """The device resets (a power cut, a watchdog) the moment MSG_OTA_DONE has left it,
    before its own reset: PENDING was persisted before DONE (9 step 1), so it boots the new
    image and the update is confirmed."""
    result = await ota().run()
    fired = [str(r) for r in sim_device.fault_log if "msg:MSG_OTA_DONE" in str(r)]
    assert fired, f"the reset at MSG_OTA_DONE never happened: {sim_device.fault_log}"
    assert result.success, result.error
    assert (result.restarts, result.bytes_resent) == (0, 0), (
        f"after DONE and a reset the device did not run the image it verified: the engine "
        f"sent it again ({result.restarts} restarts, {result.bytes_resent} bytes re-sent)"
    )
    assert result.info_after is not None
    assert result.info_after.active_image_crc32 == firmware_image.crc32


# --- after a refusal, an ABORT, a power cut ----------------------------------------------------


@pytest.mark.parametrize("ending", ["crc-mismatch", "abort", "mid-transfer"])
async def test_a_reset_after_a_failed_session_keeps_the_old_image(
    nus: NusLink, smartball: Target, power_cycle: PowerCycle, ending: str
) -> None:
    """A session refused at FINISH (a wrong CRC), aborted, or cut short, then a power
    cut: the device advertises within reset_to_advertising_max_s and runs exactly what it
    ran before (INFO field by field), in IDLE."""
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(before, p.MsgInfo)
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    crc = p.crc32(SMALL) ^ 1
    end = len(SMALL) if ending == "crc-mismatch" else p.whole_words(len(SMALL) // 2)
    await stream(nus, SMALL, crc, nus.max_data_chunk, end)
    if ending == "crc-mismatch":
        await nus.send(p.CmdOtaFinish())
        refused = await nus.receive(TIMING.verify_max_s(len(SMALL)) + RADIO_MARGIN_S)
        assert h.same_reply(refused, p.MsgError(p.ErrorCode.CRC_MISMATCH, 0x14)), refused
    elif ending == "abort":
        assert await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,)) == IDLE_STATUS
    await power_cycle()
    await expect_state_after_reset(smartball, PLAIN_RESET_S, before, f"{ending}, then a reset")


@pytest.mark.faults("flash-fail:2@offset:60000")
async def test_the_next_update_after_a_flash_error_succeeds_without_a_reset(
    ota: Callable[..., OtaEngine], firmware_image: FirmwareImage, nus: NusLink
) -> None:
    """A write fails twice: FLASH_ERROR, the update is refused and the device keeps its
    image (state ERROR). The next update, with no reset between, erases again and
    succeeds (7.8: a host MAY start a new session)."""
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    await nus.close()
    first = await ota().run()
    assert not first.success and first.failure is FailureKind.REFUSED, first.error
    assert first.info_after in (None, before), first.info_after
    second = await ota().run()
    assert second.success, second.error
    assert second.restarts == 0 and second.info_after is not None
    assert second.info_after.active_image_crc32 == firmware_image.crc32


# --- timing obligations where they are hardest --------------------------------------------------


async def test_the_verify_of_a_full_staging_area_meets_its_limit(
    nus: NusLink, smartball_options: SmartBallOptions
) -> None:
    """An image as large as the staging area (a wrong CRC: never activated): FINISH is
    answered with CRC_MISMATCH within verify_max_s for that size (1 s + 1 s per MB), the
    device is in ERROR and still runs its image, and the next START opens a session
    without a reset."""
    skip_in_real_time_emulation(smartball_options)
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(before, p.MsgInfo)
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    image = random.Random(22).randbytes(before.staging_capacity)
    crc = p.crc32(image) ^ 1
    await stream(nus, image, crc, LARGEST_CHUNK, len(image))
    limit = TIMING.verify_max_s(len(image))
    loop = asyncio.get_running_loop()
    await nus.send(p.CmdOtaFinish())
    sent = loop.time()
    refused = await nus.receive(limit + RADIO_MARGIN_S + 5.0)
    took = loop.time() - sent
    assert h.same_reply(refused, p.MsgError(p.ErrorCode.CRC_MISMATCH, 0x14)), refused
    assert took <= limit + RADIO_MARGIN_S, (
        f"the verify of {len(image)} bytes took {took:.2f} s, the limit is {limit:.2f} s "
        "(verify_max_s)"
    )
    assert await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,)) == p.MsgOtaStatus(
        p.OtaState.ERROR, 0, 0, 0
    )
    assert await nus.request(p.CmdInfo(), (p.MsgInfo,)) == before
    await h.open_session(nus, SMALL, p.crc32(SMALL) ^ 1, nus.max_data_chunk, TIMING)
    assert await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,)) == IDLE_STATUS


async def test_a_power_cut_with_a_nearly_full_staging_area(
    nus: NusLink,
    smartball: Target,
    power_cycle: PowerCycle,
    smartball_options: SmartBallOptions,
) -> None:
    """The staging area all but its last page written, then the power is cut: the device
    advertises again within reset_to_advertising_max_s (however much the staging bank
    holds), runs its old image and is IDLE."""
    skip_in_real_time_emulation(smartball_options)
    before = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(before, p.MsgInfo)
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    image = random.Random(23).randbytes(before.staging_capacity - 3)
    end = len(image) - h.PAGE_SIZE - 1
    end -= end % LARGEST_CHUNK
    await stream(nus, image, p.crc32(image) ^ 1, LARGEST_CHUNK, end)
    await power_cycle()
    await expect_state_after_reset(
        smartball, PLAIN_RESET_S, before, f"a power cut with {end} bytes staged"
    )


@pytest.mark.sim_only
@pytest.mark.sim_trust("none")
async def test_a_power_cut_with_a_nearly_full_staging_area_on_a_v1_ball(
    nus: NusLink,
    smartball: Target,
    power_cycle: PowerCycle,
    smartball_options: SmartBallOptions,
) -> None:
    """The same on a v1 ball (no SIGNED_IMAGES: its bootloader copies, it does not swap),
    which the simulator's default signed-only ball no longer is: a boot that erases the
    staging bank first is slow only there."""
    await test_a_power_cut_with_a_nearly_full_staging_area(
        nus, smartball, power_cycle, smartball_options
    )

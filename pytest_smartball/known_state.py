"""Return a real SmartBall to a known state between tests: idle, running the baseline image.

The simulator needs none of this (every test gets a fresh simulated device). On hardware a
test may leave a session half done or, if it flashed another image, that image active; the
next test must not inherit either, so tests stay independent and run in any order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bleak.backends.device import BLEDevice

from .contract import codec as p
from .image import FirmwareImage
from .link import BleBackend, LinkError, LinkLost, LinkSettings, NusLink, find_device
from .ota import OtaEngine, OtaResult, OtaSettings

#: Connect, ask, ABORT: the whole check, before any restoring flash.
CHECK_TIMEOUT_S = 60.0


class ResetFailed(RuntimeError):
    """The device could not be returned to its known state (one sentence)."""


@dataclass(slots=True)
class ResetOutcome:
    state_before: str  # the OTA state the test left (idle, erasing, receiving, ...)
    found: p.MsgInfo  # what the device ran after the test
    info: p.MsgInfo  # what it runs now
    restored: OtaResult | None = None  # the baseline flash, when one was needed
    warning: str | None = None  # the baseline could not be restored (no image for it)


def runs(info: p.MsgInfo, baseline: p.MsgInfo) -> bool:
    return info.runs(baseline.active_image_size, baseline.active_image_crc32)


async def idle_and_info(
    backend: BleBackend, device: BLEDevice, link_settings: LinkSettings, reply_timeout_s: float
) -> tuple[str, p.MsgInfo]:
    """Connect; STATUS, ABORT unless idle (a session a test or an earlier run left behind
    is dropped); INFO. The state found and what the device runs."""
    async with await NusLink.open(device, backend, link_settings) as link:
        status = await link.request(p.CmdOtaStatus(), (p.MsgOtaStatus,), reply_timeout_s)
        assert isinstance(status, p.MsgOtaStatus)
        if status.state != p.OtaState.IDLE:
            await link.request(p.CmdOtaAbort(), (p.MsgOtaStatus,), reply_timeout_s)
        info = await link.request(p.CmdInfo(), (p.MsgInfo,), reply_timeout_s)
    assert isinstance(info, p.MsgInfo)
    return status.state_name, info


async def find_idle_and_info(
    backend: BleBackend, *, name: str, address: str | None, settings: OtaSettings
) -> tuple[str, p.MsgInfo]:
    """:func:`idle_and_info` on the device found by address or name (it may still be
    coming back from a reset, so the scan waits as long as a vanished device is waited for,
    and a link that the reset ends is tried once more)."""
    for attempt in (1, 2):
        sighting = await find_device(
            backend, name=name, address=address, timeout=settings.reappear_timeout_s
        )
        try:
            return await idle_and_info(
                backend, sighting.ble_device, settings.link, settings.reply_timeout_s
            )
        except LinkLost:  # a test that ended at DONE: the device resets right after it
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def return_to_baseline(
    backend: BleBackend,
    *,
    name: str,
    address: str | None,
    baseline: p.MsgInfo,
    baseline_image: FirmwareImage | None,
    settings: OtaSettings | None = None,
) -> ResetOutcome:
    """ABORT any session; if the active image is not the baseline, flash the baseline
    image back (when there is one, else say so). Raises :class:`ResetFailed`."""
    settings = settings or OtaSettings()
    who = address or repr(name)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S + settings.reappear_timeout_s):
            state, info = await find_idle_and_info(
                backend, name=name, address=address, settings=settings
            )
    except (LinkError, TimeoutError) as exc:
        raise ResetFailed(
            f"could not return the SmartBall {who} to idle after the test: "
            f"{exc or 'no answer in time'}"
        ) from None
    outcome = ResetOutcome(state, info, info)
    if runs(info, baseline):
        return outcome
    found = (
        f"the SmartBall {who} runs crc32 {info.active_image_crc32:08x} "
        f"(firmware {info.firmware_version}), not the baseline crc32 "
        f"{baseline.active_image_crc32:08x} (firmware {baseline.firmware_version})"
    )
    if baseline_image is None:
        outcome.warning = (
            f"{found}; the next test starts from it (pass --baseline-firmware PATH to "
            "restore the baseline between tests)"
        )
        return outcome
    engine = OtaEngine(baseline_image, backend, name=name, address=address, settings=settings)
    result = await engine.run()
    outcome.restored = result
    if not result.success or result.info_after is None or not runs(result.info_after, baseline):
        raise ResetFailed(f"{found}, and flashing the baseline back failed: {result.error}")
    outcome.info = result.info_after
    return outcome

"""What the OTA engine's tests of this folder (test_ota_recovery.py, test_ota_outcomes.py,
test_ota_capabilities.py) share: the field image, the link's chunk and window, the check
that an update flashed the image, and spies on what the simulated device's firmware
receives (observed at the device, not asked of the engine)."""

from __future__ import annotations

import random
from collections.abc import Callable

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import EventKind, OtaResult, Outcome
from smartball_sim.device import SimDevice

FIELD_IMAGE = FirmwareImage(random.Random(323194).randbytes(323_194), "field-323194.bin")
CHUNK = 232  # MTU 247: 244-byte writes minus 10 bytes of DATA framing, down to whole words
WINDOW = 16


def assert_flashed(device: SimDevice, image: FirmwareImage, result: OtaResult) -> None:
    assert result.success, result.error
    assert result.outcome is Outcome.SUCCEEDED and result.failure is None
    assert device.firmware.active.data == image.data
    assert result.info_after is not None
    assert result.info_after.active_image_crc32 == image.crc32


def event_kinds(result: OtaResult) -> list[EventKind]:
    return [e.kind for e in result.events]


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

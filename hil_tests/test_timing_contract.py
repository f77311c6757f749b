"""The firmware's timing obligations, measured on the device under test (simulated or
real) during a whole update of the release image: every figure goes into the JUnit
properties (``figure.NAME``, ``figure.NAME.limit``) and the smartball report, and a figure
beyond its limit fails the test with both numbers. The same run gives the figures of each
phase that ``--smartball-compare`` puts beside the previous release's (erase, transfer
throughput, verify, reset to advertising, the whole update)."""

from __future__ import annotations

import pytest

from pytest_smartball.figures import FigureRecorder
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import NusLink
from pytest_smartball.targets import Target

from .timed_update import TimedUpdate, UpdateFailed

pytestmark = pytest.mark.asyncio


async def test_the_device_meets_its_timing_obligations(
    nus: NusLink,
    smartball: Target,
    firmware_image: FirmwareImage,
    smartball_figures: FigureRecorder,
) -> None:
    update = TimedUpdate(nus, smartball, firmware_image, smartball_figures)
    try:
        await update.run()
    except UpdateFailed as exc:
        missed = smartball_figures.problems()
        raise UpdateFailed(f"{exc}{'; and ' + '; '.join(missed) if missed else ''}") from None
    smartball_figures.check_limits()

"""Every fault effect, against the robust engine and the naive field script.

The engine must finish under each; the naive flow (``tests/naive_client.py``, the
original script) must fail where the fault is one it cannot survive. Together they show
that each fault really bites and that the engine is what copes with it.
"""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.device import SimDevice
from smartball_sim.faults import EFFECTS, SIGNED_UPDATE_EFFECTS, Effect, FaultPlan
from tests.naive_client import naive_flash

pytestmark = pytest.mark.sim_only

IMAGE = FirmwareImage(random.Random(5).randbytes(40_000), "40k.bin")

#: (spec, how the naive script fails under it: a regular expression over
#: "ExceptionType: text", or None when it finishes and the device runs the image).
#: The texts are bleak's own (the field's `Service Discovery has not been performed yet`
#: after a drop during the erase) or the script's own timeouts.
CASES: list[tuple[str, str | None]] = [
    ("drop@erase:50%", r"^BleakError: Service Discovery has not been performed yet$"),
    ("drop@offset:20000", r"^BleakError: Not connected$"),
    ("reboot@offset:20000", r"^BleakError: Not connected$"),
    ("adv-pause:20s@offset:20000", r"^BleakError: Not connected$"),
    ("race:1.5s", r"^BleakCharacteristicNotFoundError: Characteristic 6e400003-.* was not found"),
    ("stale-cache", r"^BleakCharacteristicNotFoundError: Characteristic 6e400003-.* was not found"),
    ("lose:MSG_OTA_READY", r"^TimeoutError: no MSG_OTA_READY within 120 s$"),
    ("lose:3@offset:20000", None),  # it ignores ACKs: three lost ones change nothing for it
    # the lost DATA write leaves a hole: the device never verifies, no DONE within 15 s
    ("write-drop@offset:20000", r"^TimeoutError: $"),
    ("connect-fail:2", r"^BleakError: \[org\.bluez\.Error\.Failed\] br-connection-canceled$"),
    ("connect-timeout", r"^TimeoutError: $"),
    # the READY that follows the last page is damaged
    ("corrupt@erase:100%", r"^TimeoutError: no MSG_OTA_READY within 120 s$"),
    ("slow-erase:30s", None),  # its keepalive does no harm while the link holds
    ("flaky:2%", r"^BleakError: Service Discovery has not been performed yet$"),
    ("flash-fail@offset:20000", None),  # one failed write: the device retries it
]

#: A device that never resets after DONE cannot be finished by any host: the engine's
#: bounded give-up on it is tested with the engine (tests/client/test_ota_outcomes.py).
HOPELESS = {Effect.NO_RESET}
#: A signed update's faults act on a signed-only ball only, which the naive script cannot
#: update (it sends no manifest): tests/simulator/test_firmware_signed_boot.py tests them.


def test_every_effect_has_a_case() -> None:
    covered = {FaultPlan.parse(spec).faults[0].effect for spec, _ in CASES}
    assert covered == set(EFFECTS) - HOPELESS - SIGNED_UPDATE_EFFECTS


def fault_bit(device: SimDevice, spec: str, started: float) -> str | None:
    """Why we know the fault acted on this run, or None: a firing by its trigger, an armed
    effect applied to an event, a failed flash operation consumed, an erase that took the
    plan's time."""
    log = device.fault_log
    acted = [r for r in log if r.trigger]  # "[armed]" alone proves nothing
    if acted:
        return str(acted[0])
    fault = FaultPlan.parse(spec).faults[0]
    if fault.effect is Effect.SLOW_ERASE and device.now() - started >= fault.seconds:
        return f"the run lasted {device.now() - started:.1f} s, the erase {fault.seconds} s"
    return None


async def _naive(spec: str) -> tuple[str | None, str]:
    """How the naive script failed ("Type: text", or None when the device runs the image),
    and why we know the fault acted."""
    target = make_sim_target(faults=spec, seed=3)
    assert target.sim is not None
    started = target.sim.now()
    failure: str | None = None
    try:
        async with asyncio.timeout(300):
            await naive_flash(target.backend, target.sim.address, IMAGE.data)
        await asyncio.sleep(5)  # the reset into the new image
    except Exception as exc:  # compared with the case's expected failure below
        failure = f"{type(exc).__name__}: {exc}"
    else:
        if target.sim.firmware.active.data != IMAGE.data:
            failure = "finished, but the device does not run the image"
    bit = fault_bit(target.sim, spec, started)
    assert bit is not None, f"{spec!r} never acted in the naive run: it tests nothing"
    return failure, bit


@pytest.mark.asyncio
@pytest.mark.parametrize(("spec", "naive_failure"), CASES, ids=[c[0] for c in CASES])
async def test_robust_engine_finishes_where_the_naive_script_may_not(
    spec: str, naive_failure: str | None
) -> None:
    target = make_sim_target(faults=spec, seed=3)
    assert target.sim is not None
    started = target.sim.now()
    result = await OtaEngine(IMAGE, target.backend, address=target.sim.address).run()
    assert result.success, result.error
    assert target.sim.firmware.active.data == IMAGE.data
    assert fault_bit(target.sim, spec, started), "the fault never acted: the case tests nothing"

    failure, bit = await _naive(spec)
    if naive_failure is None:
        assert failure is None, f"naive script under {spec!r} ({bit}): {failure}"
    else:
        assert failure is not None, f"naive script finished under {spec!r} ({bit})"
        assert re.search(naive_failure, failure), f"naive script under {spec!r}: {failure}"

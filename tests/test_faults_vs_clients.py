"""Every fault effect, against the robust engine and the naive field script.

The engine must finish under each; the naive flow (``hil_tests/naive_client.py``, the
original script) must fail where the fault is one it cannot survive. Together they show
that each fault really bites and that the engine is what copes with it.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from hil_tests.naive_client import naive_flash
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.faults import EFFECTS, Effect, FaultPlan

pytestmark = pytest.mark.sim_only

IMAGE = FirmwareImage(random.Random(5).randbytes(40_000), "40k.bin")

# (spec, does the naive script fail under it?)
CASES = [
    ("drop@erase:50%", True),
    ("drop@offset:20000", True),
    ("reboot@offset:20000", True),
    ("adv-pause:20s@offset:20000", True),
    ("race:1.5s", True),
    ("stale-cache", True),
    ("lose:MSG_OTA_READY", True),
    ("lose:3@offset:20000", False),  # it ignores ACKs: three lost ones change nothing for it
    ("write-drop@offset:20000", True),
    ("connect-fail:2", True),
    ("connect-timeout", True),
    ("corrupt@erase:100%", True),  # the READY that follows the last page is damaged
    ("slow-erase:30s", False),  # its keepalive does no harm while the link holds
    ("flaky:2%", True),
    ("flash-fail@offset:20000", False),  # one failed write: the device retries it
]

#: A device that never resets after DONE cannot be finished by any host: the engine's
#: bounded give-up on it is tested with the engine (tests/test_ota.py).
HOPELESS = {Effect.NO_RESET}


def test_every_effect_has_a_case() -> None:
    covered = {FaultPlan.parse(spec).faults[0].effect for spec, _ in CASES}
    assert covered == set(EFFECTS) - HOPELESS


async def _naive(spec: str) -> tuple[bool, str]:
    target = make_sim_target(faults=spec, seed=3)
    try:
        async with asyncio.timeout(300):
            await naive_flash(target.backend, target.sim.address, IMAGE.data)
        await asyncio.sleep(5)  # the reset into the new image
    except Exception as exc:  # any failure of the naive flow counts
        how = f"{type(exc).__name__}: {exc}"
        ok = False
    else:
        how, ok = "finished", target.sim.firmware.active.data == IMAGE.data
    assert target.sim.fault_log, f"{spec!r} never fired in the naive run: it tests nothing"
    return ok, how


@pytest.mark.asyncio
@pytest.mark.parametrize(("spec", "naive_fails"), CASES, ids=[c[0] for c in CASES])
async def test_robust_engine_finishes_where_the_naive_script_may_not(
    spec: str, naive_fails: bool
) -> None:
    target = make_sim_target(faults=spec, seed=3)
    result = await OtaEngine(IMAGE, target.backend, address=target.sim.address).run()
    assert result.success, result.error
    assert target.sim.firmware.active.data == IMAGE.data
    assert target.sim.fault_log, "the fault never fired: the case tests nothing"

    naive_ok, how = await _naive(spec)
    assert naive_ok is not naive_fails, f"naive script under {spec!r}: {how}"

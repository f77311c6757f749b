"""The contract monitor end to end: the OTA engine (and a raw NUS link) against the
simulated SmartBall, every frame through ``NusLink`` into the monitor. A correct device,
also under a fault plan that loses and damages messages on purpose, breaks no rule; a
device with a catalogue bug, or with one of the realistic bugs below (written from the
contract, kept out of the catalogue: monkeypatches of the simulated firmware), is caught
by the monitor, also when the engine recovers and the update succeeds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pytest_smartball import loops
from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage, generated_image
from pytest_smartball.link import LinkSettings, NusLink, find_device
from pytest_smartball.monitor import Violation
from pytest_smartball.ota import OtaEngine, OtaResult
from pytest_smartball.plugin.monitoring import ContractWatch
from pytest_smartball.targets import Target
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.firmware.model import SmartBallFirmware

IMAGE = generated_image(0, 20_000)
#: Whole pages: an erase loop that counts ``size // 4096 + 1`` pages erases one too many.
WHOLE_PAGES = generated_image(0, 16_384)


def update(target: Target, image: FirmwareImage = IMAGE) -> tuple[OtaResult, list[Violation]]:
    watch = ContractWatch()
    watch.start()
    try:
        engine = OtaEngine(image, target.backend, name=target.name, address=target.address)
        result = loops.run(engine.run(), virtual=True)
    finally:
        watch.stop()
    return result, watch.violations()


def test_a_correct_device_breaks_no_rule() -> None:
    result, found = update(make_sim_target(seed=1))
    assert result.success and found == []


@pytest.mark.parametrize("faults", ["lose:MSG_OTA_ACK,corrupt:2", "drop@offset:9000", "flaky"])
def test_faults_injected_on_purpose_are_no_device_violation(faults: str) -> None:
    result, found = update(make_sim_target(seed=3, faults=faults))
    assert result.success, result.error
    assert found == [], "\n".join(map(str, found))


@pytest.mark.parametrize(
    ("bug", "rule"),
    [
        ("no-erase-progress", "ready.early"),
        ("ready-before-erase-done", "ready.early"),
        ("last-page-not-erased", "progress.fields"),
        ("window-exceeds-buffer", "buffer.overflow"),
        ("late-reset", "done.disconnect"),
        ("done-wrong-crc", "done.crc"),
        ("info-stale-after-switch", "activation.info"),
    ],
)
def test_a_catalogue_bug_is_caught_by_the_monitor(bug: str, rule: str) -> None:
    result, found = update(make_sim_target(seed=1, firmware_bugs=[bug]))
    assert found, f"{bug}: the monitor saw nothing (update success={result.success})"
    assert found[0].rule == rule, str(found[0])


# --- realistic bugs of our own, in the categories the held-out list covers -------------


def _ack_every_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """ACK interval: ACKs every ``window`` chunks instead of every ``window // 2``."""
    monkeypatch.setattr(SmartBallFirmware, "ack_interval", staticmethod(lambda s: s.window))


def _erase_one_page_too_many(monkeypatch: pytest.MonkeyPatch) -> None:
    """Erase/START: the erase loop counts ``image_size // 4096 + 1`` pages."""
    monkeypatch.setattr(SmartBallFirmware, "_pages_to_erase", lambda self, size: size // 4096 + 1)


def _status_offset_zero_while_verifying(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions/STATUS: STATUS reports next_expected_offset 0 outside RECEIVING."""
    original = SmartBallFirmware.status

    def status(self: SmartBallFirmware) -> p.MsgOtaStatus:
        msg = original(self)
        if msg.state != p.OtaState.RECEIVING:
            return p.MsgOtaStatus(msg.state, 0, msg.image_size, msg.image_crc32)
        return msg

    monkeypatch.setattr(SmartBallFirmware, "status", status)


def _slow_page_erase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device timing: a page erase (with its verify) takes 1.3 s, past progress_gap_max_s."""
    original = SmartBallFirmware.__init__

    def init(self: SmartBallFirmware, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        import dataclasses

        self.timings = dataclasses.replace(self.timings, erase_page_s=1.3)

    monkeypatch.setattr(SmartBallFirmware, "__init__", init)


OWN_BUGS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "ack-every-window": (_ack_every_window, "ack.interval"),
    "erase-one-page-too-many": (_erase_one_page_too_many, "progress.fields"),
    "status-offset-zero-outside-receiving": (_status_offset_zero_while_verifying, "status.fields"),
    "slow-page-erase": (_slow_page_erase, "progress.gap"),
}


@pytest.mark.parametrize("name", sorted(OWN_BUGS))
def test_a_realistic_bug_of_our_own_is_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    breaks, rule = OWN_BUGS[name]
    breaks(monkeypatch)
    if name == "status-offset-zero-outside-receiving":
        found = _status_while_verifying()
    else:
        _, found = update(make_sim_target(seed=1), WHOLE_PAGES)
    assert found, f"{name}: the monitor saw nothing"
    assert found[0].rule == rule, str(found[0])


def _status_while_verifying() -> list[Violation]:
    """A raw session that asks STATUS right after FINISH (the device is VERIFYING)."""
    target = make_sim_target(seed=1)
    data = IMAGE.data

    async def session() -> None:
        sighting = await find_device(
            target.backend, name=target.name, address=target.address, timeout=10
        )
        async with await NusLink.open(sighting.ble_device, target.backend, LinkSettings()) as nus:
            await nus.send(p.CmdOtaStart(len(data), p.crc32(data), nus.max_data_chunk))
            ready = await nus.wait_for((p.MsgOtaReady,), 30, "READY")
            assert isinstance(ready, p.MsgOtaReady)
            offset = 0
            while offset < len(data):
                end = min(offset + ready.max_chunk * (ready.window // 2), len(data))
                while offset < end:
                    size = min(ready.max_chunk, end - offset)
                    await nus.send(p.CmdOtaData(offset, data[offset : offset + size]))
                    offset += size
                await nus.wait_for((p.MsgOtaAck,), 5, "ACK")
            await nus.send(p.CmdOtaFinish())
            await nus.send(p.CmdOtaStatus())
            await nus.wait_for((p.MsgOtaDone,), 5, "DONE")
            await asyncio.sleep(2)

    watch = ContractWatch()
    watch.start()
    try:
        loops.run(session(), virtual=True)
    finally:
        watch.stop()
    return watch.violations()

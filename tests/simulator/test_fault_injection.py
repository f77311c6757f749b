"""What FaultInjector does to a SimDevice when a fault fires: lost, corrupted and dropped
messages, resets, advertising pauses, refused connects, slow and failing flash. The device
is driven through its radio API with a small in-test peer, on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import MsgType
from smartball_sim.device import ConnectRefusal, ConnectRefused, RadioTimings, SimDevice, SimLink
from tests.hosts import SimPeer

# Virtual time: simulated seconds cost no wall time, and timings are exact.
pytestmark = pytest.mark.looptime


# --- FaultInjector through SimDevice -------------------------------------------------------------

IMAGE = bytes(range(256)) * 8  # the simulated device's active image


async def connect(device: SimDevice) -> tuple[SimPeer, SimLink]:
    peer = SimPeer()
    link = await device.connect(peer)
    return peer, link


async def send(device: SimDevice, link: SimLink, *msgs: p.Message) -> None:
    for msg in msgs:
        await device.write(link, p.encode(msg))
    await asyncio.sleep(0.5)  # past the connection events that carry the writes


def make_device(faults: str, **kwargs) -> SimDevice:
    return SimDevice(active_image=IMAGE, faults=faults, **kwargs)


def fired(device: SimDevice) -> list[tuple[str, str]]:
    """(fault, trigger) of the records written when a fault fired (not when applied)."""
    return [(r.fault, r.trigger) for r in device.fault_log if r.trigger != "applied"]


def applied(device: SimDevice) -> list[tuple[str, str]]:
    return [(r.fault, r.detail) for r in device.fault_log if r.trigger == "applied"]


@pytest.mark.asyncio
async def test_lose_one_message_type_drops_exactly_that_message() -> None:
    device = make_device("lose:MSG_OTA_READY")
    peer, link = await connect(device)
    start = p.CmdOtaStart(5000, 0x1234, 100)
    await send(device, link, start)
    await asyncio.sleep(2)
    assert peer.types() == [p.MsgOtaProgress, p.MsgOtaProgress]  # READY is lost
    assert device.firmware.state == p.OtaState.RECEIVING
    await send(device, link, p.CmdInfo(), start)  # resume: READY again, and this one arrives
    assert peer.types()[2:] == [p.MsgInfo, p.MsgOtaReady]
    assert applied(device) == [("lose", "MSG_OTA_READY")]
    assert fired(device) == [("lose:MSG_OTA_READY", "")]


@pytest.mark.asyncio
async def test_lose_n_messages() -> None:
    device = make_device("lose:2")
    peer, link = await connect(device)
    await send(device, link, p.CmdInfo(), p.CmdOtaStatus(), p.CmdOtaStatus(), p.CmdInfo())
    assert peer.types() == [p.MsgOtaStatus, p.MsgInfo]
    assert applied(device) == [("lose", "MSG_INFO"), ("lose", "MSG_OTA_STATUS")]


@pytest.mark.asyncio
async def test_corrupt_flips_one_byte_and_the_host_decoder_drops_the_frame() -> None:
    device = make_device("corrupt", seed=1)
    peer, link = await connect(device)
    await send(device, link, p.CmdOtaStatus(), p.CmdInfo())
    good = p.encode(device.firmware.status())
    corrupted = peer.raw[0]
    diff = [i for i, (a, b) in enumerate(zip(corrupted, good, strict=True)) if a != b]
    assert len(diff) == 1
    (position,) = diff
    assert corrupted[position] == good[position] ^ 0xFF
    assert position >= 4  # never the SOF, type or length: always a plain bad CRC
    assert applied(device) == [("corrupt", f"MSG_OTA_STATUS byte {position}")]
    assert peer.decoder.stats.bad_crc == 1
    assert peer.types() == [p.MsgInfo]  # the next message decodes fine


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", range(6))
async def test_corrupt_never_delivers_the_damaged_frame(seed: int) -> None:
    device = make_device("corrupt:3", seed=seed)
    peer, link = await connect(device)
    await send(device, link, p.CmdInfo(), p.CmdInfo(), p.CmdInfo())
    assert len(applied(device)) == 3
    assert all(r != p.encode(device.firmware.info()) for r in peer.raw)
    assert peer.messages == []  # whatever the decoder made of them, no frame got through
    assert (peer.decoder.stats.bad_crc + peer.decoder.stats.bad_length + peer.decoder.buffered) > 0


@pytest.mark.asyncio
async def test_write_drop_loses_one_write() -> None:
    device = make_device("write-drop")
    peer, link = await connect(device)
    await send(device, link, p.CmdInfo(), p.CmdOtaStatus(), p.CmdInfo())
    assert peer.types() == [p.MsgOtaStatus, p.MsgInfo]
    assert device.firmware.commands_seen == {MsgType.CMD_OTA_STATUS: 1, MsgType.CMD_INFO: 1}
    assert applied(device) == [("write-drop", "")]


@pytest.mark.asyncio
async def test_cmd_trigger_arms_on_the_nth_command() -> None:
    device = make_device("write-drop:2@cmd:CMD_INFO#2")
    peer, link = await connect(device)
    await send(device, link, *[p.CmdInfo()] * 5)
    # INFO 1 and 2 answered (the 2nd arms the fault), 3 and 4 lost, 5 answered
    assert peer.types() == [p.MsgInfo] * 3
    assert device.firmware.commands_seen == {MsgType.CMD_INFO: 3}
    assert fired(device) == [("write-drop:2", "cmd:CMD_INFO#2")]


@pytest.mark.asyncio
async def test_msg_trigger_fires_once_the_nth_message_has_left() -> None:
    """``reboot@msg:MSG_INFO#2``: the second MSG_INFO reaches the host, then the device
    resets; the first does not fire it, nor do other message types."""
    device = make_device("reboot@msg:MSG_INFO#2")
    peer, link = await connect(device)
    await send(device, link, p.CmdInfo(), p.CmdOtaStatus())
    assert peer.types() == [p.MsgInfo, p.MsgOtaStatus] and link.alive
    await send(device, link, p.CmdInfo())
    assert peer.types() == [p.MsgInfo, p.MsgOtaStatus, p.MsgInfo]  # delivered, then reset
    assert not link.alive and fired(device) == [("reboot", "msg:MSG_INFO#2")]
    assert device.firmware.boot_count == 2


@pytest.mark.asyncio
async def test_a_reset_as_done_leaves_boots_the_verified_image() -> None:
    """``reboot@msg:MSG_OTA_DONE`` resets the device before its own activation: the
    switch was persisted before DONE, so the bootloader switches all the same."""
    image = bytes(range(256)) * 20
    device = make_device("reboot@msg:MSG_OTA_DONE")
    peer, link = await connect(device)
    await send(device, link, p.CmdOtaStart(len(image), p.crc32(image), 232))
    await asyncio.sleep(1.0)
    for offset in range(0, len(image), 232):
        await device.write(link, p.encode(p.CmdOtaData(offset, image[offset : offset + 232])))
    await send(device, link, p.CmdOtaFinish())
    assert p.MsgOtaDone(p.crc32(image)) in peer.messages
    assert fired(device) == [("reboot", "msg:MSG_OTA_DONE#1")]
    assert device.firmware.active.data == image


@pytest.mark.asyncio
async def test_drop_at_erase_percentage_keeps_the_erase_going() -> None:
    device = make_device("drop@erase:50%")
    loop = asyncio.get_running_loop()
    peer, link = await connect(device)
    t0 = loop.time()
    await device.write(link, p.encode(p.CmdOtaStart(4 * 4096, 0x1234, 100)))  # 4 pages
    await asyncio.sleep(5)
    # The second page's PROGRESS was still queued in the device's controller when the link
    # dropped: like a real link, what was not yet on air is lost with it.
    assert peer.types() == [p.MsgOtaProgress]
    assert [m.done for m in peer.messages if isinstance(m, p.MsgOtaProgress)] == [4096]
    assert not link.alive and device.link is None
    assert device.firmware.state == p.OtaState.RECEIVING  # the erase finished without a host
    (record,) = device.fault_log
    assert (record.fault, record.trigger) == ("drop", "erase:50%")
    # fired at the second page: the write's connection event, then 2 pages of 85 ms
    assert record.time - t0 == pytest.approx(0.015 + 2 * 0.085, abs=0.02)
    assert [t for t, _ in peer.lost] == [record.time]


@pytest.mark.asyncio
async def test_reboot_at_offset_loses_the_session() -> None:
    device = make_device("reboot@offset:200")
    peer, link = await connect(device)
    image = bytes(1000)
    await send(device, link, p.CmdOtaStart(len(image), p.crc32(image), 100))
    await asyncio.sleep(1)
    for offset in range(0, 300, 100):
        await device.write(link, p.encode(p.CmdOtaData(offset, image[offset : offset + 100])))
    await asyncio.sleep(0.5)
    assert peer.lost and peer.lost[0][1] == "device reset"
    assert device.firmware.state == p.OtaState.IDLE
    assert device.firmware.boot_count == 2
    assert not device.advertising
    await asyncio.sleep(device.radio.boot_s)
    assert device.advertising
    assert fired(device) == [("reboot", "offset:200")]


@pytest.mark.asyncio
async def test_adv_pause_stops_advertising_for_its_duration() -> None:
    loop = asyncio.get_running_loop()
    device = make_device("")
    peer, _link = await connect(device)
    t0 = loop.time()
    device.set_faults("adv-pause:5s")
    assert peer.lost == [(t0, "advertising paused")]
    await asyncio.sleep(4.9)
    assert not device.advertising
    await asyncio.sleep(0.2)
    assert device.advertising
    assert device.fault_log[0].time == t0


@pytest.mark.asyncio
async def test_time_trigger_fires_after_connecting() -> None:
    loop = asyncio.get_running_loop()
    device = make_device("drop@t:2s")
    _peer, link = await connect(device)
    t_connected = loop.time()
    await asyncio.sleep(1.9)
    assert link.alive
    await asyncio.sleep(0.2)
    assert not link.alive
    (record,) = device.fault_log
    assert (record.fault, record.trigger) == ("drop", "t:2s")
    assert record.time - t_connected == pytest.approx(2.0, abs=1e-6)


@pytest.mark.asyncio
async def test_connect_fail_at_the_second_connection() -> None:
    device = make_device("connect-fail@connect:2")
    _peer, link = await connect(device)
    device.disconnect("x")
    with pytest.raises(ConnectRefused) as refused:
        await device.connect(SimPeer())
    assert refused.value.refusal is ConnectRefusal.CANCELED
    _, link = await connect(device)
    assert link.number == 2
    assert fired(device) == [("connect-fail", "connect:2")]
    assert applied(device) == [("connect-fail", "br-connection-canceled")]


@pytest.mark.asyncio
async def test_slow_erase_takes_its_time() -> None:
    loop = asyncio.get_running_loop()
    device = make_device("slow-erase:30s")
    peer, link = await connect(device)
    t0 = loop.time()
    await device.write(link, p.encode(p.CmdOtaStart(3 * 4096, 0x1234, 100)))
    # the START reaches the device at the next connection event (15 ms), then 30 s of erase
    await asyncio.sleep(30.0)
    assert device.firmware.state == p.OtaState.ERASING
    assert [m.done for m in peer.messages if isinstance(m, p.MsgOtaProgress)] == [
        4096,
        8192,
    ]  # one page every 10 s
    await asyncio.sleep(0.03)
    assert device.firmware.state == p.OtaState.RECEIVING
    assert isinstance(peer.messages[-1], p.MsgOtaReady)
    assert loop.time() - t0 == pytest.approx(30.03, abs=1e-6)


@pytest.mark.asyncio
async def test_fault_log_records_every_fired_fault_in_order() -> None:
    loop = asyncio.get_running_loop()
    device = make_device("lose@cmd:CMD_INFO#1,write-drop@cmd:CMD_OTA_STATUS#2")
    peer, link = await connect(device)
    await send(device, link, p.CmdInfo())  # arms "lose", which eats the MSG_INFO
    t1 = device.fault_log[0].time
    await send(device, link, p.CmdOtaStatus(), p.CmdOtaStatus(), p.CmdOtaStatus())
    assert peer.types() == [p.MsgOtaStatus, p.MsgOtaStatus]
    log = [(r.fault, r.trigger, r.detail) for r in device.fault_log]
    assert log == [
        ("lose", "cmd:CMD_INFO#1", ""),
        ("lose", "applied", "MSG_INFO"),
        ("write-drop", "cmd:CMD_OTA_STATUS#2", ""),
        ("write-drop", "applied", ""),
    ]
    times = [r.time for r in device.fault_log]
    assert times == sorted(times)
    assert times[0] == times[1] == t1 < times[2] <= times[3] <= loop.time()
    assert "lose" in str(device.fault_log[0]) and "cmd:CMD_INFO#1" in str(device.fault_log[0])


# --- trigger semantics added with the flaky effect and connect triggers --------------------


@pytest.mark.asyncio
async def test_drop_at_the_second_connection_drops_that_link() -> None:
    device = make_device("drop@connect:2")
    _, first = await connect(device)
    device.disconnect("host went away")
    assert first.alive is False
    _, second = await connect(device)
    assert second.alive is False, "the fault must act on the link it was triggered by"
    assert fired(device) == [("drop", "connect:2")]


@pytest.mark.asyncio
async def test_slow_erase_with_a_trigger_waits_for_it() -> None:
    device = make_device("slow-erase:30s@connect:2")
    assert device.firmware.timings.erase_total_s is None
    await connect(device)
    assert device.firmware.timings.erase_total_s is None
    device.disconnect("x")
    await connect(device)
    assert device.firmware.timings.erase_total_s == 30.0


def test_untriggered_reboot_waits_for_an_event_loop() -> None:
    device = make_device("reboot")  # built outside any loop: must not raise
    assert device.fault_log == []

    async def later() -> bool:
        return device.advertising

    assert asyncio.run(later()) is False  # rebooting: not advertising for the boot time
    assert fired(device) == [("reboot", "")]


@pytest.mark.asyncio
async def test_set_faults_cancels_running_timers_and_slow_erase() -> None:
    device = make_device("drop@t:2s,slow-erase:30s")
    assert device.firmware.timings.erase_total_s == 30.0
    _, link = await connect(device)
    device.set_faults("")
    assert device.firmware.timings.erase_total_s is None
    await asyncio.sleep(3)
    assert link.alive, "the replaced plan's timer must not fire"
    assert [f for f, _ in fired(device)] == ["slow-erase:30s"]


# --- resets leave nothing behind; a command that resets is never seen (issue 10) ------------


def _flash_cli(tmp_path, spec: str, *extra: str) -> tuple[int, dict]:
    """``smartball-ota flash IMG --sim --faults SPEC --json``, in-process."""
    import contextlib
    import io
    import json

    from pytest_smartball.cli import main
    from smartball_sim.make_image import make_image

    image = tmp_path / "demo.bin"
    image.write_bytes(make_image())
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(
            [
                "flash",
                str(image),
                "--sim",
                "--sim-trust",
                "none",
                "--faults",
                spec,
                "--json",
                *extra,
            ]
        )
    return code, json.loads(out.getvalue())


def test_a_reset_fired_from_inside_the_erase_ends_that_erase(tmp_path) -> None:
    """Regression (issue 10): the reset fired from the erase's own step; that erase went
    on, sent READY into the new session while the new erase ran, and the new erase wiped
    the DATA the host streamed: exit 5, CRC_MISMATCH."""
    code, result = _flash_cli(tmp_path, "slow-erase:30s,reboot@erase:20%")
    assert code == 0, result["error"]
    assert result["restarts"] == 1 and result["bytes_resent"] == 0


def test_the_start_that_fires_a_reset_opens_no_session(tmp_path) -> None:
    """Regression (issue 10): the resume START that fired the reset was then handled by the
    freshly reset device, which opened a session and erased: everything was sent again
    and the engine counted no restart. The START was never seen: the device is idle, the
    engine finds that out and restarts (the session was in RAM: it is gone)."""
    # Before the last chunk: with every byte at the device the engine sends FINISH, not a
    # resume START (tests/client/test_ota_outcomes.py), and the reset would never fire.
    code, result = _flash_cli(tmp_path, "drop@offset:300000,reboot@cmd:CMD_OTA_START#2")
    assert code == 0, result["error"]
    assert result["restarts"] == 1
    assert [line.split()[1:] for line in result["fault_log"]] == [
        ["drop", "[offset:300000]"],
        ["reboot", "[cmd:CMD_OTA_START#2]"],
    ]


@pytest.mark.asyncio
async def test_reboot_on_a_command_discards_it_and_the_frames_behind_it() -> None:
    device = make_device("reboot@cmd:CMD_OTA_START")
    peer, link = await connect(device)
    await device.write(link, p.encode(p.CmdOtaStart(5000, 0x1234, 100)) + p.encode(p.CmdInfo()))
    await asyncio.sleep(3)
    assert peer.lost and peer.lost[0][1] == "device reset"
    assert device.firmware.state == p.OtaState.IDLE
    assert device.firmware.commands_seen == {}  # neither the START nor the INFO behind it
    assert device.firmware.flash.erases == 0
    assert peer.messages == []


@pytest.mark.asyncio
async def test_drop_on_a_command_lets_the_device_handle_it_and_loses_the_reply() -> None:
    device = make_device("drop@cmd:CMD_OTA_START")
    peer, link = await connect(device)
    await device.write(link, p.encode(p.CmdOtaStart(5000, 0x1234, 100)))
    await asyncio.sleep(1)
    assert not link.alive and peer.messages == []
    assert device.firmware.state == p.OtaState.RECEIVING  # it erased and is ready
    assert device.firmware.commands_seen == {MsgType.CMD_OTA_START: 1}


@pytest.mark.asyncio
async def test_a_boot_timer_from_before_a_second_reset_does_not_end_that_boot() -> None:
    device = make_device("", radio=RadioTimings(boot_s=2.0))
    device.reboot()
    await asyncio.sleep(1.5)
    device.reboot()  # a second reset while booting: its boot takes its own 2 s
    await asyncio.sleep(1.0)
    assert not device.advertising
    await asyncio.sleep(1.1)
    assert device.advertising


# --- no-reset, flash-fail, erase:N% in progressive mode --------------------------------------


async def _update(device: SimDevice, image: bytes, *, flags: int = 0) -> SimPeer:
    """A plain host on the device's radio: START, the image at its credit, FINISH."""
    peer, link = await connect(device)
    await device.write(link, p.encode(p.CmdOtaStart(len(image), p.crc32(image), 232, flags)))

    def acked() -> int:
        return max(
            (m.next_expected_offset for m in peer.messages if isinstance(m, p.MsgOtaAck)),
            default=0,
        )

    for _ in range(1000):
        if any(isinstance(m, p.MsgOtaReady | p.MsgError) for m in peer.messages):
            break
        await asyncio.sleep(0.05)
    for offset in range(0, len(image), 232):
        for _ in range(1000):
            if offset < acked() + 16 * 232 or not link.alive:
                break
            await asyncio.sleep(0.005)
        if not link.alive or any(isinstance(m, p.MsgError) for m in peer.messages):
            return peer
        await device.write(link, p.encode(p.CmdOtaData(offset, image[offset : offset + 232])))
    for _ in range(1000):
        if acked() == len(image) or not link.alive:
            break
        await asyncio.sleep(0.005)
    if link.alive:
        await device.write(link, p.encode(p.CmdOtaFinish()))
    await asyncio.sleep(1)
    return peer


@pytest.mark.asyncio
async def test_no_reset_answers_done_and_never_resets() -> None:
    image = bytes(range(256)) * 40
    device = make_device("no-reset")
    peer = await _update(device, image)
    assert p.MsgOtaDone(p.crc32(image)) in peer.messages
    await asyncio.sleep(60)
    assert peer.lost == [] and device.link is not None  # the link stays up, no reset
    assert device.firmware.state == p.OtaState.COMPLETE
    assert device.firmware.active.data == IMAGE  # still the old image
    assert applied(device) == [
        ("no-reset", "DONE sent; the device stays in COMPLETE on its old image")
    ]
    device.reboot()  # something else resets it: the bootloader switches after all
    assert device.firmware.active.data == image


@pytest.mark.asyncio
async def test_one_flash_failure_is_retried_two_are_a_flash_error() -> None:
    image = bytes(range(256)) * 40
    device = make_device("flash-fail@offset:3000")
    await _update(device, image)
    await asyncio.sleep(3)
    assert device.firmware.active.data == image  # the retry worked
    device = make_device("flash-fail:2@offset:3000")
    peer = await _update(device, image)
    errors = [(e.code, e.command) for e in peer.messages if isinstance(e, p.MsgError)]
    assert errors[0] == (p.ErrorCode.FLASH_ERROR, p.MsgType.CMD_OTA_DATA)
    # the DATA still in flight then finds no session
    assert set(errors[1:]) <= {(p.ErrorCode.BAD_STATE, p.MsgType.CMD_OTA_DATA)}
    assert device.firmware.state == p.OtaState.ERROR
    assert device.firmware.active.data == IMAGE
    assert fired(device) == [("flash-fail:2", "offset:3000")]


@pytest.mark.asyncio
async def test_set_faults_disarms_flash_failures() -> None:
    device = make_device("flash-fail:5")
    assert device.firmware.flash.fail_next == 5
    device.set_faults("")
    assert device.firmware.flash.fail_next == 0


@pytest.mark.asyncio
async def test_erase_percent_in_a_progressive_erase_counts_pages_erased_during_the_transfer() -> (
    None
):
    image = bytes(range(256)) * 64  # 16384 bytes: 4 pages
    device = make_device("drop@erase:50%", progressive_erase=True)
    peer = await _update(device, image, flags=p.StartFlag.PROGRESSIVE_ERASE)
    assert isinstance(peer.messages[0], p.MsgOtaReady)  # at once: no erase first
    assert not any(isinstance(m, p.MsgOtaProgress) for m in peer.messages)
    (record,) = device.fault_log
    assert (record.fault, record.trigger) == ("drop", "erase:50%")
    # it fired when the second of four pages was erased, during the transfer: the link
    # dropped there, so the chunks for pages 2 and 3 never came and nothing erased them
    assert device.firmware.flash.erases == 2
    assert 4096 < device.firmware.status().next_expected_offset <= 8192


@pytest.mark.asyncio
async def test_slow_erase_does_not_slow_a_progressive_erase() -> None:
    image = bytes(range(256)) * 16  # one page
    device = make_device("slow-erase:30s", progressive_erase=True)
    peer = await _update(device, image, flags=p.StartFlag.PROGRESSIVE_ERASE)
    assert p.MsgOtaDone(p.crc32(image)) in peer.messages

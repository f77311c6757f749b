"""Fault plans: the text form (parse, canonical spelling, errors) and what FaultInjector does
to a SimDevice when a fault fires. The device is driven through its radio API with a small
in-test peer, on looptime's virtual clock."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import MsgType
from smartball_sim.device import ConnectRefusal, ConnectRefused, RadioTimings, SimDevice, SimLink
from smartball_sim.faults import (
    AT_POINTS,
    EFFECTS,
    PROFILES,
    TRIGGERS,
    Effect,
    Fault,
    FaultPlan,
    FaultSpecError,
    Trigger,
    TriggerKind,
)
from tests.hosts import SimPeer

# Virtual time: simulated seconds cost no wall time, and timings are exact.
pytestmark = pytest.mark.looptime

# --- parsing: every effect and every trigger -----------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("drop", Fault(Effect.DROP)),
        ("reboot", Fault(Effect.REBOOT)),
        ("adv-pause:20s", Fault(Effect.ADV_PAUSE, seconds=20.0)),
        ("adv-pause:1.5", Fault(Effect.ADV_PAUSE, seconds=1.5)),  # seconds by default
        ("adv-pause:300ms", Fault(Effect.ADV_PAUSE, seconds=0.3)),
        ("race:1.5s", Fault(Effect.RACE, seconds=1.5)),
        ("stale-cache", Fault(Effect.STALE_CACHE)),
        ("lose", Fault(Effect.LOSE, count=1)),
        ("lose:3", Fault(Effect.LOSE, count=3)),
        ("lose:MSG_OTA_READY", Fault(Effect.LOSE, msg_type=MsgType.MSG_OTA_READY)),
        ("lose:msg_ota_ack", Fault(Effect.LOSE, msg_type=MsgType.MSG_OTA_ACK)),
        ("write-drop", Fault(Effect.WRITE_DROP)),
        ("write-drop:2", Fault(Effect.WRITE_DROP, count=2)),
        ("connect-fail:3", Fault(Effect.CONNECT_FAIL, count=3)),
        ("connect-timeout", Fault(Effect.CONNECT_TIMEOUT)),
        ("corrupt:4", Fault(Effect.CORRUPT, count=4)),
        ("slow-erase:30s", Fault(Effect.SLOW_ERASE, seconds=30.0)),
        ("flaky:2%", Fault(Effect.FLAKY, percent=2.0)),
        ("flaky:0.5%", Fault(Effect.FLAKY, percent=0.5)),
        ("no-reset", Fault(Effect.NO_RESET)),
        ("flash-fail", Fault(Effect.FLASH_FAIL, count=1)),
        ("flash-fail:2", Fault(Effect.FLASH_FAIL, count=2)),
        ("flip-staged:0", Fault(Effect.FLIP_STAGED, count=0)),
        ("flip-staged:5000", Fault(Effect.FLIP_STAGED, count=5000)),
        ("swap-cut", Fault(Effect.SWAP_CUT, count=1)),
        ("swap-cut:4", Fault(Effect.SWAP_CUT, count=4)),
    ],
)
def test_parse_each_effect(spec: str, fault: Fault) -> None:
    assert FaultPlan.parse(spec) == FaultPlan((fault,))


def test_every_effect_is_covered() -> None:
    covered = {
        "drop",
        "reboot",
        "adv-pause",
        "race",
        "stale-cache",
        "lose",
        "write-drop",
        "connect-fail",
        "connect-timeout",
        "corrupt",
        "slow-erase",
        "flaky",
        "no-reset",
        "flash-fail",
        "flip-staged",
        "swap-cut",
    }
    assert set(EFFECTS) == covered  # a new effect needs a case in test_parse_each_effect


@pytest.mark.parametrize(
    ("text", "trigger"),
    [
        ("erase:50%", Trigger(TriggerKind.ERASE, 50)),
        ("erase:0%", Trigger(TriggerKind.ERASE, 0)),
        ("erase:100%", Trigger(TriggerKind.ERASE, 100)),
        ("erase:12.5", Trigger(TriggerKind.ERASE, 12.5)),
        ("offset:200000", Trigger(TriggerKind.OFFSET, 200000)),
        ("offset:0", Trigger(TriggerKind.OFFSET, 0)),
        ("cmd:CMD_OTA_DATA#3", Trigger(TriggerKind.CMD, 3, MsgType.CMD_OTA_DATA)),
        ("cmd:cmd_ota_finish", Trigger(TriggerKind.CMD, 1, MsgType.CMD_OTA_FINISH)),
        ("t:2s", Trigger(TriggerKind.T, 2.0)),
        ("t:250ms", Trigger(TriggerKind.T, 0.25)),
        ("connect:2", Trigger(TriggerKind.CONNECT, 2)),
        ("msg:MSG_OTA_DONE", Trigger(TriggerKind.MSG, 1, MsgType.MSG_OTA_DONE)),
        ("msg:msg_ota_ack#4", Trigger(TriggerKind.MSG, 4, MsgType.MSG_OTA_ACK)),
        ("at:verified", Trigger(TriggerKind.AT, 0)),
        ("at:confirmed", Trigger(TriggerKind.AT, 1)),
    ],
)
def test_parse_each_trigger(text: str, trigger: Trigger) -> None:
    (fault,) = FaultPlan.parse(f"drop@{text}").faults
    assert fault == Fault(Effect.DROP, trigger)


def test_every_trigger_is_covered() -> None:
    assert set(TRIGGERS) == {"erase", "offset", "cmd", "msg", "t", "connect", "at"}


def test_empty_specs_are_empty_plans() -> None:
    for spec in (None, "", "  ", ",", " , ,"):
        plan = FaultPlan.parse(spec)
        assert plan == FaultPlan()
        assert not plan
        assert str(plan) == ""


def test_plan_addition_and_truth() -> None:
    a, b = FaultPlan.parse("drop"), FaultPlan.parse("reboot@offset:5")
    assert a and b
    assert (a + b).faults == (
        Fault(Effect.DROP),
        Fault(Effect.REBOOT, Trigger(TriggerKind.OFFSET, 5)),
    )


# --- canonical text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("drop", "drop"),
        (" drop , reboot ", "drop,reboot"),
        ("adv-pause:20", "adv-pause:20s"),
        ("adv-pause:20.0s", "adv-pause:20s"),
        ("adv-pause:1500ms", "adv-pause:1.5s"),
        ("adv-pause:1.1ms", "adv-pause:0.0011s"),
        ("adv-pause:0.00001s", "adv-pause:0.00001s"),
        ("adv-pause:1234567s", "adv-pause:1234567s"),
        ("adv-pause:1.2345678s", "adv-pause:1.2345678s"),
        ("lose:1", "lose"),
        ("lose:msg_ota_ready", "lose:MSG_OTA_READY"),
        ("write-drop:01", "write-drop"),
        ("drop@erase:50", "drop@erase:50%"),
        ("drop@erase:12.50%", "drop@erase:12.5%"),
        ("drop@cmd:cmd_ota_data", "drop@cmd:CMD_OTA_DATA#1"),
        ("drop@t:2000ms", "drop@t:2s"),
        ("race:1.5s@connect:02", "race:1.5s@connect:2"),
        ("drop-in-erase", "drop@erase:50%"),
        ("drop-in-transfer,reboot", "drop@offset:100000,reboot"),
        ("reboot-in-transfer", "reboot@offset:100000"),
        ("field-linux", PROFILES["field-linux"]),
    ],
)
def test_canonical_spelling(spec: str, canonical: str) -> None:
    plan = FaultPlan.parse(spec)
    assert str(plan) == canonical
    assert FaultPlan.parse(str(plan)) == plan


def test_profiles_expand() -> None:
    plan = FaultPlan.parse("field-linux")
    assert [f.effect for f in plan.faults] == [
        "slow-erase",
        "drop",
        "race",
        "connect-fail",
        "drop",
        "adv-pause",
    ]
    assert plan.faults[0] == Fault(Effect.SLOW_ERASE, seconds=30.0)
    assert plan.faults[2] == Fault(Effect.RACE, Trigger(TriggerKind.CONNECT, 2), seconds=1.5)
    assert plan.faults[5] == Fault(
        Effect.ADV_PAUSE, Trigger(TriggerKind.OFFSET, 247354), seconds=20.0
    )
    mixed = FaultPlan.parse("lose:2,drop-in-erase,reboot-in-transfer")
    assert mixed.faults == (
        Fault(Effect.LOSE, count=2),
        Fault(Effect.DROP, Trigger(TriggerKind.ERASE, 50)),
        Fault(Effect.REBOOT, Trigger(TriggerKind.OFFSET, 100000)),
    )
    for name, spec in PROFILES.items():
        assert FaultPlan.parse(name) == FaultPlan.parse(spec)


# hypothesis: any Fault built from EFFECTS and TRIGGERS survives str -> parse

_seconds = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
_count = st.integers(min_value=1, max_value=10**9)
_command_types = st.sampled_from([t for t in MsgType if t in p.COMMAND_TYPES]).map(int)
_device_types = st.sampled_from([t for t in MsgType if t not in p.COMMAND_TYPES]).map(int)


def _trigger(kind: str) -> st.SearchStrategy[Trigger]:
    match kind:
        case "erase":
            return st.floats(min_value=0, max_value=100).map(
                lambda v: Trigger(TriggerKind.ERASE, v)
            )
        case "offset":
            return st.integers(min_value=0, max_value=2**32).map(
                lambda v: Trigger(TriggerKind.OFFSET, v)
            )
        case "cmd":
            return st.builds(lambda n, t: Trigger(TriggerKind.CMD, n, t), _count, _command_types)
        case "msg":
            return st.builds(lambda n, t: Trigger(TriggerKind.MSG, n, t), _count, _device_types)
        case "t":
            return _seconds.map(lambda v: Trigger(TriggerKind.T, v))
        case "connect":
            return _count.map(lambda v: Trigger(TriggerKind.CONNECT, v))
        case "at":
            return st.sampled_from(range(len(AT_POINTS))).map(lambda v: Trigger(TriggerKind.AT, v))
    raise AssertionError(kind)


triggers = st.one_of(st.just(Trigger()), *(_trigger(k) for k in TRIGGERS))


@st.composite
def faults(draw: st.DrawFn) -> Fault:
    effect = draw(st.sampled_from(list(EFFECTS)))
    trigger = draw(triggers)
    kind = EFFECTS[effect][0]
    if kind == "seconds":
        return Fault(effect, trigger, seconds=draw(_seconds))
    if kind == "count":
        return Fault(effect, trigger, count=draw(_count))
    if kind == "count_or_type":
        if draw(st.booleans()):
            return Fault(effect, trigger, msg_type=draw(_device_types))
        return Fault(effect, trigger, count=draw(_count))
    if kind == "offset":
        return Fault(effect, trigger, count=draw(st.integers(0, 2**20)))
    if kind == "percent":
        percent = draw(st.decimals(min_value="0.001", max_value=100, places=3))
        return Fault(effect, trigger, percent=float(percent))
    assert kind is None
    return Fault(effect, trigger)


@settings(max_examples=300)
@given(plan=st.lists(faults(), max_size=5).map(lambda fs: FaultPlan(tuple(fs))))
def test_round_trip_of_generated_plans(plan: FaultPlan) -> None:
    text = str(plan)
    assert not re.search(r"\de[+-]?\d", text)  # no exponent form: the parser rejects it
    assert FaultPlan.parse(text) == plan
    assert str(FaultPlan.parse(text)) == text


@settings(max_examples=200)
@given(fault=faults())
def test_round_trip_of_one_fault(fault: Fault) -> None:
    (parsed,) = FaultPlan.parse(str(fault)).faults
    assert parsed == fault


# --- malformed specs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("explode", ["'explode'", "unknown effect"]),
        ("drop,explode@erase:5%", ["'explode'"]),
        ("slow-erase", ["needs a duration"]),
        ("adv-pause", ["needs a duration"]),
        ("race@connect:2", ["needs a duration"]),
        ("adv-pause:fast", ["'fast'", "not a duration"]),
        ("adv-pause:-1s", ["'-1s'"]),
        ("adv-pause:1e3s", ["'1e3s'"]),
        ("adv-pause:2m", ["'2m'"]),
        ("drop:3", ["drop takes no argument"]),
        ("stale-cache:1", ["takes no argument"]),
        ("drop:", ["takes no argument"]),
        ("lose:", ["nothing after ':'"]),
        ("drop@", ["bad trigger ''"]),
        ("drop@later", ["bad trigger 'later'"]),
        ("drop@erase", ["bad trigger 'erase'"]),
        ("drop@erase:", ["bad trigger 'erase:'"]),
        ("drop@soon:5", ["bad trigger 'soon:5'"]),
        ("drop@erase:150%", ["'150%'", "0% to 100%"]),
        ("drop@erase:-5%", ["'-5%'"]),
        ("drop@erase:half", ["'half'"]),
        ("drop@erase:nan%", ["'nan%'"]),
        ("drop@offset:-1", ["offset '-1'"]),
        ("drop@offset:1k", ["offset '1k'"]),
        ("drop@offset:²", ["offset '²'"]),
        ("drop@t:soon", ["'soon'", "not a duration"]),
        ("drop@connect:0", ["'0'", "positive whole number"]),
        ("drop@connect:²", ["'²'"]),
        ("drop@cmd:CMD_BOGUS#2", ["unknown message type 'CMD_BOGUS'"]),
        ("drop@cmd:CMD_INFO#0", ["'0'", "positive whole number"]),
        ("drop@cmd:CMD_INFO#", ["''", "positive whole number"]),
        ("drop@cmd:#2", ["unknown message type ''"]),
        ("reboot@msg:CMD_INFO", ["CMD_INFO is a host command, not a device message"]),
        ("reboot@msg:MSG_OTA_DONE#0", ["'0'", "positive whole number"]),
        ("lose:MSG_BOGUS", ["unknown message type 'MSG_BOGUS'"]),
        ("lose:0", ["'0'", "positive whole number"]),
        ("write-drop:0", ["'0'", "positive whole number"]),
        ("connect-fail:x", ["'x'"]),
        ("corrupt:1.5", ["'1.5'"]),
        ("drop@erase:50%@offset:3", ["'50%@offset:3'"]),
    ],
)
def test_malformed_spec_names_the_bad_part(spec: str, names: list[str]) -> None:
    with pytest.raises(FaultSpecError) as info:
        FaultPlan.parse(spec)
    message = str(info.value)
    bad_part = spec.split(",")[-1]  # the bad fault is the last one in every case
    assert f"fault {bad_part!r}" in message
    for name in names:
        assert name in message


def test_unknown_effect_lists_effects_and_profiles() -> None:
    with pytest.raises(FaultSpecError) as info:
        FaultPlan.parse("field-windows")
    for name in (*EFFECTS, *PROFILES):
        assert name in str(info.value)


def test_fault_spec_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        FaultPlan.parse("drop@erase:101%")


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

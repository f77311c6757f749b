"""Fault plans as text: parsing every effect and every trigger, the canonical spelling, the
profiles, a round trip of generated plans (hypothesis) and the errors of malformed specs.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import MsgType
from smartball_sim.fault_injector import (
    CutSwap,
    DeviceEffect,
    DropLink,
    FailFlash,
    FlipStaged,
    PauseAdvertising,
    Reboot,
    SlowErase,
    device_effect,
)
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


# --- what a fired fault makes the device do -------------------------------------------------

DEVICE_EFFECTS: list[tuple[str, DeviceEffect]] = [
    ("drop", DropLink("link dropped (fault)")),
    ("reboot", Reboot()),
    ("adv-pause:7s", PauseAdvertising(7.0)),
    ("slow-erase:40s", SlowErase(40.0)),
    ("flash-fail:3", FailFlash(3)),
    ("flip-staged:5000", FlipStaged(5000)),
    ("swap-cut:4", CutSwap(4)),
]


@pytest.mark.parametrize(("spec", "effect"), DEVICE_EFFECTS)
def test_a_fault_the_device_acts_on_becomes_its_effect_with_its_argument(
    spec: str, effect: DeviceEffect
) -> None:
    (fault,) = FaultPlan.parse(spec).faults
    assert device_effect(fault) == effect


def test_every_other_effect_is_the_injectors_own_and_asks_nothing_of_the_device() -> None:
    acted_on = {FaultPlan.parse(spec).faults[0].effect for spec, _ in DEVICE_EFFECTS}
    for effect in Effect:
        if effect not in acted_on:
            assert device_effect(Fault(effect)) is None, effect

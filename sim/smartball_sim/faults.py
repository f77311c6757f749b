"""Fault plans: the field's failures as data, and their short text form.

A plan is a list of faults; each has an *effect* and a *trigger*. The text form is
``effect[:arg][@trigger]`` joined by commas, for example::

    slow-erase:30s,drop@erase:50%,race@connect:2,reboot@offset:200000

It round-trips: ``str(FaultPlan.parse(spec))`` gives the canonical spelling of ``spec``.
A fault without a trigger is armed from the start. Every fault fires once. See
``docs/faults.md`` for the full language.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from decimal import Decimal

from pytest_smartball.contract import codec as p


class FaultSpecError(ValueError):
    """A fault spec that cannot be parsed; the message says which part and why."""


class Effect(enum.StrEnum):
    """What goes wrong. The values are the names in the text form."""

    DROP = "drop"
    REBOOT = "reboot"
    NO_RESET = "no-reset"
    ADV_PAUSE = "adv-pause"
    RACE = "race"
    STALE_CACHE = "stale-cache"
    LOSE = "lose"
    WRITE_DROP = "write-drop"
    CONNECT_FAIL = "connect-fail"
    CONNECT_TIMEOUT = "connect-timeout"
    CORRUPT = "corrupt"
    SLOW_ERASE = "slow-erase"
    FLASH_FAIL = "flash-fail"
    FLAKY = "flaky"
    FLIP_STAGED = "flip-staged"
    SWAP_CUT = "swap-cut"


class ArgKind(enum.StrEnum):
    """The argument an effect takes (an effect without one has ``None``)."""

    SECONDS = "seconds"
    COUNT = "count"
    COUNT_OR_TYPE = "count_or_type"  # a number of messages, or one message type
    PERCENT = "percent"
    OFFSET = "offset"  # a byte offset, 0 or more; always written


class TriggerKind(enum.StrEnum):
    """When a fault fires. The values are the names in the text form (NOW has none)."""

    NOW = "now"
    ERASE = "erase"
    OFFSET = "offset"
    CMD = "cmd"
    MSG = "msg"
    T = "t"
    CONNECT = "connect"
    AT = "at"


#: The points of a signed update an ``at:`` trigger names (docs/protocol.md section 16).
AT_POINTS = (
    # FINISH: the staged image passed its CRC-32 and SHA-256; PENDING not yet persisted
    "verified",
    # CMD_OTA_CONFIRM: the confirm and the counter persisted; its MSG_INFO not yet sent
    "confirmed",
)


#: The faults of a signed update's windows (docs/protocol.md section 16): a tampering the
#: device must refuse and a power cut in the bootloader's swap. They act on a signed-only
#: ball only (a v1 ball runs the tampered image: it checks only the CRC-32), so generated
#: plans and the fault classes leave them out; tests ask for them by name.
SIGNED_UPDATE_EFFECTS = frozenset({Effect.FLIP_STAGED, Effect.SWAP_CUT})

# effect -> (argument kind, help)
EFFECTS: dict[Effect, tuple[ArgKind | None, str]] = {
    Effect.DROP: (None, "the link drops; the device keeps its state and advertises again"),
    Effect.REBOOT: (
        None,
        "the device resets: OTA session lost, not advertising for its boot time",
    ),
    Effect.NO_RESET: (
        None,
        "the next MSG_OTA_DONE is not followed by a reset: the device stays in COMPLETE on "
        "its old image, connected, until something else resets it",
    ),
    Effect.ADV_PAUSE: (
        ArgKind.SECONDS,
        "the device stops advertising for N s (after dropping any link)",
    ),
    Effect.RACE: (
        ArgKind.SECONDS,
        "BlueZ race: the next connect reports services resolved before NUS is exported, "
        "so its GATT database lacks NUS; connects within N s of it fare the same",
    ),
    Effect.STALE_CACHE: (
        None,
        "the next connect's discovery returns a stale GATT cache without NUS "
        "(until the host clears its cache)",
    ),
    Effect.LOSE: (
        ArgKind.COUNT_OR_TYPE,
        "the next N device messages (or the next one of a type) never arrive",
    ),
    Effect.WRITE_DROP: (ArgKind.COUNT, "the next N host writes are silently lost"),
    Effect.CONNECT_FAIL: (
        ArgKind.COUNT,
        "the next N connect attempts fail with br-connection-canceled",
    ),
    Effect.CONNECT_TIMEOUT: (
        ArgKind.COUNT,
        "the next N connect attempts never complete (the host times out)",
    ),
    Effect.CORRUPT: (ArgKind.COUNT, "the next N device messages arrive with one byte flipped"),
    Effect.SLOW_ERASE: (
        ArgKind.SECONDS,
        "the whole staging erase takes N s (field: 15-40 s); no effect on a progressive erase",
    ),
    Effect.FLASH_FAIL: (
        ArgKind.COUNT,
        "the next N flash operations (page erases or chunk writes) fail; the firmware "
        "retries each once, so two in a row end the session with FLASH_ERROR",
    ),
    Effect.FLAKY: (
        ArgKind.PERCENT,
        "from then on, each erased page and each accepted chunk drops the link with "
        "probability N % (seeded by the device's seed)",
    ),
    Effect.FLIP_STAGED: (
        ArgKind.OFFSET,
        "the staged image's byte at offset N is flipped and four bytes beside it changed so "
        "that its CRC-32 stays the same: once every byte is in flash (before FINISH's "
        "verify), or at once if the device already holds a verified image (after DONE); "
        "only a SHA-256 of the staged flash notices",
    ),
    Effect.SWAP_CUT: (
        ArgKind.COUNT,
        "the power fails after N steps (3 per page) of the bootloader's next swap; at the "
        "next boot the swap resumes where its trailer says",
    ),
}

TRIGGERS: dict[TriggerKind, str] = {
    TriggerKind.ERASE: "N % of the session's staging pages are erased, in either erase mode "
    "(erase:50%)",
    TriggerKind.OFFSET: "the device has accepted N bytes of the image  (offset:200000)",
    TriggerKind.CMD: "the Nth command of a type arrives, before the device handles it "
    "(cmd:CMD_OTA_DATA#3)",
    TriggerKind.MSG: "the Nth device message of a type has left the radio for the host "
    "(msg:MSG_OTA_DONE#1)",
    TriggerKind.T: "N s after the next connection is made  (t:2s)",
    TriggerKind.CONNECT: "the Nth connection: connect-fail/-timeout, race and stale-cache "
    "shape the Nth attempt, other effects act once it is made  (connect:2)",
    TriggerKind.AT: "a point of a signed update: verified (FINISH's checks passed, PENDING not "
    "yet persisted), confirmed (CONFIRM persisted, its INFO not yet sent)  (at:verified)",
}


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: TriggerKind = TriggerKind.NOW
    value: float = 0
    msg_type: int | None = None

    def __post_init__(self) -> None:
        # Trigger("erase", 50) reads well in tests and docs: the name becomes the enum
        object.__setattr__(self, "kind", TriggerKind(self.kind))

    def __str__(self) -> str:
        match self.kind:
            case TriggerKind.NOW:
                return ""
            case TriggerKind.ERASE:
                return f"erase:{_num(self.value)}%"
            case TriggerKind.CMD | TriggerKind.MSG:
                assert self.msg_type is not None
                return f"{self.kind}:{p.MsgType(self.msg_type).name}#{int(self.value)}"
            case TriggerKind.T:
                return f"t:{_num(self.value)}s"
            case TriggerKind.AT:
                return f"at:{AT_POINTS[int(self.value)]}"
            case _:
                return f"{self.kind}:{int(self.value)}"


@dataclass(frozen=True, slots=True)
class Fault:
    effect: Effect
    trigger: Trigger = field(default_factory=Trigger)
    seconds: float = 0.0
    count: int = 1
    msg_type: int | None = None  # for "lose": lose the next message of this type
    percent: float = 0.0  # for "flaky"

    def __post_init__(self) -> None:
        # Fault("drop") reads well in tests and docs: the name becomes the enum
        object.__setattr__(self, "effect", Effect(self.effect))

    def __str__(self) -> str:
        kind = EFFECTS[self.effect][0]
        text = str(self.effect)
        if kind is ArgKind.SECONDS:
            text += f":{_num(self.seconds)}s"
        elif kind is ArgKind.PERCENT:
            text += f":{_num(self.percent)}%"
        elif self.msg_type is not None:
            text += f":{p.MsgType(self.msg_type).name}"
        elif kind is ArgKind.OFFSET:
            text += f":{self.count}"
        elif kind is not None and self.count != 1:
            text += f":{self.count}"
        trigger = str(self.trigger)
        return f"{text}@{trigger}" if trigger else text


@dataclass(frozen=True, slots=True)
class FaultPlan:
    faults: tuple[Fault, ...] = ()

    def __str__(self) -> str:
        return ",".join(str(f) for f in self.faults)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def __add__(self, other: FaultPlan) -> FaultPlan:
        return FaultPlan(self.faults + other.faults)

    @classmethod
    def parse(cls, spec: str | None) -> FaultPlan:
        """Parse a spec or a profile name; raises FaultSpecError naming the bad part."""
        if not spec or not spec.strip():
            return cls()
        faults: list[Fault] = []
        for part in (s.strip() for s in spec.split(",")):
            if not part:
                continue
            if part in PROFILES:
                faults.extend(cls.parse(PROFILES[part]).faults)
                continue
            faults.append(_parse_fault(part))
        return cls(tuple(faults))


#: Named conditions. ``field-linux`` is what ``ota-ble-linux-plan.md`` observed: a 15-40 s
#: erase during which the link dropped, the services race on reconnect, a
#: ``br-connection-canceled`` connect, and a device that vanished late in the transfer
#: (the field log stopped at 247354 of 323194 bytes).
PROFILES: dict[str, str] = {
    "field-linux": (
        "slow-erase:30s,drop@erase:50%,race:1.5s@connect:2,connect-fail@connect:2,"
        "drop@offset:247354,adv-pause:20s@offset:247354"
    ),
    "drop-in-erase": "drop@erase:50%",
    "drop-in-transfer": "drop@offset:100000",
    "reboot-in-transfer": "reboot@offset:100000",
    "flaky": "flaky:1%",
}


def _num(value: float) -> str:
    """The shortest decimal that parses back to ``value`` exactly, never in exponent form
    (``:g`` gave ``1.23457`` for 1.2345678 and ``1e-05``, which the parser rejects)."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)?$", re.ASCII)


def _seconds(text: str, where: str) -> float:
    m = _SECONDS.match(text)
    if not m:
        raise FaultSpecError(f"{where}: {text!r} is not a duration (e.g. 20s, 1.5s, 300ms)")
    value = Decimal(m.group(1))
    return float(value / 1000 if m.group(2) == "ms" else value)


_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$", re.ASCII)


def _percent(text: str, where: str) -> float:
    m = _PERCENT.match(text)
    value = float(Decimal(m.group(1))) if m else -1.0
    if not 0 < value <= 100:
        raise FaultSpecError(f"{where}: {text!r} is not a rate from 0% (excluded) to 100%")
    return value


def _is_number(text: str) -> bool:
    # str.isdigit() is also true for "²", which int() rejects
    return text.isascii() and text.isdigit()


def _count(text: str, where: str) -> int:
    if not _is_number(text) or int(text) < 1:
        raise FaultSpecError(f"{where}: {text!r} is not a positive whole number")
    return int(text)


def _msg_type(text: str, where: str) -> int:
    try:
        return p.MsgType[text.upper()]
    except KeyError:
        names = ", ".join(t.name for t in p.MsgType)
        raise FaultSpecError(f"{where}: unknown message type {text!r} (one of {names})") from None


def _parse_trigger(text: str, where: str) -> Trigger:
    name, _, arg = text.partition(":")
    if name not in TRIGGERS or not arg:
        raise FaultSpecError(
            f"{where}: bad trigger {text!r}; use erase:50%, offset:N, cmd:TYPE#N, msg:TYPE#N, "
            "t:2s, connect:N or at:POINT"
        )
    kind = TriggerKind(name)
    if kind is TriggerKind.ERASE:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%?", arg, re.ASCII)
        percent = float(Decimal(m.group(1))) if m else -1.0
        if not 0 <= percent <= 100:
            raise FaultSpecError(f"{where}: erase trigger {arg!r} must be 0% to 100%")
        return Trigger(kind, percent)
    if kind in (TriggerKind.CMD, TriggerKind.MSG):
        type_name, hash_sign, nth = arg.partition("#")
        msg_type = _msg_type(type_name, where)
        if kind is TriggerKind.CMD and msg_type not in p.COMMAND_TYPES:
            raise FaultSpecError(f"{where}: {type_name} is not a command the device receives")
        if kind is TriggerKind.MSG and msg_type in p.COMMAND_TYPES:
            raise FaultSpecError(f"{where}: {type_name} is a host command, not a device message")
        return Trigger(kind, _count(nth if hash_sign else "1", where), msg_type)
    if kind is TriggerKind.T:
        return Trigger(kind, _seconds(arg, where))
    if kind is TriggerKind.AT:
        if arg not in AT_POINTS:
            raise FaultSpecError(f"{where}: at:{arg}: one of {', '.join(AT_POINTS)}")
        return Trigger(kind, AT_POINTS.index(arg))
    if kind is TriggerKind.OFFSET:
        if not _is_number(arg):
            raise FaultSpecError(f"{where}: offset {arg!r} is not a byte count")
        return Trigger(kind, int(arg))
    return Trigger(kind, _count(arg, where))


def _parse_fault(part: str) -> Fault:
    where = f"fault {part!r}"
    body, at, trigger_text = part.partition("@")
    name, colon, arg = body.partition(":")
    if name not in EFFECTS:
        known = ", ".join(EFFECTS) + "; profiles: " + ", ".join(PROFILES)
        raise FaultSpecError(f"{where}: unknown effect {name!r} (known: {known})")
    effect = Effect(name)
    # "drop@" or "lose:" is a typo, not the default: _parse_trigger rejects an empty trigger
    trigger = _parse_trigger(trigger_text, where) if at else Trigger()
    kind = EFFECTS[effect][0]
    if kind is None:
        if colon:
            raise FaultSpecError(f"{where}: {effect} takes no argument")
        return Fault(effect, trigger)
    if colon and not arg:
        raise FaultSpecError(f"{where}: nothing after ':' (omit it, or give {effect} a value)")
    if kind is ArgKind.SECONDS:
        if not arg:
            raise FaultSpecError(f"{where}: {effect} needs a duration, e.g. {effect}:20s")
        return Fault(effect, trigger, seconds=_seconds(arg, where))
    if kind is ArgKind.PERCENT:
        if not arg:
            raise FaultSpecError(f"{where}: {effect} needs a rate, e.g. {effect}:2%")
        return Fault(effect, trigger, percent=_percent(arg, where))
    if kind is ArgKind.OFFSET:
        if not _is_number(arg):
            raise FaultSpecError(f"{where}: {effect} needs a byte offset, e.g. {effect}:1000")
        return Fault(effect, trigger, count=int(arg))
    if not arg:
        return Fault(effect, trigger)
    # "+3", "1_000", "-1": a count meant, not a message type (those are names).
    if kind is ArgKind.COUNT_OR_TYPE and not _is_number(arg) and arg[0].isalpha():
        msg_type = _msg_type(arg, where)
        if msg_type in p.COMMAND_TYPES:
            raise FaultSpecError(f"{where}: {arg} is a host command, not a device message")
        return Fault(effect, trigger, msg_type=msg_type)
    return Fault(effect, trigger, count=_count(arg, where))

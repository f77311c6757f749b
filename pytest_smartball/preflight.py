"""Preflight for ``--device=real``: is the bench ready, before any test runs?

In order, stopping at the first failure: BlueZ answers on the system D-Bus and the
adapter is powered; the BlueZ version (known GATT bugs are warnings, with the reason); the
firmware images are valid; every wanted SmartBall advertises within the scan timeout (else
the names and addresses seen instead); each one answers ``CMD_INFO`` (which also returns
it to idle with ``CMD_OTA_ABORT``), and the image fits its staging area.

The decisions are pure functions of the answers (:func:`check`), so they are unit-tested
with stubbed answers; :func:`run` gathers the answers, each step bounded by a timeout, and
asks :func:`check` after every step. Every failure is one sentence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import bluez
from .bluez import AdapterInfo, BluezUnavailable
from .contract import codec as p
from .image import FirmwareImage, ImageError, load_image
from .known_state import idle_and_info
from .link import BleBackend, DeviceNotFound, LinkError, LinkSettings, Sighting, observe

#: How long the scan waits for the wanted devices (``--ble-scan-timeout``).
DEFAULT_SCAN_TIMEOUT_S = LinkSettings().scan_timeout_s
#: A scan by name goes on at least this long after a match, to notice a second SmartBall
#: with the same name (a bench of several boards run without addresses).
NAME_SCAN_MIN_S = 3.0
#: Connect, ABORT and INFO, per device.
INFO_TIMEOUT_S = 30.0
#: Each reply within that.
INFO_REPLY_S = 5.0
#: Devices listed when the wanted one was not seen.
SEEN_LISTED = 8


#: One advertiser the scan saw (what the decisions below look at).
Seen = Sighting


@dataclass(frozen=True, slots=True)
class Wanted:
    """The devices a run needs: by address (one per xdist worker), or one by name."""

    name: str
    addresses: tuple[str, ...] = ()

    def describe(self) -> str:
        if not self.addresses:
            return f"a SmartBall named {self.name!r}"
        if len(self.addresses) == 1:
            return f"the SmartBall at {self.addresses[0]}"
        return f"{len(self.addresses)} SmartBalls ({', '.join(self.addresses)})"


@dataclass(slots=True)
class Findings:
    """What preflight found: an error (one sentence) or the bench's facts."""

    error: str | None = None
    #: The error is about BlueZ or the adapter (the simulator would need neither).
    no_radio: bool = False
    warnings: list[str] = field(default_factory=list)
    adapter: AdapterInfo | None = None
    bluez_version: tuple[int, int] | None = None
    found: list[Seen] = field(default_factory=list)
    infos: dict[str, p.MsgInfo] = field(default_factory=dict)  # by upper-case address
    image: FirmwareImage | None = None
    baseline: FirmwareImage | None = None
    #: Checks passed so far, one line each (shown while preflight runs).
    passed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


# --- the decisions (pure) ---------------------------------------------------------------


def plan_devices(
    addresses: Sequence[str], workers: int
) -> tuple[tuple[str, ...], str | None, str | None]:
    """The addresses a real run uses, one per pytest-xdist worker (``workers`` is 0
    without xdist: one device); an error when there are too few, a note when some are
    left out. No address means one device found by name."""
    upper = [a.upper() for a in addresses]
    dupes = sorted({a for a in addresses if upper.count(a.upper()) > 1})
    if dupes:
        return (), f"--ble-address lists {', '.join(dupes)} more than once", None
    need = max(1, workers)
    if workers > 1 and len(addresses) < workers:
        given = (
            f"--ble-address lists {len(addresses)} ({', '.join(addresses)})"
            if addresses
            else "no --ble-address was given"
        )
        return (
            (),
            (
                f"-n {workers} starts {workers} workers and each needs a device of its own, but "
                f"{given}; list {workers} comma-separated addresses, or run with "
                f"-n {max(1, len(addresses))}"
            ),
            None,
        )
    in_use = tuple(addresses[:need])
    note = None
    if len(addresses) > need:
        note = (
            f"--ble-address lists {len(addresses)} devices but this run uses {need} "
            f"({', '.join(in_use)}); add -n {len(addresses)} (pytest-xdist) to test them all"
        )
    return in_use, None, note


def match(seen: Iterable[Seen], wanted: Wanted, timeout: float) -> tuple[list[Seen], str | None]:
    """The wanted devices among those seen (in ``wanted`` order), or why not."""
    seen = list(seen)
    if wanted.addresses:
        by_address = {s.address.upper(): s for s in seen}
        found = [by_address[a.upper()] for a in wanted.addresses if a.upper() in by_address]
        missing = [a for a in wanted.addresses if a.upper() not in by_address]
        if not missing:
            return found, None
        what = (
            f"no SmartBall at {missing[0]}"
            if len(missing) == 1
            else f"no SmartBall at {', '.join(missing)}"
        )
    else:
        found = [s for s in seen if s.name == wanted.name]
        if len(found) == 1:
            return found, None
        if len(found) > 1:
            return found, (
                f"{len(found)} devices advertise the name {wanted.name!r} "
                f"({', '.join(s.address for s in found)}), so the run cannot tell which one "
                "to test; pick one with --ble-address, or list them all and add -n "
                f"{len(found)} to test them in parallel"
            )
        what = f"no SmartBall named {wanted.name!r}"
    return found, f"{what} advertised within {timeout:g} s ({_seen_instead(seen)}); " + (
        "check that it is powered, in range, not connected to another host (a phone app, "
        "`bluetoothctl disconnect`), and that the address or name is right"
    )


def _seen_instead(seen: Sequence[Seen]) -> str:
    if not seen:
        return "nothing advertised at all: is the adapter's radio blocked (`rfkill list`)?"
    strongest = sorted(seen, key=lambda s: -(s.rssi if s.rssi is not None else -999))
    shown = ", ".join(str(s) for s in strongest[:SEEN_LISTED])
    more = len(seen) - SEEN_LISTED
    return f"seen instead: {shown}" + (f" and {more} more" if more > 0 else "")


def image_problem(image: FirmwareImage, option: str, infos: dict[str, p.MsgInfo]) -> str | None:
    """The image must fit every device's staging area."""
    for address, info in infos.items():
        if image.size > info.staging_capacity:
            return (
                f"{option} {image.source} is {image.size} bytes but the SmartBall at {address} "
                f"stages at most {info.staging_capacity} bytes; build a smaller image"
            )
    return None


def baseline_problem(baseline: FirmwareImage, infos: dict[str, p.MsgInfo]) -> str | None:
    """The baseline image is what the devices run now: it is what tests restore."""
    for address, info in infos.items():
        if (info.active_image_size, info.active_image_crc32) != (baseline.size, baseline.crc32):
            return (
                f"--baseline-firmware {baseline.source} (crc32 {baseline.crc32:08x}, "
                f"{baseline.size} bytes) is not what the SmartBall at {address} runs (firmware "
                f"{info.firmware_version}, crc32 {info.active_image_crc32:08x}, "
                f"{info.active_image_size} bytes); pass the image it runs, or flash the "
                "baseline onto it first (smartball-ota flash)"
            )
    return None


class _Unasked:
    def __repr__(self) -> str:
        return "UNASKED"


#: An answer not gathered yet (``None`` is an answer: BlueZ's version unknown, no image).
UNASKED: Any = _Unasked()


def check(
    adapter: AdapterInfo | BluezUnavailable = UNASKED,
    version: tuple[int, int] | None = UNASKED,
    scan: Sequence[Seen] = UNASKED,
    image: FirmwareImage | ImageError | None = UNASKED,
    infos: dict[str, p.MsgInfo | LinkError] = UNASKED,
    *,
    wanted: Wanted,
    scan_timeout: float = DEFAULT_SCAN_TIMEOUT_S,
    baseline: FirmwareImage | ImageError | None = None,
) -> Findings:
    """Decide from the answers gathered so far (:data:`UNASKED` for the others): the
    adapter probe, BlueZ's version, what the scan saw, the ``--firmware`` image (or why it
    cannot be loaded) and each found device's INFO by address. Checks run in that order
    and the first failure ends them; ``infos`` may hold only the devices asked so far."""
    out = Findings()
    if adapter is UNASKED:
        return out
    if isinstance(adapter, BluezUnavailable):
        out.error, out.no_radio = str(adapter), True
        return out
    out.adapter = adapter
    out.passed.append(
        f"BlueZ answers on the system D-Bus; adapter {adapter.name} ({adapter.address}) is powered"
    )
    if version is UNASKED:
        return out
    out.bluez_version = version
    out.warnings += bluez.version_warnings(version)
    if version is not None:
        good = not out.warnings
        out.passed.append(
            f"BlueZ {version[0]}.{version[1]}"
            + (" (no known GATT bugs)" if good else " (see the warnings)")
        )
    for what, given in (("--firmware", image), ("--baseline-firmware", baseline)):
        if isinstance(given, ImageError):
            out.error = f"{what}: {given}"
            return out
    out.image = image if isinstance(image, FirmwareImage) else None
    out.baseline = baseline if isinstance(baseline, FirmwareImage) else None
    if scan is UNASKED:
        return out
    found, problem = match(scan, wanted, scan_timeout)
    if problem:
        out.error = problem
        return out
    out.found = found
    for s in found:
        out.passed.append(f"found {s}")
        if not s.nus:
            out.warnings.append(
                f"{s.name or s.address} does not advertise the Nordic UART Service; it may "
                "not be a SmartBall, or it runs firmware without the OTA service"
            )
    if infos is UNASKED:
        return out
    for s in found:
        answer = infos.get(s.address.upper())
        if answer is None:
            return out  # this one not asked yet
        if isinstance(answer, LinkError):
            why = str(answer).rstrip(".").replace(". ", "; ")  # one sentence
            out.error = (
                f"{s} was found but did not answer CMD_INFO: {why}; power-cycle it and run again"
            )
            return out
        out.infos[s.address.upper()] = answer
        out.passed.append(
            f"{s.address}: firmware {answer.firmware_version}, active image crc32 "
            f"{answer.active_image_crc32:08x} ({answer.active_image_size} bytes), staging "
            f"{answer.staging_capacity} bytes, protocol v{answer.protocol_version}"
        )
        if answer.protocol_version != p.PROTOCOL_VERSION:
            out.error = (
                f"{s} speaks protocol v{answer.protocol_version}, this client v"
                f"{p.PROTOCOL_VERSION}; update pytest-smartball or the device"
            )
            return out
    if out.image is not None:
        out.error = image_problem(out.image, "--firmware", out.infos)
        if out.error:
            return out
        out.passed.append(f"--firmware {out.image.source} ({out.image.size} bytes) fits")
    if out.baseline is not None:
        out.error = baseline_problem(out.baseline, out.infos)
        if out.error:
            return out
        out.passed.append(f"--baseline-firmware {out.baseline.source} is what the devices run")
    return out


# --- the answers (I/O, every step bounded) ------------------------------------------------


class Boundary(Protocol):
    """Where preflight meets BlueZ; tests pass a stub with the same two methods."""

    async def probe_adapter(self, adapter: str) -> AdapterInfo: ...

    async def bluez_version(self) -> tuple[int, int] | None: ...


class SystemBluez:
    """The real boundary: BlueZ on the system D-Bus."""

    async def probe_adapter(self, adapter: str) -> AdapterInfo:
        return await bluez.probe_adapter(adapter)

    async def bluez_version(self) -> tuple[int, int] | None:
        return await bluez.bluez_version()


async def discover(backend: BleBackend, wanted: Wanted, timeout: float) -> list[Seen]:
    """Scan until every wanted device advertised (by name: for a few seconds more, to see
    duplicates) or ``timeout`` passed; everything seen."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    def complete(seen: Mapping[str, Seen]) -> bool:
        return match(seen.values(), wanted, timeout)[1] is None and (
            bool(wanted.addresses) or loop.time() - start >= min(NAME_SCAN_MIN_S, timeout)
        )

    return list((await observe(backend, timeout=timeout, done=complete)).values())


async def run(
    wanted: Wanted,
    backend: BleBackend,
    *,
    adapter: str = "hci0",
    firmware: str | None = None,
    baseline: str | None = None,
    scan_timeout: float = DEFAULT_SCAN_TIMEOUT_S,
    link_settings: LinkSettings | None = None,
    info_timeout: float = INFO_TIMEOUT_S,
    boundary: Boundary | None = None,
    on_step: Callable[[str], None] = lambda line: None,
) -> Findings:
    """Gather the answers step by step, deciding after each with :func:`check`."""
    io = boundary or SystemBluez()
    answers: dict[str, object] = {}
    shown = 0

    def decide() -> Findings:
        nonlocal shown
        out = check(**answers, wanted=wanted, scan_timeout=scan_timeout)  # type: ignore[arg-type]
        for line in out.passed[shown:]:
            on_step(line)
        shown = len(out.passed)
        return out

    try:
        answers["adapter"] = await io.probe_adapter(adapter)
    except BluezUnavailable as exc:
        answers["adapter"] = exc
    except Exception as exc:  # dbus-fast's own errors (authentication, protocol)
        answers["adapter"] = BluezUnavailable(
            f"cannot talk to BlueZ on the system D-Bus ({type(exc).__name__}: {exc}); "
            "check that bluetoothd runs and this user may use it"
        )
    if not (out := decide()).ok:
        return out
    answers["version"] = await io.bluez_version()
    answers["image"] = _load(firmware)
    answers["baseline"] = _load(baseline)
    if not (out := decide()).ok:
        return out
    on_step(f"scanning for {wanted.describe()} (up to {scan_timeout:g} s)")
    try:
        answers["scan"] = await discover(backend, wanted, scan_timeout)
    except DeviceNotFound as exc:
        out.error = f"with adapter {adapter}, {exc}; check `bluetoothctl show` and `rfkill list`"
        return out
    if not (out := decide()).ok:
        return out
    infos: dict[str, p.MsgInfo | LinkError] = {}
    answers["infos"] = infos
    for s in out.found:
        try:
            async with asyncio.timeout(info_timeout):
                _, infos[s.address.upper()] = await idle_and_info(
                    backend, s.ble_device, link_settings or LinkSettings(), INFO_REPLY_S
                )
        except LinkError as exc:
            infos[s.address.upper()] = exc
        except TimeoutError:
            infos[s.address.upper()] = LinkError(f"no answer within {info_timeout:g} s")
        if not (out := decide()).ok:
            return out
    return out


def _load(path: str | None) -> FirmwareImage | ImageError | None:
    if not path:
        return None
    try:
        return load_image(path)
    except ImageError as exc:
        return exc

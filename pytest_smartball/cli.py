"""``smartball-ota``: scan for, inspect and update SmartBalls from the command line.

The same code paths as the pytest plugin: :class:`~pytest_smartball.ota.OtaEngine` over a
:class:`~pytest_smartball.link.NusLink`, against a real radio (bleak on BlueZ) or, with
``--sim``, an in-process simulated SmartBall on a virtual clock (a 30 s erase costs
milliseconds; ``--realtime`` runs at device speed instead).

Every expected failure ends as one sentence on stderr and an exit code (see ``EXIT_CODES``);
tracebacks are left for bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from bleak.backends.device import BLEDevice
from smartball_sim.device import DEFAULT_ADDRESS
from smartball_sim.faults import PROFILES  # pure data: the help text lists the profiles
from tqdm import tqdm

from . import protocol as p
from .bluez import BluezUnavailable, bluez_version, probe_adapter, version_warnings
from .image import FirmwareImage, ImageError, load_image
from .link import (
    LINK_ERRORS,
    BleBackend,
    DeviceNotFound,
    LinkError,
    LinkSettings,
    NusLink,
    find_device,
    scan,
)
from .ota import FailureKind, OtaEngine, OtaEvent, OtaResult, OtaSettings, State
from .simulated import virtual_event_loop

if TYPE_CHECKING:  # the simulator proper is imported only when --sim asks for it
    from smartball_sim.device import SimDevice
    from smartball_sim.faults import FaultPlan

PROG = "smartball-ota"
log = logging.getLogger("pytest_smartball.cli")

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 3
EXIT_FAILED = 4
EXIT_REFUSED = 5
EXIT_INTERRUPTED = 130

EXIT_FOR_FAILURE: dict[FailureKind, int] = {
    FailureKind.BAD_INPUT: EXIT_BAD_INPUT,
    FailureKind.NOT_FOUND: EXIT_NOT_FOUND,
    FailureKind.LINK: EXIT_FAILED,
    FailureKind.REFUSED: EXIT_REFUSED,
}

EXIT_CODES = """\
exit codes:
  0    success
  2    bad input: missing, empty, malformed or too large image (larger than the device's
       staging area), bad arguments, bad --faults spec
  3    device not found, or no usable Bluetooth (BlueZ, system D-Bus or adapter missing)
  4    update failed after retries (reconnects without progress exhausted), or link
       trouble during info/status/abort; the device keeps its old image
  5    the device refused the image or a command (e.g. CRC mismatch)
  130  interrupted (Ctrl-C): the device keeps its old image; run flash again to resume
"""

INTERRUPTED = (
    "interrupted: the device keeps its old image; run `smartball-ota flash IMAGE` again "
    "to resume the update where the device stopped"
)

DEFAULT_NAME = "SmartBall"
DEFAULT_SCAN_TIMEOUT_S = 15.0
DEFAULT_LIST_SCAN_TIMEOUT_S = 5.0
#: Reply to INFO / STATUS / ABORT (the engine's own default for the same requests).
REPLY_TIMEOUT_S = OtaSettings().reply_timeout_s

#: Engine events shown as they happen (one line each), above the progress bars.
NOTABLE_EVENTS = frozenset(
    {
        "link-lost",
        "link-failure",
        "resume",
        "restart",
        "recover",
        "services-missing",
        "verified",
        "cache-cleared",
        "warning",
        "device-reset",
    }
)

#: Options shared by every subcommand; accepted before or after the subcommand's name.
COMMON_DEFAULTS: dict[str, Any] = {
    "name": DEFAULT_NAME,
    "address": None,
    "adapter": "hci0",
    "bluez": "system",
    "sim": False,
    "faults": None,
    "seed": 0,
    "json": False,
    "verbose": 0,
    "realtime": False,
    "erase_time": None,
    "sim_address": DEFAULT_ADDRESS,
    "scan_timeout": None,
    "settle": LinkSettings().settle_s,
}
SIM_ONLY = {
    "faults": "--faults",
    "realtime": "--realtime",
    "erase_time": "--erase-time",
    "sim_address": "--sim-address",
}

T = TypeVar("T")


class CliError(Exception):
    """An expected failure: one sentence for stderr and the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- argument parsing -------------------------------------------------------------------


def _number(text: str, *, minimum: float, inclusive: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what}") from None
    ok = value >= minimum if inclusive else value > minimum
    if not ok or not math.isfinite(value):
        bound = f"{'at least' if inclusive else 'more than'} {minimum:g}"
        raise argparse.ArgumentTypeError(f"{text!r}: must be {bound} {what}")
    return value


def _seconds(text: str) -> float:
    return _number(text, minimum=0, inclusive=True, what="seconds")


def _positive_seconds(text: str) -> float:
    return _number(text, minimum=0, inclusive=False, what="seconds")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Common options. Defaults are SUPPRESSed so that an option given before the
    subcommand is not overwritten by the subparser's default; main fills them in."""
    s = argparse.SUPPRESS
    dev = parser.add_argument_group("device")
    dev.add_argument("--name", default=s, help=f"advertised name (default: {DEFAULT_NAME})")
    dev.add_argument(
        "--address", default=s, help="Bluetooth address of the device (preferred over --name)"
    )
    dev.add_argument("--adapter", default=s, help="BlueZ adapter (default: hci0)")
    dev.add_argument(
        "--bluez",
        choices=("system", "emulated", "vhci"),
        default=s,
        help="the system's BlueZ (default), or 'emulated': a private dbus-daemon and an "
        "emulated bluetoothd serving a simulated SmartBall, in real time, through the real "
        "BlueZ code path (--faults, --seed, --erase-time, --sim-address apply), or 'vhci': "
        "this machine's real BlueZ with a simulated SmartBall behind a virtual controller on "
        "/dev/vhci (the same options apply)",
    )
    dev.add_argument(
        "--scan-timeout",
        type=_positive_seconds,
        default=s,
        metavar="S",
        help=f"how long to look for the device (default: {DEFAULT_SCAN_TIMEOUT_S:g} s; "
        f"for the scan listing {DEFAULT_LIST_SCAN_TIMEOUT_S:g} s)",
    )
    dev.add_argument(
        "--settle",
        type=_seconds,
        default=s,
        metavar="S",
        help=f"pause after connecting before the first GATT call, for BlueZ's service "
        f"discovery race (default: {LinkSettings().settle_s:g} s)",
    )
    sim = parser.add_argument_group("simulator")
    sim.add_argument(
        "--sim",
        action="store_true",
        default=s,
        help="run against a simulated SmartBall in-process (virtual time unless --realtime)",
    )
    sim.add_argument(
        "--faults",
        default=s,
        metavar="SPEC",
        help="with --sim: faults to inject, e.g. 'drop@erase:50%%,reboot@offset:200000' or a "
        f"profile ({', '.join(PROFILES)}); see docs/faults.md",
    )
    sim.add_argument(
        "--seed", type=_int, default=s, metavar="N", help="simulator random seed (default: 0)"
    )
    sim.add_argument(
        "--realtime",
        action="store_true",
        default=s,
        help="with --sim: run at device speed instead of on a virtual clock",
    )
    sim.add_argument(
        "--erase-time",
        type=_positive_seconds,
        default=s,
        metavar="S",
        help="with --sim: the whole staging erase takes S seconds (field: 15-40 s; "
        "default: 85 ms per 4 KiB page)",
    )
    sim.add_argument(
        "--sim-address",
        default=s,
        metavar="ADDR",
        help=f"with --sim: the simulated device's address (default: {DEFAULT_ADDRESS})",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json",
        action="store_true",
        default=s,
        help="print one JSON object on stdout instead of human-readable output",
    )
    out.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=s,
        help="-v: info logging and the update's full event log; -vv: debug logging",
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Robust BLE OTA updates for SmartBall devices over the Nordic UART "
        "Service, against real hardware (BlueZ) or a simulated SmartBall (--sim).",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES)
        cmd.formatter_class = fmt
        _add_common(cmd)
        return cmd

    add("scan", "list devices advertising the Nordic UART Service, strongest first")
    add("info", "show the device's firmware version and active image")
    add("status", "show the device's OTA session (state, next offset, image size and CRC)")
    add("abort", "abort the device's OTA session (the active image is untouched)")
    flash = add("flash", "update the device with an image (.bin or Intel .hex); resumable")
    flash.add_argument("image", metavar="IMAGE", help="firmware image, .bin or Intel .hex")
    ota = flash.add_argument_group("update")
    defaults = OtaSettings()
    ota.add_argument(
        "--stabilise",
        type=_seconds,
        default=defaults.stabilise_s,
        metavar="S",
        help=f"pause after READY before the first data (default: {defaults.stabilise_s:g} s)",
    )
    ota.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=defaults.max_attempts_without_progress,
        metavar="N",
        help="reconnect attempts in a row without the device getting further before giving "
        f"up (default: {defaults.max_attempts_without_progress})",
    )
    ota.add_argument(
        "--reappear-timeout",
        type=_positive_seconds,
        default=defaults.reappear_timeout_s,
        metavar="S",
        help="how long a vanished device (reset, advertising pause) is waited for "
        f"(default: {defaults.reappear_timeout_s:g} s)",
    )
    ota.add_argument(
        "--clear-cache",
        action="store_true",
        help="forget the device in BlueZ (its cached GATT database) before connecting; "
        "with --sim, the simulated stack's cache",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and validate; raises CliError(2) for combinations argparse cannot check."""
    args = build_parser().parse_args(argv)
    for key, value in COMMON_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    if args.sim and args.bluez in ("emulated", "vhci"):
        raise CliError(
            EXIT_BAD_INPUT, f"--bluez={args.bluez} is the real-device path; leave out --sim"
        )
    if not args.sim and args.bluez not in ("emulated", "vhci"):
        given = [
            flag for key, flag in SIM_ONLY.items() if getattr(args, key) != COMMON_DEFAULTS[key]
        ]
        if given:
            raise CliError(
                EXIT_BAD_INPUT,
                f"{', '.join(given)} only work{'s' if len(given) == 1 else ''} with --sim "
                "(the simulated SmartBall)",
            )
    return args


# --- running coroutines -----------------------------------------------------------------


def run_coroutine(coro: Coroutine[Any, Any, T], *, virtual: bool) -> T:
    """Run on a fresh loop: looptime's virtual clock (simulator) or a plain asyncio loop.
    Ctrl-C cancels the coroutine (so links are closed) and then raises KeyboardInterrupt."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = (
        virtual_event_loop if virtual else None
    )
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


# --- the target: a simulated SmartBall or the platform's radio ---------------------------


@dataclass(slots=True)
class Target:
    backend: BleBackend
    sim_device: SimDevice | None = None  # with --sim


class Context:
    """The parsed options and everything derived from them, shared by the commands."""

    def __init__(self, args: argparse.Namespace, fault_plan: FaultPlan | None = None) -> None:
        self.args = args
        self.fault_plan = fault_plan
        self.json: bool = args.json
        self.simulated: bool = args.sim
        self.virtual: bool = args.sim and not args.realtime
        self.link_settings = LinkSettings(
            settle_s=args.settle,
            scan_timeout_s=args.scan_timeout or DEFAULT_SCAN_TIMEOUT_S,
        )

    @property
    def clock_note(self) -> str:
        if not self.simulated:
            return ""
        if self.virtual:
            return "simulated SmartBall; times are simulated on a virtual clock, not wall time"
        return "simulated SmartBall, running in real time"

    async def open_target(self) -> Target:
        """Build the simulated device (inside the running loop: faults may schedule
        timers), or preflight BlueZ for the real radio."""
        if self.simulated:
            from smartball_sim.firmware import FlashTimings

            from .simulated import make_sim_target

            a = self.args
            flash = FlashTimings(erase_total_s=a.erase_time) if a.erase_time else None
            loop = asyncio.get_running_loop()
            t0 = loop.time()  # 0 on the virtual clock; fault-log times count from here
            sim = make_sim_target(
                a.name,
                a.sim_address,
                faults=self.fault_plan,
                seed=a.seed,
                flash=flash,
                clock=lambda: loop.time() - t0,
            )
            return Target(sim.backend, sim.device)
        try:
            await probe_adapter(self.args.adapter)
        except BluezUnavailable as exc:
            raise CliError(EXIT_NOT_FOUND, f"{exc} (--sim needs no hardware)") from None
        if self.args.command != "flash":  # the engine reports them itself for flash
            for warning in version_warnings(await bluez_version()):
                _warn(warning)
        return Target(BleBackend(adapter=self.args.adapter))

    def link_event(self, kind: str, detail: str) -> None:
        log.info("link: %s %s", kind, detail)


def _warn(message: str) -> None:
    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)


def _device_dict(name: str | None, address: str | None) -> dict[str, str | None]:
    return {"name": name, "address": address}


def _emit_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=None, sort_keys=False))


# --- scan / info / status / abort -------------------------------------------------------


async def _find(ctx: Context, target: Target) -> BLEDevice:
    a = ctx.args
    try:
        return await find_device(
            target.backend,
            name=None if a.address else a.name,
            address=a.address,
            timeout=ctx.link_settings.scan_timeout_s,
        )
    except DeviceNotFound as exc:  # find_device also turns scanner errors into this
        raise CliError(EXIT_NOT_FOUND, str(exc)) from None


async def _request(
    ctx: Context, target: Target, cmd: p.Command, expect: type
) -> tuple[BLEDevice, Any]:
    device = await _find(ctx, target)
    try:
        async with await NusLink.open(
            device, target.backend, ctx.link_settings, on_event=ctx.link_event
        ) as link:
            reply = await link.request(cmd, (expect,), REPLY_TIMEOUT_S)
    except LinkError as exc:
        raise CliError(EXIT_FAILED, str(exc)) from None
    except LINK_ERRORS as exc:
        raise CliError(EXIT_FAILED, f"Bluetooth error: {type(exc).__name__}: {exc}") from None
    if isinstance(reply, p.MsgError):
        raise CliError(
            EXIT_REFUSED,
            f"the device answered {cmd.TYPE.name} with {reply.code_name}: "
            f"{reply.text or '(no text)'}",
        )
    return device, reply


def _status_dict(msg: p.MsgOtaStatus) -> dict[str, Any]:
    return {
        "state": msg.state_name,
        "state_code": msg.state,
        "next_expected_offset": msg.next_expected_offset,
        "image_size": msg.image_size,
        "image_crc32": msg.image_crc32,
    }


def _info_dict(msg: p.MsgInfo) -> dict[str, Any]:
    return {**asdict(msg), "firmware_version": msg.firmware_version}


def _header(ctx: Context, device: BLEDevice) -> None:
    note = f"  ({ctx.clock_note})" if ctx.simulated else ""
    print(f"{device.name or '(no name)'} ({device.address}){note}")


def _print_status(msg: p.MsgOtaStatus) -> None:
    print(f"  state             {msg.state_name}")
    print(f"  next offset       {msg.next_expected_offset}")
    print(f"  image size        {msg.image_size} bytes")
    print(f"  image crc32       {msg.image_crc32:08x}")


async def cmd_scan(ctx: Context) -> int:
    target = await ctx.open_target()
    timeout = ctx.args.scan_timeout or DEFAULT_LIST_SCAN_TIMEOUT_S
    try:
        found = await scan(target.backend, timeout)
    except LINK_ERRORS as exc:
        raise CliError(EXIT_NOT_FOUND, f"scanning failed: {type(exc).__name__}: {exc}") from None
    devices = [{"address": d.address, "name": d.name, "rssi": rssi} for d, rssi in found]
    code = EXIT_OK if devices else EXIT_NOT_FOUND
    if ctx.json:
        _emit_json(
            {
                "command": "scan",
                "ok": bool(devices),
                "exit_code": code,
                "simulated": ctx.simulated,
                "scan_timeout_s": timeout,
                "devices": devices,
            }
        )
    elif devices:
        print(f"{'ADDRESS':<18} {'RSSI':>5}  NAME")
        for d in devices:
            print(f"{d['address']:<18} {d['rssi']:>5}  {d['name'] or '(no name)'}")
        note = f" ({ctx.clock_note})" if ctx.simulated else ""
        n = len(devices)
        print(f"{n} device{'s' if n != 1 else ''} advertising the Nordic UART Service{note}")
    if not devices:
        print(
            f"{PROG}: no device advertising the Nordic UART Service within {timeout:g} s",
            file=sys.stderr,
        )
    return code


def _emit_reply(ctx: Context, command: str, device: BLEDevice, fields: dict[str, Any]) -> int:
    """The --json answer of info/status/abort: the command, the device, the reply's fields."""
    _emit_json(
        {
            "command": command,
            "ok": True,
            "exit_code": EXIT_OK,
            "simulated": ctx.simulated,
            "device": _device_dict(device.name, device.address),
            **fields,
        }
    )
    return EXIT_OK


async def cmd_info(ctx: Context) -> int:
    target = await ctx.open_target()
    device, info = await _request(ctx, target, p.CmdInfo(), p.MsgInfo)
    if ctx.json:
        return _emit_reply(ctx, "info", device, _info_dict(info))
    _header(ctx, device)
    print(f"  firmware          {info.firmware_version} (protocol v{info.protocol_version})")
    print(
        f"  active image      {info.active_image_size} bytes, crc32 {info.active_image_crc32:08x}"
    )
    print(f"  staging capacity  {info.staging_capacity} bytes")
    return EXIT_OK


async def cmd_status(ctx: Context) -> int:
    target = await ctx.open_target()
    device, status = await _request(ctx, target, p.CmdOtaStatus(), p.MsgOtaStatus)
    if ctx.json:
        return _emit_reply(ctx, "status", device, _status_dict(status))
    _header(ctx, device)
    _print_status(status)
    return EXIT_OK


async def cmd_abort(ctx: Context) -> int:
    target = await ctx.open_target()
    device, status = await _request(ctx, target, p.CmdOtaAbort(), p.MsgOtaStatus)
    if ctx.json:
        return _emit_reply(ctx, "abort", device, _status_dict(status))
    _header(ctx, device)
    print("  OTA session aborted; the active image is untouched")
    _print_status(status)
    return EXIT_OK


# --- flash ------------------------------------------------------------------------------


class ProgressDisplay:
    """tqdm bars on stderr for the erase and transfer phases, and one line per notable
    event (reconnect, resume, restart, ...) written above them."""

    def __init__(self, *, bars: bool, lines: bool, virtual: bool) -> None:
        self.bars = bars
        self.lines = lines
        self.virtual = virtual
        self._bar: tqdm[Any] | None = None
        self._phase = ""
        self._quarter = -1
        self._last_kind = ""

    def on_progress(self, phase: str, done: int, total: int) -> None:
        if not self.bars:
            return
        if not sys.stderr.isatty():
            self._progress_line(phase, done, total)
            return
        if phase != self._phase or self._bar is None or self._bar.total != total:
            self.close()
            self._phase = phase
            # On a virtual clock tqdm's wall-clock rate and ETA would be meaningless.
            fmt = (
                "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B" if self.virtual else None
            )
            self._bar = tqdm(
                total=total,
                desc=f"{phase:<8}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                bar_format=fmt,
                leave=True,
                dynamic_ncols=True,
            )
        bar = self._bar
        if done >= bar.n:
            bar.update(done - bar.n)
        else:  # the device rewound (a resume below what we had sent): show its truth
            bar.n = done
            bar.refresh()

    def _progress_line(self, phase: str, done: int, total: int) -> None:
        """Without a terminal (CI logs, pipes) bars turn into noise: one line per quarter."""
        quarter = 4 * done // total if total else 4
        if phase != self._phase:
            self._phase, self._quarter = phase, -1
        if quarter > self._quarter:
            self._quarter = quarter
            print(
                f"{phase}: {done}/{total} bytes ({100 * done // max(total, 1)}%)", file=sys.stderr
            )

    def on_event(self, event: OtaEvent) -> None:
        if not self.lines or event.kind not in NOTABLE_EVENTS:
            return
        if event.kind == "link-lost" and event.detail == "closed by host":
            return
        if event.kind == "link-failure" and self._last_kind == "link-lost":
            self._last_kind = event.kind
            return  # the link-lost line already said it
        self._last_kind = event.kind
        tqdm.write(f"[{event.time:8.1f}s] {event.kind}: {event.detail}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._phase = ""


def _phases_text(result: OtaResult) -> str:
    order = [s.value for s in State]
    phases = sorted(result.phase_s.items(), key=lambda kv: order.index(kv[0]))
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases if seconds >= 0.05)


def _print_summary(
    ctx: Context, engine: OtaEngine, result: OtaResult, image: FirmwareImage, target: Target
) -> None:
    who = f"{engine.name or 'device'} ({engine.address or 'not found'})"
    if result.success:
        print(f"Update succeeded: {who} runs {image.source}.")
    else:
        print(f"Update FAILED ({result.failure.value if result.failure else '?'}): {who}.")
    print(f"  image          {image.size} bytes, crc32 {image.crc32:08x}")
    print(f"  sent           {result.bytes_sent} bytes ({result.bytes_resent} re-sent)")
    print(
        f"  connections    {result.connects} ({result.reconnects} reconnects), "
        f"{result.resumes} resumes, {result.restarts} restarts"
    )
    clock = " (simulated time)" if ctx.virtual else ""
    print(f"  duration       {result.duration_s:.1f} s{clock}")
    phases = _phases_text(result)
    if phases:
        print(f"  phases         {phases}")
    if result.throughput_bps:
        print(f"  throughput     {result.throughput_bps / 1000:.1f} kB/s")
    info = result.info_after
    if info is not None:
        print(
            f"  device now     firmware {info.firmware_version}, active image "
            f"{info.active_image_size} bytes, crc32 {info.active_image_crc32:08x}"
        )
    sim = target.sim_device
    if sim is not None:
        active = sim.firmware.active
        which = "the new image" if active.crc32 == image.crc32 else "its old image"
        print(
            f"  sim device     active image {len(active.data)} bytes, crc32 "
            f"{active.crc32:08x} ({which})"
        )
        print(f"Note: {ctx.clock_note}.")
        faults = sim.fault_log
        print(f"Faults on the simulated device ({len(faults)}):")
        for record in faults:
            print(f"  {record}")
        if not faults:
            print("  none")


async def cmd_flash(ctx: Context, image: FirmwareImage) -> int:
    a = ctx.args
    target = await ctx.open_target()
    settings = OtaSettings(
        clear_cache=a.clear_cache,
        link=ctx.link_settings,
        stabilise_s=a.stabilise,
        reappear_timeout_s=a.reappear_timeout,
        max_attempts_without_progress=a.max_attempts,
    )
    display = ProgressDisplay(bars=not ctx.json, lines=not ctx.json, virtual=ctx.virtual)
    engine = OtaEngine(
        image,
        target.backend,
        name=a.name,
        address=a.address,
        settings=settings,
        on_progress=display.on_progress,
        on_event=display.on_event,
    )
    if not ctx.json:
        note = f" ({ctx.clock_note})" if ctx.simulated else ""
        tqdm.write(
            f"Flashing {image.source}: {image.size} bytes, crc32 {image.crc32:08x}{note}",
            file=sys.stderr,
        )
    try:
        result = await engine.run()
    except LINK_ERRORS as exc:  # e.g. the platform scanner failing (no adapter)
        code = EXIT_NOT_FOUND if engine.result.connects == 0 else EXIT_FAILED
        raise CliError(code, f"Bluetooth error: {type(exc).__name__}: {exc}") from None
    finally:
        display.close()
    if result.success:
        code = EXIT_OK
    else:
        code = EXIT_FOR_FAILURE[result.failure] if result.failure else EXIT_FAILED
    if ctx.json:
        payload: dict[str, Any] = {"command": "flash", "ok": result.success, "exit_code": code}
        payload.update(result.to_dict())
        payload["duration_s"] = round(result.duration_s, 3)
        payload["phase_s"] = {k: round(v, 3) for k, v in result.phase_s.items()}
        for event in payload["events"]:
            event["time"] = round(event["time"], 3)
        if result.info_after is not None:
            payload["info_after"]["firmware_version"] = result.info_after.firmware_version
        payload["image_source"] = image.source
        payload["device"] = _device_dict(engine.name, engine.address)
        payload["simulated"] = ctx.simulated
        payload["virtual_time"] = ctx.virtual
        sim = target.sim_device
        if sim is not None:
            active = sim.firmware.active
            payload["fault_log"] = [str(r) for r in sim.fault_log]
            payload["sim_active_image"] = {"size": len(active.data), "crc32": active.crc32}
        _emit_json(payload)
    else:
        if a.verbose:
            print("Event log:")
            for event in result.events:
                print(f"  {event}")
        _print_summary(ctx, engine, result, image, target)
    if not result.success:
        print(f"{PROG}: update failed: {result.error}", file=sys.stderr)
    return code


# --- main -------------------------------------------------------------------------------


class _TqdmHandler(logging.Handler):
    """Log records to the current stderr, through tqdm so progress bars stay whole."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _install_logging(verbosity: int) -> Callable[[], None]:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = _TqdmHandler(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)

    def uninstall() -> None:
        root.removeHandler(handler)
        root.setLevel(old_level)

    return uninstall


def _fail(code: int, message: str, args: argparse.Namespace | None) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    if args is not None and getattr(args, "json", False):
        _emit_json(
            {
                "command": getattr(args, "command", None),
                "ok": False,
                "exit_code": code,
                "error": message,
            }
        )
    return code


def _run_emulated(
    args: argparse.Namespace, fault_plan: FaultPlan | None, coro: Coroutine[Any, Any, int]
) -> int:
    """Run ``coro`` on the real-device path against an emulated BlueZ (sim/smartball_sim/bluez) that
    this call starts and stops."""
    from smartball_sim.bluez.launcher import DbusDaemonMissing, EmulatedBluez, emulated_smartball
    from smartball_sim.firmware import FlashTimings

    options: dict[str, Any] = {}
    if args.erase_time:
        options["flash"] = FlashTimings(erase_total_s=args.erase_time)
    device = emulated_smartball(
        args.name, args.address or args.sim_address, faults=fault_plan, seed=args.seed, **options
    )
    try:
        bluez = EmulatedBluez([device], adapter=args.adapter).start()
    except (DbusDaemonMissing, OSError, RuntimeError) as exc:
        coro.close()
        raise CliError(EXIT_NOT_FOUND, f"cannot start the emulated BlueZ: {exc}") from None
    try:
        return run_coroutine(coro, virtual=False)
    finally:
        bluez.stop()


def main(argv: list[str] | None = None) -> int:
    """The ``smartball-ota`` entry point; returns the exit code (see ``EXIT_CODES``)."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except CliError as exc:
        return _fail(exc.code, str(exc), None)

    fault_plan: FaultPlan | None = None
    if (args.sim or args.bluez in ("emulated", "vhci")) and args.faults:
        from smartball_sim.faults import FaultPlan, FaultSpecError

        try:
            fault_plan = FaultPlan.parse(args.faults)
        except FaultSpecError as exc:
            return _fail(EXIT_BAD_INPUT, f"bad --faults: {exc}", args)

    uninstall_logging = _install_logging(args.verbose)
    ctx = Context(args, fault_plan)
    try:
        if args.command == "flash":
            try:
                image = load_image(args.image)
            except ImageError as exc:
                return _fail(EXIT_BAD_INPUT, str(exc), args)
            coro = cmd_flash(ctx, image)
        else:
            coro = {"scan": cmd_scan, "info": cmd_info, "status": cmd_status, "abort": cmd_abort}[
                args.command
            ](ctx)
        if args.bluez == "emulated":
            return _run_emulated(args, fault_plan, coro)
        if args.bluez == "vhci":
            from .vhci_bluez import run_with_virtual_radio

            return run_with_virtual_radio(args, fault_plan, coro)
        return run_coroutine(coro, virtual=ctx.virtual)
    except CliError as exc:
        return _fail(exc.code, str(exc), args)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, INTERRUPTED, args)
    finally:
        uninstall_logging()


if __name__ == "__main__":
    sys.exit(main())

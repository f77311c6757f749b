"""``smartball-ota``'s arguments: the parser, the checks argparse cannot make, and the
settings derived from them (:class:`Context`). Every bad argument becomes a
:class:`~.errors.CliError` with one sentence and the command's one-line usage."""

from __future__ import annotations

import argparse
import logging
import math
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from ..link import LinkSettings
from ..options import SHARED_OPTIONS, SIMULATED_BLUEZ
from ..ota import OtaSettings
from ..targets import TargetKind, kind_of
from .errors import EXIT_BAD_INPUT, EXIT_CODES, CliError

PROG = "smartball-ota"
log = logging.getLogger("pytest_smartball.cli")

#: How long `scan` lists what advertises (finding one device uses LinkSettings's timeout).
LIST_SCAN_TIMEOUT_S = 5.0

#: Options shared by every subcommand; accepted before or after the subcommand's name.
COMMON_DEFAULTS: dict[str, Any] = {
    **{key: option.parser_kwargs(cli=True)["default"] for key, option in SHARED_OPTIONS.items()},
    "bus": None,
    "sim": False,
    "json": False,
    "verbose": 0,
    "realtime": False,
    "erase_time": None,
    "sim_address": None,
    "sim_progressive_erase": False,
    "scan_timeout": None,
    "settle": LinkSettings().settle_s,
}
SIM_ONLY = {
    "faults": "--faults",
    "realtime": "--realtime",
    "erase_time": "--erase-time",
    "sim_address": "--sim-address",
    "sim_firmware_bug": "--sim-firmware-bug",
    "sim_progressive_erase": "--sim-progressive-erase",
    "sim_link": "--sim-link",
    "sim_firmware": "--sim-firmware",
    "sim_firmware_lib": "--sim-firmware-lib",
    "sim_trust": "--sim-trust",
}


def package_version() -> str:
    try:
        return version("pytest-smartball")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad argument raises one CliError instead of printing the
    whole usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise CliError(
            EXIT_BAD_INPUT, message or "bad arguments", usage=self.format_usage().strip()
        )


def _number(text: str, *, minimum: float, inclusive: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what}") from None
    if not math.isfinite(value):  # inf, nan: numbers to float(), not to a timeout
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of {what}")
    if not (value >= minimum if inclusive else value > minimum):
        bound = f"{'at least' if inclusive else 'more than'} {minimum:g}"
        raise argparse.ArgumentTypeError(f"{text!r}: must be {bound} {what}")
    return value


#: Commands that never touch Bluetooth (no device options).
OFFLINE_COMMANDS = ("keygen", "sign")

#: A Bluetooth device address as BlueZ and the simulator write it: six hex bytes.
BD_ADDRESS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")


def _bd_address(text: str) -> str:
    if not BD_ADDRESS.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Bluetooth address (six hex bytes, e.g. C0:FF:EE:00:00:01)"
        )
    return text


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


def _add_shared(group: argparse._ArgumentGroup, key: str, **extra: Any) -> None:
    """Add the setting ``key`` of :data:`~pytest_smartball.options.SHARED_OPTIONS`, its
    default SUPPRESSed (see :func:`_add_common`)."""
    option = SHARED_OPTIONS[key]
    kwargs = option.parser_kwargs(cli=True) | {"default": argparse.SUPPRESS} | extra
    group.add_argument(option.cli_flag, **kwargs)


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Common options. Defaults are SUPPRESSed so that an option given before the
    subcommand is not overwritten by the subparser's default; parse_args fills them in."""
    s = argparse.SUPPRESS
    dev = parser.add_argument_group("device")
    for key in ("name", "address", "adapter", "bluez"):
        _add_shared(dev, key)
    dev.add_argument(
        "--bus",
        default=s,
        metavar="ADDRESS",
        help="with --bluez=emulated: use the emulated BlueZ already serving on this D-Bus "
        "address (what `python -m smartball_sim.bluez serve` prints) instead of starting one "
        "inside this command; its simulated SmartBall outlives the command, so an "
        "interrupted flash resumes when run again",
    )
    dev.add_argument(
        "--scan-timeout",
        type=_positive_seconds,
        default=s,
        metavar="S",
        help=f"how long to look for the device (default: {LinkSettings().scan_timeout_s:g} s; "
        f"for the scan listing {LIST_SCAN_TIMEOUT_S:g} s)",
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
    _add_shared(sim, "faults")
    _add_shared(sim, "seed", type=_int)
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
        type=_bd_address,
        default=s,
        metavar="ADDR",
        help="with --sim: the simulated device's address (default: the simulator's own)",
    )
    _add_shared(sim, "sim_firmware_bug")
    sim.add_argument(
        "--sim-progressive-erase",
        action="store_true",
        default=s,
        help="with --sim: the simulated device offers progressive erase (protocol section 8: "
        "READY at once, each page erased before its first write); the engine then asks for it",
    )
    for key in ("sim_link", "sim_firmware", "sim_firmware_lib", "sim_trust"):
        _add_shared(sim, key)
    _add_output(parser)


def _add_output(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
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
        help="-v: info logging and the update's full event log; -vv: debug logging; -vvv: "
        "also the BLE stack's own (Bumble's, with --sim-link bumble)",
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [options] COMMAND ...",
        description="Robust BLE OTA updates for SmartBall devices over the Nordic UART "
        "Service, against real hardware (BlueZ) or a simulated SmartBall (--sim).",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, help: str, positional: str = "", *, device: bool = True
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXIT_CODES,
            usage=f"{PROG} {name} [options]{' ' + positional if positional else ''}",
        )
        cmd.formatter_class = fmt
        if device:
            _add_common(cmd)
        else:
            _add_output(cmd)
        return cmd

    add("scan", "list devices advertising the Nordic UART Service, strongest first")
    add(
        "info",
        "show the device's firmware version and active image, and on a signed-only device "
        "its trust: the key it trusts, its security counter, its image state",
    )
    add(
        "confirm",
        "keep the image the device runs on trial (signed-only devices: CMD_OTA_CONFIRM); "
        "without it the device returns to its previous image at its next reset",
    )
    add("status", "show the device's OTA session (state, next offset, image size and CRC)")
    add("abort", "abort the device's OTA session (the active image is untouched)")
    flash = add(
        "flash",
        "update the device with an image (.bin, .hex, ELF, UF2, DFU .zip); resumable",
        "IMAGE",
    )
    flash.add_argument(
        "image",
        metavar="IMAGE",
        help="firmware image: .bin, Intel .hex, ELF, UF2, DFU .zip, or a signed image (.sbi, "
        "`smartball-ota sign`), which a signed-only device requires",
    )
    ota = flash.add_argument_group("update")
    defaults = OtaSettings()
    ota.add_argument(
        "--health-check",
        metavar="CMD",
        help="signed-only devices: once the device runs the new image on trial, run CMD (a "
        "shell command; exit 0 = healthy) with the link released, so CMD may connect to "
        "the device itself; only then confirm the image. $SMARTBALL_ADDRESS, "
        "$SMARTBALL_NAME, $SMARTBALL_FIRMWARE and $SMARTBALL_IMAGE_CRC32 name the device "
        "and what it runs",
    )
    ota.add_argument(
        "--health-check-timeout",
        type=_positive_seconds,
        default=defaults.health_check_timeout_s,
        metavar="S",
        help="a health check still running after S seconds is stopped and counts as failed "
        f"(default: {defaults.health_check_timeout_s:g} s)",
    )
    ota.add_argument(
        "--no-confirm",
        action="store_true",
        help="signed-only devices: leave the new image on trial (not confirmed): it runs "
        "until the next reset, which returns the device to its previous image unless "
        "`smartball-ota confirm` keeps it",
    )
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
        default=defaults.limits.max_attempts_without_progress,
        metavar="N",
        help="reconnect attempts in a row without the device getting further before giving "
        f"up (default: {defaults.limits.max_attempts_without_progress})",
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
    keygen = add(
        "keygen",
        "make an Ed25519 signing key pair: KEYFILE (private, owner-only) and KEYFILE's "
        ".pub.pem beside it; prints the key id (never overwrites a key)",
        "KEYFILE",
        device=False,
    )
    keygen.add_argument("keyfile", metavar="KEYFILE", help="where to write the private key")
    sign = add(
        "sign",
        "sign an image for signed-only devices: the image that would be flashed (of any "
        "format flash reads), with its version and security counter, as a .sbi",
        "IMAGE --key KEYFILE --version X.Y.Z --counter N -o OUT",
        device=False,
    )
    sign.add_argument("image", metavar="IMAGE", help="the image to sign (.bin, .hex, ELF, ...)")
    sign.add_argument("--key", required=True, metavar="KEYFILE", help="the private key")
    sign.add_argument(
        "--version",
        dest="fw_version",
        required=True,
        metavar="X.Y.Z",
        help="the image's firmware version (what the device's INFO says once it runs)",
    )
    sign.add_argument(
        "--counter",
        required=True,
        metavar="N",
        help="the security counter: a device that confirmed an image of counter N runs no "
        "image below N (raise it with a fix that must not be downgraded)",
    )
    sign.add_argument("-o", "--output", required=True, metavar="OUT", help="the signed image")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and validate; raises CliError(EXIT_BAD_INPUT) for every bad argument."""
    args = build_parser().parse_args(argv)
    for key, value in COMMON_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    if args.sim and args.bluez in SIMULATED_BLUEZ:
        raise CliError(
            EXIT_BAD_INPUT, f"--bluez={args.bluez} is the real-device path; leave out --sim"
        )
    if args.bus is not None and args.bluez != "emulated":
        raise CliError(EXIT_BAD_INPUT, "--bus works with --bluez=emulated only")
    if args.bus is not None:
        given = [
            flag
            for key, flag in SIM_ONLY.items()
            if key != "sim_link" and getattr(args, key) != COMMON_DEFAULTS[key]
        ]
        if args.seed != COMMON_DEFAULTS["seed"]:
            given.append("--seed")
        if given:
            raise CliError(
                EXIT_BAD_INPUT,
                f"{', '.join(given)}: the simulated SmartBall behind --bus is the server's; "
                "give them to `python -m smartball_sim.bluez serve`",
            )
    if args.bluez in SIMULATED_BLUEZ:
        for key in ("sim_firmware_bug", "sim_progressive_erase", "sim_trust"):
            if getattr(args, key) != COMMON_DEFAULTS[key]:
                raise CliError(EXIT_BAD_INPUT, f"{SIM_ONLY[key]} works with --sim only")
        if args.sim_firmware != "python" or args.sim_firmware_lib:
            raise CliError(EXIT_BAD_INPUT, "--sim-firmware works with --sim only")
    if args.command == "flash" and args.no_confirm and args.health_check:
        raise CliError(
            EXIT_BAD_INPUT,
            "--no-confirm leaves the new image on trial, --health-check decides whether to "
            "confirm it: give one or the other",
        )
    if args.command in OFFLINE_COMMANDS:
        return args
    if not args.sim and args.bluez not in SIMULATED_BLUEZ:
        given = [
            flag for key, flag in SIM_ONLY.items() if getattr(args, key) != COMMON_DEFAULTS[key]
        ]
        if given:
            raise CliError(
                EXIT_BAD_INPUT,
                f"{', '.join(given)} only work{'s' if len(given) == 1 else ''} with --sim "
                "(the simulated SmartBall)",
            )
    if args.sim_firmware_lib and args.sim_firmware != "c":
        raise CliError(EXIT_BAD_INPUT, "--sim-firmware-lib works with --sim-firmware=c only")
    return args


class Context:
    """The parsed options and the settings derived from them, shared by the commands."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = args.json
        #: Which kind of target the command talks to (pytest_smartball.targets.KINDS).
        self.kind: TargetKind = kind_of("sim" if args.sim else "real", args.sim_link, args.bluez)
        self.simulated: bool = self.kind.in_process
        #: "emulated" or "vhci": simulated SmartBalls behind a BlueZ, on the real-device path
        self.served_by: str | None = self.kind.name if self.kind.serves_real_path else None
        self.virtual: bool = args.sim and not args.realtime
        #: The simulated device lives in this process (--sim, or an emulated BlueZ or virtual
        #: radio started here) and ends with it; behind --bus it lives in a server of its own.
        self.device_in_process: bool = args.sim or (self.served_by is not None and args.bus is None)
        #: An interrupted flash had asked the device to switch (for the Ctrl-C sentence).
        self.switch_asked = False
        self.link_settings = LinkSettings(
            settle_s=args.settle,
            scan_timeout_s=args.scan_timeout or LinkSettings().scan_timeout_s,
        )

    @property
    def clock_note(self) -> str:
        if not self.simulated:
            return ""
        if self.virtual:
            return "simulated SmartBall; times are simulated on a virtual clock, not wall time"
        return "simulated SmartBall, running in real time"

    def link_event(self, kind: str, detail: str) -> None:
        log.info("link: %s %s", kind, detail)

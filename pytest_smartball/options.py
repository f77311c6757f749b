"""What a run of the suite is asked for (:class:`SmartBallOptions`) and the settings the
plugin's and the CLI's options share (:data:`SHARED_OPTIONS`: each declared once, rendered
into pytest's parser by :mod:`pytest_smartball.plugin.command_line` and into argparse by
:mod:`pytest_smartball.cli.args`). Library code: no pytest here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import contract
from .contract import codec
from .link import LinkSettings

DEFAULT_SCAN_TIMEOUT_S = LinkSettings().scan_timeout_s
#: A figure this much worse than the previous release's fails a --smartball-compare run.
DEFAULT_COMPARE_TOLERANCE_PERCENT = 15.0
#: Every figure of the previous release must be measured again: the same as
#: ``compare.DEFAULT_MIN_MEASURED_PERCENT``, not imported from there because the CLI loads
#: this module and has no business with the release gate (a test keeps the two equal).
DEFAULT_COMPARE_MIN_MEASURED_PERCENT = 100.0

#: Which BlueZ a --device=real run talks to; all but "system" serve simulated SmartBalls.
BLUEZ_CHOICES = ("system", "emulated", "vhci")
SIMULATED_BLUEZ = ("emulated", "vhci")
#: ``--device``: the in-process simulator or real hardware (a real BlueZ or one of the above).
DEVICE_CHOICES = ("sim", "real")

#: What a simulated ball can be provisioned to trust (``--sim-trust``): the repository's
#: test key (a signed-only ball, docs/protocol.md section 16), or nothing (a v1 ball).
SIM_TRUST_CHOICES = ("test", "none")
SIM_TRUST_DEFAULT = "test"
#: ``--sim-link``: what carries the simulator's BLE link.
SIM_LINK_CHOICES = ("model", "bumble")
#: ``--sim-firmware``: what runs inside the simulated SmartBall.
SIM_FIRMWARE_CHOICES = ("python", "c")


@dataclass(frozen=True, slots=True)
class SharedOption:
    """One setting both fronts offer: its flag in pytest (``plugin_flag``) and in
    ``smartball-ota`` (``cli_flag``), its default, choices and help. The flags, defaults and
    choices are said once, here; the CLI's help may be worded for its own context
    (``cli_help``: "with --sim: ..."), so seven of the settings carry two wordings of their
    help. Each front adds its own type (the CLI's validators turn a bad value into its
    one-sentence error)."""

    plugin_flag: str
    cli_flag: str
    help: str
    cli_help: str | None = None
    default: Any = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    cli_metavar: str | None = None
    #: Given once per value (``action="append"``); the values are collected in a list.
    repeatable: bool = False

    def parser_kwargs(self, *, cli: bool) -> dict[str, Any]:
        """The keyword arguments of ``add_argument`` (argparse) or ``addoption`` (pytest,
        which takes argparse's), defaults included; the CLI replaces the default with
        ``argparse.SUPPRESS`` where an option may come before or after the subcommand."""
        kwargs: dict[str, Any] = {
            "default": list(self.default) if self.repeatable else self.default,
            "help": self.cli_help if cli and self.cli_help is not None else self.help,
        }
        if self.repeatable:
            kwargs["action"] = "append"
        if self.choices is not None:
            kwargs["choices"] = self.choices
        metavar = self.cli_metavar if cli and self.cli_metavar is not None else self.metavar
        if metavar is not None:
            kwargs["metavar"] = metavar
        return kwargs


_FAULTS_EXAMPLE = "'drop@erase:50%%,reboot@offset:200000'"
_SIM_LINK_HELP = (
    "our radio model (default) or Google's Bumble stack (real HCI/L2CAP/ATT; pip install "
    "'pytest-smartball[bumble]')"
)
_SIM_FIRMWARE_HELP = (
    "what runs inside the simulated SmartBall: the Python firmware model (default) or the C "
    "reference core of firmware/ (docs/firmware.md; built with the system C compiler on first "
    "use)"
)
_FIRMWARE_BUGS = tuple(entry.name for entry in contract.firmware_bugs())

#: The settings both fronts offer, by the CLI's name of the value (its argparse dest).
SHARED_OPTIONS: Mapping[str, SharedOption] = {
    "name": SharedOption(
        "--ble-name",
        "--name",
        default=codec.DEFAULT_NAME,
        help=f"advertised name of the device (default: {codec.DEFAULT_NAME})",
        cli_help=f"advertised name (default: {codec.DEFAULT_NAME})",
    ),
    "address": SharedOption(
        "--ble-address",
        "--address",
        help="Bluetooth address of the device (preferred over the name); several, "
        "comma-separated, give each pytest-xdist worker (-n N) its own device",
        cli_help="Bluetooth address of the device (preferred over --name)",
    ),
    "adapter": SharedOption(
        "--ble-adapter", "--adapter", default="hci0", help="BlueZ adapter (default: hci0)"
    ),
    "bluez": SharedOption(
        "--bluez",
        "--bluez",
        default="system",
        choices=BLUEZ_CHOICES,
        help="with --device=real: the system's BlueZ (default); 'emulated': a private "
        "dbus-daemon and an emulated bluetoothd serving simulated SmartBalls "
        "(smartball_sim.bluez); or 'vhci': the system's real BlueZ with simulated SmartBalls "
        "behind a virtual controller on /dev/vhci (smartball_sim.machines.vhci); both are "
        "started and stopped by this run",
        cli_help="the system's BlueZ (default); 'emulated': a private dbus-daemon and an "
        "emulated bluetoothd serving a simulated SmartBall, in real time, through the real "
        "BlueZ code path; or 'vhci': this machine's real BlueZ with a simulated SmartBall "
        "behind a virtual controller on /dev/vhci (for both, --faults, --seed, --erase-time "
        "and --sim-address apply)",
    ),
    "faults": SharedOption(
        "--sim-faults",
        "--faults",
        help=f"fault plan applied to every simulated device, e.g. {_FAULTS_EXAMPLE} or a "
        "profile name",
        cli_help=f"with --sim: faults to inject, e.g. {_FAULTS_EXAMPLE} or a profile such as "
        "field-linux; docs/faults.md lists them",
        cli_metavar="SPEC",
    ),
    "seed": SharedOption(
        "--sim-seed",
        "--seed",
        default=0,
        help="seed for the simulator's randomness (default 0)",
        cli_help="simulator random seed (default: 0)",
        cli_metavar="N",
    ),
    "sim_firmware_bug": SharedOption(
        "--sim-firmware-bug",
        "--sim-firmware-bug",
        default=(),
        repeatable=True,
        choices=_FIRMWARE_BUGS,
        metavar="NAME",
        help="give every simulated SmartBall this firmware bug (repeatable), to measure what "
        "the suite catches; docs/firmware-bugs.md says what each does: "
        + ", ".join(_FIRMWARE_BUGS),
        cli_help="with --sim: the simulated firmware has this bug (repeatable; "
        "docs/firmware-bugs.md says what each does): " + ", ".join(_FIRMWARE_BUGS),
    ),
    "sim_link": SharedOption(
        "--sim-link",
        "--sim-link",
        default="model",
        choices=SIM_LINK_CHOICES,
        help=f"what carries the simulator's BLE link: {_SIM_LINK_HELP}",
        cli_help=f"with --sim: what carries the BLE link: {_SIM_LINK_HELP}",
    ),
    "sim_firmware": SharedOption(
        "--sim-firmware",
        "--sim-firmware",
        default="python",
        choices=SIM_FIRMWARE_CHOICES,
        help=_SIM_FIRMWARE_HELP,
        cli_help=f"with --sim: {_SIM_FIRMWARE_HELP}",
    ),
    "sim_firmware_lib": SharedOption(
        "--sim-firmware-lib",
        "--sim-firmware-lib",
        metavar="PATH",
        help="with --sim-firmware=c: a built core to load (a firmware team's own build of "
        "firmware/include/smartball_core.h's HAL) instead of building firmware/",
    ),
    "sim_trust": SharedOption(
        "--sim-trust",
        "--sim-trust",
        default=SIM_TRUST_DEFAULT,
        choices=SIM_TRUST_CHOICES,
        help="what every simulated SmartBall trusts: 'test', the repository's test key (a "
        "signed-only ball, docs/protocol.md section 16), or 'none' (a v1 ball that runs any "
        f"image; default: {SIM_TRUST_DEFAULT}), with either --sim-firmware",
        cli_help="with --sim: what the simulated SmartBall is provisioned to trust: 'test' "
        "(default: the repository's test key, a signed-only ball, as release firmware is) "
        "or 'none' (a v1 ball that runs any image it is sent), with either --sim-firmware",
    ),
}


@dataclass(frozen=True, slots=True)
class SmartBallOptions:
    device: str
    name: str
    address: str | None
    adapter: str
    firmware: str | None
    seed: int
    faults: str | None
    baseline: str | None = None
    report: str | None = None
    scan_timeout: float = DEFAULT_SCAN_TIMEOUT_S
    bluez: str = SHARED_OPTIONS["bluez"].default
    #: Catalogue names of the bugs every simulated firmware of the run has.
    firmware_bugs: tuple[str, ...] = ()
    #: The simulated flash's timings, "erase_page_s=0.12,..." (None: the nRF52840's).
    sim_flash: str | None = None
    #: --sim-firmware: "python" (the firmware model) or "c" (the C reference core), and
    #: --sim-firmware-lib: a built core to load (docs/firmware.md).
    sim_firmware: str = SHARED_OPTIONS["sim_firmware"].default
    sim_firmware_lib: str | None = None
    #: What every simulated ball trusts: "test" (the test key: signed-only) or "none" (v1).
    sim_trust: str = SHARED_OPTIONS["sim_trust"].default
    compare: str | None = None
    compare_tolerance_percent: float = DEFAULT_COMPARE_TOLERANCE_PERCENT
    compare_min_measured_percent: float = DEFAULT_COMPARE_MIN_MEASURED_PERCENT
    soak: int | None = None
    sim_link: str = SHARED_OPTIONS["sim_link"].default
    #: --smartball-html: where the release page goes (None: no page).
    html: str | None = None
    #: How the user chooses the device in this run: ``--device``, or ``--smartball-device``
    #: where --device is another's (what our sentences tell them to type).
    device_flag: str = "--device"
    #: --signing-key: the private key the suite signs its test images with (None: on the
    #: simulator the repository's test key; on hardware none, which a signed-only board
    #: refuses at the start).
    signing_key: str | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in (self.address or "").split(",") if a.strip())

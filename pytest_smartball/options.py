"""The plugin's command-line options and the values a run reads from them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from . import protocol as p
from .link import LinkSettings

DEFAULT_SCAN_TIMEOUT_S = LinkSettings().scan_timeout_s

#: Which BlueZ a --device=real run talks to; all but "system" serve simulated SmartBalls.
BLUEZ_CHOICES = ("system", "emulated", "vhci")
SIMULATED_BLUEZ = ("emulated", "vhci")

#: Set once tests are collected: one of them uses the SmartBall fixtures or markers (only
#: then does ``--device=real`` check the bench).
NEEDS_DEVICE = pytest.StashKey[bool]()


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
    bluez: str = "system"
    sim_link: str = "model"

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in (self.address or "").split(",") if a.strip())


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("smartball", "SmartBall device under test")
    group.addoption(
        "--device",
        choices=("sim", "real"),
        default="sim",
        help="run against the in-process simulator (default) or real hardware",
    )
    group.addoption(
        "--ble-name",
        default=p.DEFAULT_NAME,
        help=f"advertised name of the device (default: {p.DEFAULT_NAME})",
    )
    group.addoption(
        "--ble-address",
        default=None,
        help="Bluetooth address of the device (preferred over the name); several, "
        "comma-separated, give each pytest-xdist worker (-n N) its own device",
    )
    group.addoption("--ble-adapter", default="hci0", help="BlueZ adapter (default: hci0)")
    group.addoption(
        "--ble-scan-timeout",
        type=float,
        default=DEFAULT_SCAN_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a scan looks for the device, in preflight and in the fixtures "
        "(default %(default)s)",
    )
    group.addoption(
        "--firmware",
        default=None,
        help="image (.bin or Intel .hex) the OTA tests flash; the simulator "
        "generates one when omitted",
    )
    group.addoption(
        "--baseline-firmware",
        default=None,
        metavar="PATH",
        help="the image the devices run before the run; a test that flashed another one "
        "is followed by flashing this one back (--device=real; without it a warning)",
    )
    group.addoption(
        "--smartball-report",
        default=None,
        metavar="PATH",
        help="write a JSON summary of the run (devices, firmware before and after, every "
        "update's figures, outcomes) for the release checklist",
    )
    group.addoption(
        "--sim-seed", type=int, default=0, help="seed for the simulator's randomness (default 0)"
    )
    group.addoption(
        "--fuzz-examples",
        type=int,
        default=None,
        metavar="N",
        help="hypothesis examples per property (the fuzz suites scale from it; default: "
        "the hypothesis profile's, 100 in CI)",
    )
    group.addoption(
        "--sim-link",
        choices=("model", "bumble"),
        default="model",
        help="what carries the simulator's BLE link: our radio model (default) or Google's "
        "Bumble stack (real HCI/L2CAP/ATT; pip install 'pytest-smartball[bumble]')",
    )
    group.addoption(
        "--sim-faults",
        default=None,
        help="fault plan applied to every simulated device, e.g. "
        "'drop@erase:50%%,reboot@offset:200000' or a profile name",
    )
    group.addoption(
        "--bluez",
        choices=BLUEZ_CHOICES,
        default="system",
        help="with --device=real: the system's BlueZ (default); 'emulated': a private "
        "dbus-daemon and an emulated bluetoothd serving simulated SmartBalls "
        "(smartball_sim.bluez); or 'vhci': the system's real BlueZ with simulated SmartBalls "
        "behind a virtual controller on /dev/vhci (smartball_sim.vhci); both are started and "
        "stopped by this run",
    )


def read_options(config: pytest.Config) -> SmartBallOptions:
    return SmartBallOptions(
        device=config.getoption("--device"),
        name=config.getoption("--ble-name"),
        address=config.getoption("--ble-address"),
        adapter=config.getoption("--ble-adapter"),
        firmware=config.getoption("--firmware"),
        seed=config.getoption("--sim-seed"),
        faults=config.getoption("--sim-faults"),
        baseline=config.getoption("--baseline-firmware"),
        report=config.getoption("--smartball-report"),
        scan_timeout=config.getoption("--ble-scan-timeout"),
        bluez=config.getoption("--bluez"),
        sim_link=config.getoption("--sim-link"),
    )

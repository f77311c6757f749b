"""``--bluez=vhci``: the real-device path against this machine's real BlueZ, with simulated
SmartBalls behind a virtual controller (``smartball_sim.vhci``).

The pytest plugin calls :func:`start` from ``pytest_configure`` (before preflight and any
bleak use); the CLI calls :func:`run_with_virtual_radio`. Both need a Linux kernel with
``hci_vhci`` (``/dev/vhci``, root or a udev rule) and a running ``bluetoothd``: a developer's
machine, or the VM of ``python -m smartball_sim.vm`` (what CI uses). Without them the run
stops with one sentence saying what is missing.

Nothing above the controller is ours: the kernel's HCI and L2CAP, bluetoothd's GATT
client and D-Bus objects, bleak's BlueZ backend, bleak-retry-connector, preflight's BlueZ
checks and ``Adapter1.RemoveDevice`` all run unchanged. The plugin's own link and OTA
settings (the bench's settle and stabilise delays) apply; only the devices are quick
(5 ms per erased page, 0.3 s boot, as with ``--bluez=emulated``). ``--ble-adapter`` becomes
the adapter the virtual controller got (``hci0`` in the VM, ``hci1`` next to a laptop's
own adapter). ``--sim-faults`` applies to the devices for the whole session;
``vhci_radio.call(device.set_faults, SPEC)`` sets a plan from a test.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import pytest

from .image import FirmwareImage, load_image

if TYPE_CHECKING:  # the simulator is imported only when the radio is started
    from smartball_sim.vhci import VirtualRadio

#: The image OTA tests flash when --firmware is not given (small: real time).
GENERATED_IMAGE_SIZE = 16_195
INSTALL_HINT = "--bluez=vhci needs Google's Bumble BLE stack: pip install bumble"

_STASH = pytest.StashKey["VirtualRadio"]()


class VhciSetupError(Exception):
    """The virtual radio cannot run here; the message is one sentence."""


def start_radio(
    name: str,
    addresses: tuple[str, ...],
    *,
    faults: str | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> VirtualRadio:
    """Serve one simulated SmartBall per address behind a new virtual controller."""
    try:
        import bumble  # noqa: F401
    except ImportError:
        raise VhciSetupError(INSTALL_HINT) from None
    from smartball_sim.bluez.launcher import emulated_smartball
    from smartball_sim.faults import FaultSpecError
    from smartball_sim.vhci import VhciUnavailable, VirtualRadio

    try:
        devices = [
            emulated_smartball(name, address, faults=faults, seed=seed + i, **(options or {}))
            for i, address in enumerate(addresses)
        ]
        return VirtualRadio(devices).start()
    except (VhciUnavailable, FaultSpecError) as exc:
        raise VhciSetupError(str(exc)) from None


def start(config: pytest.Config) -> VirtualRadio:
    """pytest: start the radio for this session and point --ble-adapter at it."""
    if config.getoption("--device") != "real":
        raise pytest.UsageError(
            "--bluez=vhci serves simulated SmartBalls to the real-device path: use it with "
            "--device=real (--device=sim needs no BlueZ at all)"
        )
    from smartball_sim.device import DEFAULT_ADDRESS

    from .plugin import _options

    options: dict[str, Any] = {}
    baseline = config.getoption("--baseline-firmware")
    if baseline:
        options["active_image"] = load_image(baseline).data
    try:
        radio = start_radio(
            config.getoption("--ble-name"),
            _options(config).addresses or (DEFAULT_ADDRESS,),
            faults=config.getoption("--sim-faults"),
            seed=config.getoption("--sim-seed"),
            options=options,
        )
    except VhciSetupError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.option.ble_adapter = radio.adapter
    config.stash[_STASH] = radio
    config.add_cleanup(radio.stop)
    # Registered after pytest_smartball.plugin: its firmware_image below overrides the plugin's.
    config.pluginmanager.register(sys.modules[__name__], "smartball-vhci-bluez")
    return radio


def run_with_virtual_radio(args: Any, fault_plan: Any, coro: Coroutine[Any, Any, int]) -> int:
    """The CLI's ``--bluez=vhci``: run ``coro`` (a command on the real-device path) with a
    simulated SmartBall behind a virtual controller that this call starts and stops."""
    from .cli import EXIT_NOT_FOUND, CliError, run_coroutine

    options: dict[str, Any] = {}
    if getattr(args, "erase_time", None):
        from smartball_sim.firmware import FlashTimings

        options["flash"] = FlashTimings(erase_total_s=args.erase_time)
    try:
        radio = start_radio(
            args.name,
            (args.address or args.sim_address,),
            faults=fault_plan,
            seed=args.seed,
            options=options,
        )
    except VhciSetupError as exc:
        coro.close()
        raise CliError(EXIT_NOT_FOUND, str(exc)) from None
    args.adapter = radio.adapter  # read when the command opens its target
    try:
        return run_coroutine(coro, virtual=False)
    finally:
        radio.stop()


def vhci(config: pytest.Config) -> VirtualRadio | None:
    """The running virtual radio of this session, if any."""
    return config.stash.get(_STASH, None)


# --- fixtures (active only once start() registered this module) -------------------------


@pytest.fixture(scope="session")
def vhci_radio(pytestconfig: pytest.Config) -> VirtualRadio:
    """The session's virtual radio (its devices: ``vhci_radio.devices``; run code on their
    loop with ``vhci_radio.call``)."""
    radio = vhci(pytestconfig)
    assert radio is not None
    return radio


@pytest.fixture(scope="session")
def firmware_image(pytestconfig: pytest.Config) -> FirmwareImage:
    path = pytestconfig.getoption("--firmware")
    if path:
        return load_image(path)
    seed = pytestconfig.getoption("--sim-seed")
    data = random.Random(seed).randbytes(GENERATED_IMAGE_SIZE)
    return FirmwareImage(data, f"generated-{GENERATED_IMAGE_SIZE}.bin")

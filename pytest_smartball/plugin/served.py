"""``--bluez=emulated|vhci``: simulated SmartBalls served to the real-device path, started
for the session and reached through fixtures.

:func:`start` is called from the plugin's ``pytest_configure`` with the run's ``--bluez``,
before the session starts (so before the real-device preflight and any bleak use), and the
run stops what it started when pytest unconfigures (also after failures or Ctrl-C). What
starts them is library code (:mod:`pytest_smartball.targets.emulated_bluez`,
:mod:`pytest_smartball.targets.vhci_bluez`), imported only when asked for: this module
imports no simulator. The fixtures here are ordinary fixtures of the plugin; which
settings and image the other fixtures use with them is decided in :mod:`.fixtures`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ..image import load_image
from ..options import SmartBallOptions
from ..targets import TargetKind
from .command_line import read_options

if TYPE_CHECKING:  # the simulator is imported only when asked for
    from ..targets.emulated_bluez import EmulatedBluez
    from ..targets.vhci_bluez import VirtualRadio

_EMULATED = pytest.StashKey["EmulatedBluez"]()
_VHCI = pytest.StashKey["VirtualRadio"]()


def start(config: pytest.Config, kind: TargetKind) -> None:
    """Start the simulated SmartBalls a kind that serves the real path serves (for the
    others: nothing)."""
    if kind.serves_real_path:
        {"emulated": _start_emulated, "vhci": _start_vhci}[kind.name](config)


def _baseline(opts: SmartBallOptions) -> bytes | None:
    return load_image(opts.baseline).data if opts.baseline else None


def _start_emulated(config: pytest.Config) -> None:
    opts = read_options(config)
    from ..targets.emulated_bluez import EmulatorUnavailable, start_emulator

    try:
        bluez = start_emulator(
            opts.name,
            opts.addresses,
            adapter=opts.adapter,
            faults=opts.faults,
            seed=opts.seed,
            active_image=_baseline(opts),
        )
    except EmulatorUnavailable as exc:
        raise pytest.UsageError(f"--bluez=emulated: {exc}") from None
    config.stash[_EMULATED] = bluez
    config.add_cleanup(bluez.stop)


def _start_vhci(config: pytest.Config) -> None:
    """Start the radio for this session and point --ble-adapter at it."""
    opts = read_options(config)
    from ..targets.vhci_bluez import VhciSetupError, start_radio

    try:
        radio = start_radio(
            opts.name,
            opts.addresses,
            faults=opts.faults,
            seed=opts.seed,
            active_image=_baseline(opts),
        )
    except VhciSetupError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.option.ble_adapter = radio.adapter
    config.stash[_VHCI] = radio
    config.add_cleanup(radio.stop)


@pytest.fixture(scope="session")
def emulated_bluez(pytestconfig: pytest.Config) -> EmulatedBluez:
    """The session's emulated BlueZ (its devices: ``emulated_bluez.devices``; run code
    on their loop with ``emulated_bluez.call``)."""
    bluez = pytestconfig.stash.get(_EMULATED, None)
    if bluez is None:
        pytest.fail("emulated_bluez needs a run with --device=real --bluez=emulated", False)
    return bluez


@pytest.fixture(scope="session")
def vhci_radio(pytestconfig: pytest.Config) -> VirtualRadio:
    """The session's virtual radio (its devices: ``vhci_radio.devices``; run code on their
    loop with ``vhci_radio.call``)."""
    radio = pytestconfig.stash.get(_VHCI, None)
    if radio is None:
        pytest.fail("vhci_radio needs a run with --device=real --bluez=vhci", False)
    return radio

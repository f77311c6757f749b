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

from typing import TYPE_CHECKING, Any

import pytest

from ..image import load_image
from ..targets import TargetKind, TargetUnavailable, opener
from .command_line import read_options

if TYPE_CHECKING:  # the simulator is imported only when asked for
    from ..targets.emulated_bluez import EmulatedBluez
    from ..targets.vhci_bluez import VirtualRadio

_EMULATED = pytest.StashKey["EmulatedBluez"]()
_VHCI = pytest.StashKey["VirtualRadio"]()
#: Where the session keeps what each kind that serves the real path started.
_STARTED: dict[str, pytest.StashKey[Any]] = {"emulated": _EMULATED, "vhci": _VHCI}


def start(config: pytest.Config, kind: TargetKind) -> None:
    """Start the simulated SmartBalls a kind that serves the real path serves (for the
    others: nothing), with what its table entry opens, and point --ble-adapter at the
    adapter that reaches them."""
    if not kind.serves_real_path:
        return
    opts = read_options(config)
    baseline = load_image(opts.baseline).data if opts.baseline else None
    ball: dict[str, Any] = {"faults": opts.faults, "seed": opts.seed, "active_image": baseline}
    if kind.name == "emulated":  # a virtual controller gets an adapter of the kernel's
        ball["adapter"] = opts.adapter
    try:
        served = opener(kind)(opts.name, opts.addresses, **ball)
    except TargetUnavailable as exc:
        # the emulator's reasons are the machine's (no dbus-daemon): name the option too
        raise pytest.UsageError(
            f"--bluez=emulated: {exc}" if kind.name == "emulated" else str(exc)
        ) from None
    config.option.ble_adapter = served.adapter
    config.stash[_STARTED[kind.name]] = served
    config.add_cleanup(served.stop)


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

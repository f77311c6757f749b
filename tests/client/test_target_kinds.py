"""The one table of target kinds (pytest_smartball.targets.KINDS): every valid combination of
``--device``, ``--sim-link`` and ``--bluez`` names exactly one kind, the others a sentence."""

from __future__ import annotations

import itertools

import pytest

from pytest_smartball.image import generated_image
from pytest_smartball.options import BLUEZ_CHOICES, DEVICE_CHOICES
from pytest_smartball.targets import (
    KINDS,
    NoSuchTarget,
    TargetUnavailable,
    kind_named,
    kind_of,
    open_in_process,
    opener,
    simulated_update,
)

SIM_LINKS = ("model", "bumble")


def test_each_kind_is_what_its_own_options_ask_for() -> None:
    for kind in KINDS:
        assert kind_of(kind.device, kind.sim_link or "model", kind.bluez) == kind
        assert kind_named(kind.name) == kind
    assert len({k.name for k in KINDS}) == len(KINDS)


def test_the_twelve_combinations_name_five_kinds_or_a_sentence() -> None:
    named, refused = set(), []
    for device, link, bluez in itertools.product(DEVICE_CHOICES, SIM_LINKS, BLUEZ_CHOICES):
        try:
            named.add(kind_of(device, link, bluez).name)
        except NoSuchTarget as exc:
            refused.append((device, bluez, str(exc)))
    assert named == {"sim", "bumble", "real", "emulated", "vhci"}
    # --sim-link is the in-process simulator's and is not looked at on the real path
    assert [(d, b) for d, b, _ in refused] == [("sim", "emulated"), ("sim", "vhci")] * 2
    assert all("--device=real" in sentence for _, _, sentence in refused)


def test_what_each_kind_says_of_itself() -> None:
    sim, bumble, real, emulated, vhci = (
        kind_named(n) for n in ("sim", "bumble", "real", "emulated", "vhci")
    )
    assert [k.in_process for k in KINDS] == [True, True, False, False, False]
    assert (sim.bluez_faults, bumble.bluez_faults, real.faults) == (True, False, None)
    assert [k.serves_real_path for k in (real, emulated, vhci)] == [False, True, True]
    assert (emulated.fast_settings, vhci.fast_settings, real.fast_settings) == (True, False, False)
    assert (emulated.real_time_image, vhci.real_time_image, sim.real_time_image) == (
        True,
        True,
        False,
    )


def test_only_an_in_process_kind_opens_a_simulated_ball_here() -> None:
    target = open_in_process(kind_named("sim"), seed=3)
    assert target.sim is not None and target.address == target.sim.address
    for name in ("real", "emulated", "vhci"):
        with pytest.raises(NoSuchTarget):
            open_in_process(kind_named(name))


def test_a_simulated_update_runs_once_on_a_fresh_ball_of_its_kind() -> None:
    image = generated_image(5, 6000)
    update = simulated_update(image, kind_named("sim"), seed=3)
    before = update.device.firmware.active.data
    result = update.run()
    assert result.success, result.error
    assert update.device.firmware.active.data == image.data != before
    with pytest.raises(NoSuchTarget):
        simulated_update(image, kind_named("emulated"))


def test_the_kinds_that_serve_the_real_path_start_with_what_the_table_names() -> None:
    from pytest_smartball.targets.emulated_bluez import EmulatorUnavailable, start_emulator
    from pytest_smartball.targets.vhci_bluez import VhciSetupError, start_radio

    assert opener(kind_named("emulated")) is start_emulator
    assert opener(kind_named("vhci")) is start_radio
    # the plugin stops either with one sentence, whichever cannot start
    assert issubclass(EmulatorUnavailable, TargetUnavailable)
    assert issubclass(VhciSetupError, TargetUnavailable)

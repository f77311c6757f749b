"""The plugin's command-line options, and reading them into a run's
:class:`~pytest_smartball.options.SmartBallOptions`."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex

import pytest

from ..options import (
    DEFAULT_COMPARE_MIN_MEASURED_PERCENT,
    DEFAULT_COMPARE_TOLERANCE_PERCENT,
    DEFAULT_SCAN_TIMEOUT_S,
    DEVICE_CHOICES,
    SHARED_OPTIONS,
    SmartBallOptions,
)

#: Where both spellings of the device option store their value. ``--smartball-device``
#: always exists; ``--device`` is added only when no other plugin or conftest has it.
DEVICE_DEST = "smartball_device"

#: Set when ``--device`` belongs to another plugin or conftest of the run: the sentence
#: that says so (the device is then chosen with ``--smartball-device``).
DEVICE_CLASH = pytest.StashKey[str]()
_DEVICE_HELP = "run against the in-process simulator (default) or real hardware"

#: Set once tests are collected: one of them uses the SmartBall fixtures or markers (only
#: then does ``--device=real`` check the bench).
NEEDS_DEVICE = pytest.StashKey[bool]()


def _add_shared(group: pytest.OptionGroup, key: str, **extra: object) -> None:
    """Add the setting ``key`` of :data:`~pytest_smartball.options.SHARED_OPTIONS`."""
    option = SHARED_OPTIONS[key]
    group.addoption(option.plugin_flag, **option.parser_kwargs(cli=False), **extra)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("smartball", "SmartBall device under test")
    group.addoption(
        "--smartball-device",
        dest=DEVICE_DEST,
        choices=DEVICE_CHOICES,
        default="sim",
        help=_DEVICE_HELP + "; the same as --device, and works where another plugin or "
        "conftest owns --device",
    )
    _add_shared(group, "name")
    _add_shared(group, "address")
    _add_shared(group, "adapter")
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
        help="image (.bin, Intel .hex, ELF, UF2 or DFU .zip) the OTA tests flash; the simulator "
        "generates one when omitted",
    )
    group.addoption(
        "--signing-key",
        default=None,
        metavar="PATH",
        help="the Ed25519 private key (PEM) the suite signs its test images with, for a "
        "device that runs only signed images; default with --device=sim: the repository's "
        "test key; with --device=real required when the device is signed-only",
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
    _add_shared(group, "seed", type=int)
    group.addoption(
        "--fuzz-examples",
        type=int,
        default=None,
        metavar="N",
        help="hypothesis examples per property (the fuzz suites scale from it; default: "
        "the hypothesis profile's, 100 in CI)",
    )
    _add_shared(group, "sim_link")
    _add_shared(group, "faults")
    _add_shared(group, "bluez")
    _add_shared(group, "sim_firmware_bug")
    group.addoption(
        "--sim-flash",
        default=None,
        metavar="KEY=S,...",
        help="the simulated flash's timings, e.g. 'erase_page_s=0.12,write_word_s=50e-6' "
        "(default: the nRF52840's, 85 ms per page erase, 41 us per word)",
    )
    _add_shared(group, "sim_firmware")
    _add_shared(group, "sim_firmware_lib")
    _add_shared(group, "sim_trust")
    release = parser.getgroup("smartball-release", "SmartBall release gate")
    release.addoption(
        "--smartball-compare",
        default=None,
        metavar="PREVIOUS_REPORT.json",
        help="put this run's figures beside those of a previous --smartball-report (the "
        "last release's) as ratios; a figure worse than the tolerance fails the run",
    )
    release.addoption(
        "--smartball-compare-tolerance",
        type=float,
        default=DEFAULT_COMPARE_TOLERANCE_PERCENT,
        metavar="PERCENT",
        help="how much worse than the previous release a figure may be (default %(default)s %%)",
    )
    release.addoption(
        "--smartball-html",
        default=None,
        metavar="PATH",
        help="write the release page: one self-contained HTML file (no network) with each "
        "update as a timeline per board, the timing figures against their limits and, with "
        "--smartball-compare, beside the last release's",
    )
    release.addoption(
        "--smartball-compare-min-measured",
        type=float,
        default=DEFAULT_COMPARE_MIN_MEASURED_PERCENT,
        metavar="PERCENT",
        help="the share of the previous release's figures this run must measure again; "
        "fewer fails the comparison, naming the figures not measured (default %(default)s %%: "
        "a figure not measured is a regression not looked for)",
    )
    release.addoption(
        "--smartball-soak",
        type=int,
        default=None,
        metavar="N",
        help="hil_tests/test_soak.py runs N back-to-back updates per device (candidate, "
        "baseline, candidate, ...) and reports min/median/max of each figure and every "
        "failure with its timeline",
    )
    OPTION_NAMES.clear()
    OPTION_NAMES.update(name for g in (group, release) for o in g.options for name in o.names())


#: The long names of the options :func:`add_options` added (``--device`` is not among
#: them: it is ours only where no one else has it, see :data:`DEVICE_CLASH`).
OPTION_NAMES: set[str] = set()


def add_device_option(parser: pytest.Parser) -> str | None:
    """Add the short spelling ``--device`` (the design's) unless another plugin or conftest
    of the run already has it; then return the sentence that says so. Called once the
    plugins and the initial conftests have added their options, so that ours never makes
    theirs fail at start-up (``option dest 'device' already used``)."""
    group = parser.getgroup("smartball")
    try:
        group.addoption("--device", dest=DEVICE_DEST, choices=DEVICE_CHOICES, help=_DEVICE_HELP)
    except (ValueError, argparse.ArgumentError):
        return (
            "--device belongs to another plugin or this project's conftest here, so it does "
            "not choose the SmartBall device: use --smartball-device=sim or "
            "--smartball-device=real"
        )
    return None


def command_words(config: pytest.Config) -> list[str]:
    """Every word of the run's options as the user gave them: the command line, the ini
    file's ``addopts`` and ``PYTEST_ADDOPTS`` (pytest merges them, but keeps only the
    command line apart as it was typed)."""
    words = [str(a) for a in config.invocation_params.args]
    with contextlib.suppress(ValueError):
        words += [str(a) for a in config.getini("addopts")]
        words += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    return words


def read_options(config: pytest.Config) -> SmartBallOptions:
    # The settings both fronts share are read by their flags in the one table; their keys
    # are SmartBallOptions' fields, but for the bugs (given once per bug, kept once each).
    shared = {key: config.getoption(option.plugin_flag) for key, option in SHARED_OPTIONS.items()}
    bugs = shared.pop("sim_firmware_bug") or ()
    return SmartBallOptions(
        **shared,
        device=config.getoption(DEVICE_DEST),
        firmware=config.getoption("--firmware"),
        baseline=config.getoption("--baseline-firmware"),
        report=config.getoption("--smartball-report"),
        scan_timeout=config.getoption("--ble-scan-timeout"),
        firmware_bugs=tuple(dict.fromkeys(bugs)),
        sim_flash=config.getoption("--sim-flash"),
        compare=config.getoption("--smartball-compare"),
        compare_tolerance_percent=config.getoption("--smartball-compare-tolerance"),
        compare_min_measured_percent=config.getoption("--smartball-compare-min-measured"),
        soak=config.getoption("--smartball-soak"),
        html=config.getoption("--smartball-html"),
        device_flag=device_flag(config),
        signing_key=config.getoption("--signing-key"),
    )


def device_flag(config: pytest.Config) -> str:
    """``--device``, or ``--smartball-device`` where --device is another's option."""
    return "--smartball-device" if DEVICE_CLASH in config.stash else "--device"

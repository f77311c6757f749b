"""Targets: a device to talk to, and the bleak backend that reaches it.

A real SmartBall is reached through the platform's radio (:class:`~pytest_smartball.link.
BleBackend` with no classes). The modules of this package build the other kinds, and they
are the only place in ``pytest_smartball`` that imports the simulator (``smartball_sim``):

* :mod:`.simulated`: a simulated SmartBall in this process, behind bleak backends;
* :mod:`.bumble`: a simulated SmartBall in this process, reached over Google's Bumble stack;
* :mod:`.emulated_bluez`: simulated SmartBalls behind an emulated bluetoothd on a private
  D-Bus, reached through the unchanged real-device path;
* :mod:`.vhci_bluez`: simulated SmartBalls behind a virtual controller of the system's BlueZ;
* :mod:`.labgrid_loopback`: a labgrid farm of simulated SmartBalls on loopback (CI tooling).

Library code: nothing here imports pytest (the plugin's fixtures, :mod:`pytest_smartball.
plugin`, call these modules).

Everything else imports this package's ``__init__`` only, which imports no simulator code,
so neither ``import pytest_smartball.plugin`` nor a CLI command without ``--sim`` loads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..image import FirmwareImage, generated_image, load_image
from ..link import BleBackend, LinkSettings
from ..loops import run as run_loop
from ..ota import Limits, OtaEngine, OtaResult, OtaSettings

if TYPE_CHECKING:
    from smartball_sim.device import SimDevice

#: The generated image's size for simulated devices that run in real time (behind an
#: emulated or a real bluetoothd): small enough that an update takes seconds.
REAL_TIME_IMAGE_SIZE = 16_195


#: Short pauses for emulated devices that erase a page in 5 ms and boot in 0.3 s.
FAST_LINK = LinkSettings(settle_s=0.05, services_retry_backoff_s=0.05, scan_timeout_s=5.0)
FAST_OTA = OtaSettings(
    link=FAST_LINK,
    stabilise_s=0.05,
    limits=Limits(backoff_base_s=0.05, backoff_max_s=0.5),
    reappear_timeout_s=10.0,
)


def real_time_firmware_image(path: str | None, seed: int) -> FirmwareImage:
    """The image at ``path`` (``--firmware``), or a generated image of REAL_TIME_IMAGE_SIZE
    bytes."""
    if path:
        return load_image(path)
    return generated_image(seed, REAL_TIME_IMAGE_SIZE)


@dataclass(slots=True)
class Target:
    """The device under test, as the client reaches it."""

    backend: BleBackend
    name: str
    address: str | None
    #: The simulated device itself (fault injection, inspection); None on a real radio.
    sim: SimDevice | None = None

    @property
    def is_sim(self) -> bool:
        return self.sim is not None


# --- the table of target kinds -----------------------------------------------------------

#: The in-process targets' fault plans: every fault of docs/faults.md, or all but BlueZ's.
ALL_FAULTS = "every fault of docs/faults.md, per test"
NO_BLUEZ_FAULTS = "all but BlueZ's (race, stale-cache), per test"
SESSION_FAULTS = "--sim-faults, for the whole session (each fault fires once)"


@dataclass(frozen=True, slots=True)
class TargetKind:
    """One kind of device under test: what it needs, which faults it can express, how it
    opens and what settings go with it. :data:`KINDS` holds every kind; the plugin, the
    CLI, the fuzzer and the benchmark all choose theirs with :func:`kind_of`."""

    name: str
    #: What ``--device`` says (the plugin; the CLI: ``--sim`` or not).
    device: str
    #: ``--sim-link`` of an in-process kind (None: the option does not apply).
    sim_link: str | None
    #: ``--bluez``: the system's, or a BlueZ serving simulated SmartBalls to the real path.
    bluez: str
    #: What the machine needs for it (one phrase, for sentences and docs).
    needs: str
    #: Which fault plans it can express (None: no fault can be injected).
    faults: str | None
    #: ``module:function`` that opens it, imported only when a run asks for it (None: the
    #: platform's radio, a plain :class:`Target`).
    opens: str | None
    #: A fresh simulated SmartBall per test or command, in this process, on the virtual clock.
    in_process: bool = False
    #: Short settle, stabilise and backoff pauses (:data:`FAST_OTA`): quick simulated balls.
    fast_settings: bool = False
    #: Without --firmware the suite flashes a small generated image (REAL_TIME_IMAGE_SIZE):
    #: the balls run in real time.
    real_time_image: bool = False

    @property
    def serves_real_path(self) -> bool:
        """Simulated SmartBalls behind a BlueZ this run starts, reached by the real path."""
        return self.device == "real" and self.bluez != "system"

    @property
    def bluez_faults(self) -> bool:
        """It can express BlueZ's faults (``race``, ``stale-cache``)."""
        return self.faults is not None and self.faults != NO_BLUEZ_FAULTS


KINDS: tuple[TargetKind, ...] = (
    TargetKind(
        "sim",
        "sim",
        "model",
        "system",
        needs="nothing: our radio model, in this process",
        faults=ALL_FAULTS,
        opens="pytest_smartball.targets.simulated:make_sim_target",
        in_process=True,
    ),
    TargetKind(
        "bumble",
        "sim",
        "bumble",
        "system",
        needs="Google's Bumble: pip install 'pytest-smartball[bumble]'",
        faults=NO_BLUEZ_FAULTS,
        opens="pytest_smartball.targets.bumble:make_bumble_target",
        in_process=True,
    ),
    TargetKind(
        "real",
        "real",
        None,
        "system",
        needs="a SmartBall in range and the system's BlueZ",
        faults=None,
        opens=None,
    ),
    TargetKind(
        "emulated",
        "real",
        None,
        "emulated",
        needs="dbus-daemon (an emulated bluetoothd on a private bus)",
        faults=SESSION_FAULTS,
        opens="pytest_smartball.targets.emulated_bluez:start_emulator",
        fast_settings=True,
        real_time_image=True,
    ),
    TargetKind(
        "vhci",
        "real",
        None,
        "vhci",
        needs="/dev/vhci, a running bluetoothd and Bumble",
        faults=SESSION_FAULTS,
        opens="pytest_smartball.targets.vhci_bluez:start_radio",
        real_time_image=True,
    ),
)


class NoSuchTarget(ValueError):
    """Options that name no kind of :data:`KINDS` (one sentence: what to type instead)."""


class TargetUnavailable(RuntimeError):
    """A kind that serves the real path cannot start on this machine (one sentence: what is
    missing)."""


def kind_of(device: str, sim_link: str = "model", bluez: str = "system") -> TargetKind:
    """The kind ``--device``, ``--sim-link`` and ``--bluez`` ask for (``--sim-link``
    applies to the simulator in this process only, and is not looked at otherwise)."""
    for kind in KINDS:
        if (kind.device, kind.bluez) == (device, bluez) and kind.sim_link in (None, sim_link):
            return kind
    if device == "sim" and bluez == "emulated":
        raise NoSuchTarget(
            "--bluez=emulated replaces bluetoothd for the real-device path: use it with "
            "--device=real (--device=sim needs no BlueZ at all)"
        )
    if device == "sim" and bluez == "vhci":
        raise NoSuchTarget(
            "--bluez=vhci serves simulated SmartBalls to the real-device path: use it with "
            "--device=real (--device=sim needs no BlueZ at all)"
        )
    raise NoSuchTarget(
        f"no target for --device={device} --sim-link={sim_link} --bluez={bluez}: one of "
        + ", ".join(f"{k.name} ({k.needs})" for k in KINDS)
    )


def kind_named(name: str) -> TargetKind:
    """The kind of :data:`KINDS` called ``name``."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise NoSuchTarget(f"no target kind {name!r}: one of {', '.join(k.name for k in KINDS)}")


def opener(kind: TargetKind) -> Callable[..., Any]:
    """What opens ``kind`` (its module imported now: the simulator, when it is one)."""
    if kind.opens is None:
        raise NoSuchTarget(f"{kind.name}: the platform's radio is reached, not opened")
    module, _, function = kind.opens.partition(":")
    opens: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return opens


def open_in_process(kind: TargetKind, **options: Any) -> Target:
    """A fresh simulated SmartBall of an in-process kind (``sim`` or ``bumble``), with the
    options of :func:`~.simulated.make_sim_target`."""
    if not kind.in_process:
        raise NoSuchTarget(f"{kind.name}: not a simulated SmartBall in this process")
    target: Target = opener(kind)(**options)
    return target


@dataclass(slots=True)
class SimulatedUpdate:
    """One update of a fresh simulated SmartBall in this process, on the virtual clock: the
    device is open to be looked at or instrumented (its image before, its air log) before
    :meth:`run` updates it. What the fuzzer's properties and the benchmark's figures run."""

    image: FirmwareImage
    target: Target

    @property
    def device(self) -> SimDevice:
        assert self.target.sim is not None, "an in-process target holds its device"
        return self.target.sim

    def run(self, settings: OtaSettings | None = None) -> OtaResult:
        """The whole update, with the engine's default ``settings`` unless given, to its end."""
        engine = OtaEngine(
            self.image, self.target.backend, address=self.target.address, settings=settings
        )
        return run_loop(virtual=True, coro=engine.run())


def simulated_update(image: FirmwareImage, kind: TargetKind, **options: Any) -> SimulatedUpdate:
    """An update of ``image`` ready to run on a fresh SmartBall of the in-process ``kind``,
    opened with ``options`` (those of :func:`~.simulated.make_sim_target`)."""
    return SimulatedUpdate(image, open_in_process(kind, **options))

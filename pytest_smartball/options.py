"""What a run of the suite is asked for (:class:`SmartBallOptions`) and the choices the
plugin's and the CLI's options share. Library code: no pytest here (the plugin adds and reads
the options in :mod:`pytest_smartball.plugin.command_line`; ``smartball-ota`` in
:mod:`pytest_smartball.cli.args`)."""

from __future__ import annotations

from dataclasses import dataclass

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
    #: Catalogue names of the bugs every simulated firmware of the run has.
    firmware_bugs: tuple[str, ...] = ()
    #: The simulated flash's timings, "erase_page_s=0.12,..." (None: the nRF52840's).
    sim_flash: str | None = None
    #: --sim-firmware: "python" (the firmware model) or "c" (the C reference core), and
    #: --sim-firmware-lib: a built core to load (docs/firmware.md).
    sim_firmware: str = "python"
    sim_firmware_lib: str | None = None
    #: What every simulated ball trusts: "test" (the test key: signed-only) or "none" (v1).
    sim_trust: str = SIM_TRUST_DEFAULT
    compare: str | None = None
    compare_tolerance_percent: float = DEFAULT_COMPARE_TOLERANCE_PERCENT
    compare_min_measured_percent: float = DEFAULT_COMPARE_MIN_MEASURED_PERCENT
    soak: int | None = None
    sim_link: str = "model"
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

"""A simulated SmartBall: firmware model + radio (advertising, one link, NUS) + fault injection.

The device decides what a SmartBall does: its firmware, when it advertises, when it resets,
which faults fire. What carries its one link is a seam, a :class:`LinkLayer`:

* :class:`ModelLinkLayer` (the default): an in-process model of the radio with connection
  events and airtime (``smartball_sim.radio``). The bleak backend in
  ``smartball_sim.fronts.in_process`` and the BlueZ emulator talk to it through
  ``connect``/``write``/``disconnect`` and receive notifications and link loss through the
  ``LinkPeer`` callbacks they register.
* the Bumble peripheral (``smartball_sim.bumble``): a real BLE host stack serving the same
  device over HCI, L2CAP and ATT.

The radio side never imports the client.

This module holds :class:`SimDevice`; the link seam (:class:`Link`, :class:`LinkLayer`, what a
link refuses) lives in ``radio/seam.py``, the model radio in ``model_link.py``, and fault injection
in ``fault_injector.py``. Every name stays importable from here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import assert_never, cast

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.signing import TrustedKey

from . import gate_probe
from .fault_injector import (
    CutSwap,
    DeviceEffect,
    DropLink,
    FailFlash,
    FaultInjector,
    FaultRecord,
    FlipStaged,
    PauseAdvertising,
    Reboot,
    SlowErase,
)
from .faults import FaultPlan
from .firmware.bugs import FirmwareBug
from .firmware.c_core import library_for
from .firmware.c_firmware import CFirmware
from .firmware.model import (
    DEFAULT_STAGING_CAPACITY,
    FirmwareEvent,
    FlashTimings,
    SmartBallFirmware,
    to_us,
)
from .model_link import ModelLinkLayer, SimLink
from .radio.airlog import Packet, Sender
from .radio.profiles import RadioProfile
from .radio.seam import (
    ConnectRefusal,
    ConnectRefused,
    Link,
    LinkClosed,
    LinkEnd,
    LinkLayer,
    LinkPeer,
    SimLinkError,
    WriteTooLong,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "NUS_RX",
    "NUS_SERVICE",
    "NUS_TX",
    "ConnectRefusal",
    "ConnectRefused",
    "FaultInjector",
    "FaultRecord",
    "Link",
    "LinkClosed",
    "LinkEnd",
    "LinkLayer",
    "LinkPeer",
    "ModelLinkLayer",
    "RadioTimings",
    "SimDevice",
    "SimLink",
    "SimLinkError",
    "WriteTooLong",
]

log = logging.getLogger("sim.device")

DEFAULT_ADDRESS = "C0:FF:EE:00:00:01"
NUS_SERVICE = p.NUS_SERVICE_UUID
NUS_RX = p.NUS_RX_UUID
NUS_TX = p.NUS_TX_UUID


@dataclass(frozen=True, slots=True)
class RadioTimings:
    #: nRF52840 SoftDevice default advertising interval for a connectable device is
    #: 100 ms-ish; the scanner sees one advertisement per interval.
    adv_interval_s: float = 0.1
    #: Time from the host's connect request to an established link with services resolved.
    connect_s: float = 0.3
    #: Reset to advertising again (bootloader + application start).
    boot_s: float = 2.0
    #: The connected link's timing (connection events, PHY, data length, MTU).
    link: RadioProfile = field(default_factory=RadioProfile)


class SimDevice:
    """One simulated SmartBall. Deterministic: no wall clock, randomness only from ``seed``."""

    def __init__(
        self,
        name: str = p.DEFAULT_NAME,
        address: str = DEFAULT_ADDRESS,
        *,
        active_image: bytes | None = None,
        version: tuple[int, int, int] = (1, 0, 0),
        staging_capacity: int | None = None,
        window: int = 16,
        progressive_erase: bool = False,
        progressive_window_bytes: int | None = None,
        mtu: int | None = None,
        flash: FlashTimings | None = None,
        radio: RadioTimings | None = None,
        faults: FaultPlan | str | None = None,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
        firmware_bugs: frozenset[FirmwareBug] = frozenset(),
        firmware_core: str = "python",
        firmware_library: str | None = None,
        trusted_keys: Sequence[TrustedKey] = (),
        security_counter: int = 0,
    ) -> None:
        """``firmware_core``: "python", the firmware model, or "c", the C reference core
        (``firmware/``) through ctypes: ``firmware_library`` (or SMARTBALL_C_CORE_LIB) names a
        built one, else this checkout's sources are built once (docs/firmware.md).
        ``trusted_keys`` and ``security_counter``: the ball's provisioning for signed
        updates (none: a v1 ball, as every SmartBall before docs/protocol.md section 16)."""
        self.name = name
        self.address = address
        self.radio = radio or RadioTimings()
        self.mtu = mtu or self.radio.link.mtu
        self.rng = random.Random(seed)
        if active_image is None:
            active_image = self.rng.randbytes(64 * 1024)
        kwargs = {"staging_capacity": staging_capacity} if staging_capacity else {}
        if firmware_core not in ("python", "c"):
            raise ValueError(f"firmware_core {firmware_core!r}: 'python' or 'c'")
        if firmware_core == "c":
            if firmware_bugs or progressive_window_bytes is not None:
                raise ValueError(
                    "the C core has no firmware-bug switches and grants one window: "
                    "firmware bugs and progressive_window_bytes need the Python model"
                )
            # The C core offers the part of SmartBallFirmware's interface the device and the
            # HIL suite use (smartball_sim.firmware.c_firmware): typed as the
            # model so that their code needs no second path.
            self.firmware = cast(
                SmartBallFirmware,
                CFirmware(
                    library=library_for(firmware_library),
                    active_image=active_image,
                    version=version,
                    window=window,
                    timings=flash,
                    progressive_erase=progressive_erase,
                    send=self._notify,
                    request_reset=self._reset_into_new_image,
                    observe=self._on_firmware_event,
                    when_sent=self._when_sent,
                    staging_capacity=staging_capacity or DEFAULT_STAGING_CAPACITY,
                    trusted_keys=trusted_keys,
                    security_counter=security_counter,
                ),
            )
        else:
            self.firmware = SmartBallFirmware(
                active_image=active_image,
                version=version,
                window=window,
                timings=flash,
                progressive_erase=progressive_erase,
                progressive_window_bytes=progressive_window_bytes,
                send=self._notify,
                request_reset=self._reset_into_new_image,
                observe=self._on_firmware_event,
                when_sent=self._when_sent,
                bugs=firmware_bugs,
                trusted_keys=trusted_keys,
                security_counter=security_counter,
                **kwargs,
            )
        self.flash_timings = self.firmware.timings  # as configured, before any slow-erase
        self._clock = clock
        #: What carries the link; the model radio unless another one is attached.
        self.link_layer: LinkLayer = ModelLinkLayer(self)
        self.link: Link | None = None
        self.booted = True
        self._adv_paused_until_us = 0
        self._connections = 0
        self.fault_log: list[FaultRecord] = []
        #: Every packet on this device's links, once a list is given (``radio.airlog``).
        self.air_log: list[Packet] | None = None
        self.injector = FaultInjector(self)
        self.fault_plan = FaultPlan()
        self.set_faults(faults)

    def __repr__(self) -> str:
        return f"SimDevice({self.name!r}, {self.address})"

    # --- time --------------------------------------------------------------------------

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0

    # --- faults ------------------------------------------------------------------------

    def set_faults(self, plan: FaultPlan | str | None) -> None:
        plan = plan if isinstance(plan, FaultPlan) else FaultPlan.parse(plan)
        self.link_layer.check_faults(plan)
        self.fault_plan = plan
        self._undo_firmware_faults()
        self.injector.load(plan)
        if plan:  # a fault plan is the simulator's alone: no board takes one
            gate_probe.fault_armed(str(plan))

    def apply_fault(self, effect: DeviceEffect) -> None:
        """Do what a fired fault asks (the injector decides which fault fires, and when)."""
        fw = self.firmware
        match effect:
            case DropLink(reason):
                self.disconnect(reason)
            case Reboot():
                self.reboot()
            case PauseAdvertising(seconds):
                self.pause_advertising(seconds)
            case SlowErase(erase_total_s):
                fw.timings = replace(fw.timings, erase_total_s=erase_total_s)
            case FailFlash(count):
                fw.flash.fail_next += count
            case FlipStaged(offset):
                fw.bootloader.flip_staged(offset)
            case CutSwap(after_steps):
                fw.bootloader.swap_cut_after_steps = after_steps
            case _:
                assert_never(effect)

    def _undo_firmware_faults(self) -> None:
        """What a previous plan's faults did to the firmware goes with the plan."""
        fw = self.firmware
        fw.timings = self.flash_timings
        fw.flash.clear_faults()
        fw.bootloader.clear_faults()

    def attach(self, link_layer: LinkLayer) -> None:
        """Carry this device's link over another link layer (before any connection)."""
        if self.link is not None:
            raise RuntimeError(f"{self}: attach a link layer before anything connects")
        link_layer.check_faults(self.fault_plan)
        self.link_layer = link_layer

    # --- advertising -------------------------------------------------------------------

    @property
    def advertising(self) -> bool:
        self.injector.fire_untriggered()
        return self.booted and self.link is None and to_us(self.now()) >= self._adv_paused_until_us

    def advertisement(self) -> dict[str, object]:
        return {
            "local_name": self.name,
            "manufacturer_data": {},
            "service_data": {},
            "service_uuids": [NUS_SERVICE],
            "tx_power": None,
            "rssi": -55 - self.rng.randrange(10),
        }

    @property
    def advertising_paused_until(self) -> float:
        """Device time (``now()``) before which an advertising pause keeps it silent."""
        return self._adv_paused_until_us / 1_000_000

    def pause_advertising(self, seconds: float) -> None:
        until = to_us(self.now() + seconds)
        self._adv_paused_until_us = max(self._adv_paused_until_us, until)
        self.disconnect("advertising paused")
        self.link_layer.advertising_changed()

    # --- link: what every link layer shares ----------------------------------------------

    def link_established(self, link: Link) -> None:
        """A link layer made a connection: it is the device's link from now on."""
        self.link = link
        log.info("%s: connected (link #%d)", self.name, link.number)
        self.injector.on_connected(link)

    @property
    def connections(self) -> int:
        """How many links this device has had (the number of the latest)."""
        return self._connections

    def next_connection_number(self) -> int:
        self._connections += 1
        return self._connections

    def on_air(self, link: Link, sender: Sender, size: int) -> None:
        """A link layer carried a packet of ``size`` value bytes (see ``airlog``)."""
        if self.air_log is not None:
            self.air_log.append(Packet(self.now(), link.number, sender, size))

    def receive_write(self, data: bytes) -> None:
        """A host write on NUS RX reached the device (unless a fault loses it)."""
        if not self.injector.drop_write():
            self.firmware.receive(data)

    def disconnect(self, reason: str, end: LinkEnd = LinkEnd.CONNECTION_TIMEOUT) -> None:
        """Drop the current link, if any (device side or radio loss)."""
        link = self.link
        if link is None:
            return
        self._end_link(link)
        log.info("%s: link #%d lost: %s", self.name, link.number, reason)
        self.link_layer.link_ended(link, reason, end)
        self.link_layer.advertising_changed()

    def host_disconnect(self, link: Link) -> None:
        """The host side ended the link (it closed it, or its side saw it die)."""
        if link is self.link:
            self._end_link(link)
            log.info("%s: host closed link #%d", self.name, link.number)
            self.link_layer.advertising_changed()

    def _end_link(self, link: Link) -> None:
        link.alive = False
        self.link = None
        self.link_layer.discard(link)
        self.firmware.link_lost()

    def _notify(self, frame: bytes) -> None:
        link = self.link
        if link is None or not link.alive:
            return
        frame = self.injector.filter_notification(frame)
        if not frame:
            return
        self.link_layer.send(link, frame)
        self.injector.on_message_sent(frame[1], link)

    def _when_sent(self, callback: Callable[[], None]) -> None:
        link = self.link
        if link is None or not link.alive:
            callback()
        else:
            self.link_layer.when_sent(link, callback)

    # --- link: the model radio's entry points (the bleak backend, the BlueZ emulator) ----

    def _model(self) -> ModelLinkLayer:
        if not isinstance(self.link_layer, ModelLinkLayer):
            raise RuntimeError(f"{self} is served by {self.link_layer!r}, not the model radio")
        return self.link_layer

    async def connect(self, peer: LinkPeer) -> SimLink:
        """Establish a link over the model radio (see ModelLinkLayer.connect)."""
        return await self._model().connect(peer)

    async def write(self, link: SimLink, data: bytes) -> None:
        """A write-without-response on NUS RX over the model radio."""
        await self._model().write(link, data)

    # --- power -------------------------------------------------------------------------

    def reboot(self) -> None:
        """Reset the device: the link drops, RAM state is lost, it advertises after boot
        (and after the bootloader has switched to a verified image, if one is pending)."""
        self.disconnect("device reset")
        bootloader_s = self.firmware.power_cycle()
        self.booted = False
        self.link_layer.advertising_changed()
        boot_s = self.radio.boot_s + bootloader_s
        log.info("%s: rebooting (%.1f s)", self.name, boot_s)
        asyncio.get_running_loop().call_later(boot_s, self._booted, self.firmware.boot_count)

    def _reset_into_new_image(self) -> None:
        """The firmware's activation, once MSG_OTA_DONE is on air: end the link (HCI reason
        0x13, remote user terminated; its LL_TERMINATE_IND goes out at the next connection
        event), then reset. Not at all while a ``no-reset`` fault is armed."""
        if self.injector.skip_reset():
            return
        boot = self.firmware.boot_count
        link = self.link
        delay = self.radio.link.connection_interval_s if link is not None else 0.0
        asyncio.get_running_loop().call_later(delay, self._terminate_and_reset, boot)

    def _terminate_and_reset(self, boot: int) -> None:
        if boot != self.firmware.boot_count:
            return  # something else reset the device meanwhile: that reset switched
        self.disconnect(
            "the device ended the link (0x13) to reset into the new image",
            LinkEnd.REMOTE_USER_TERMINATED,
        )
        self.reboot()

    def _booted(self, boot: int) -> None:
        if boot != self.firmware.boot_count:
            return  # a later reset restarted the boot: its own timer says when it is done
        self.booted = True
        log.info("%s: booted, advertising", self.name)
        self.link_layer.advertising_changed()

    def _on_firmware_event(self, event: FirmwareEvent) -> None:
        self.injector.on_firmware_event(event)

"""A virtual radio for a real BlueZ: simulated SmartBalls behind a Bumble controller on
``/dev/vhci``.

On a Linux host whose kernel has ``hci_vhci`` and whose ``bluetoothd`` runs (a developer's
machine as root, or the VM of :mod:`smartball_sim.machines.vm`), :class:`VirtualRadio` opens
``/dev/vhci``: the kernel gets a new controller (``hciN``), bluetoothd an adapter
``/org/bluez/hciN``, and behind that controller, on a Bumble radio bus, every
:class:`~smartball_sim.device.SimDevice` of the run is served by the Bumble SmartBall
peripheral (:mod:`smartball_sim.bumble.peripheral`: the same firmware model and fault
plans as ``--device=sim``). Everything above the controller is the real thing: the
kernel's HCI, L2CAP and management code, bluetoothd's GATT client and D-Bus objects,
bleak's BlueZ backend, bleak-retry-connector. ::

    with VirtualRadio([emulated_smartball()]) as radio:
        ...  # BleBackend(adapter=radio.adapter) finds and updates the SmartBall

The radio runs on an event loop of its own in a daemon thread (the devices' timers and
Bumble live there; tests run code on it with :meth:`VirtualRadio.call`). Closing
``/dev/vhci`` removes the controller from the kernel, and the kernel closes it for us if
the process dies, so no controller outlives its run.

What the host-side controller (:class:`HostController`) changes in Bumble's, and why:

* LL Privacy and Extended Advertising are not offered: with either, Linux creates
  connections with ``LE Extended Create Connection`` and waits for an ``LE Enhanced
  Connection Complete`` event, which Bumble's controller never sends (bleak's own VHCI
  tests do the same, google/bumble#841);
* active scanning reports the advertiser's real scan response data (Bumble's controller
  repeats the advertising data as the scan response);
* it takes 251-byte LE ACL packets, as adapters with Data Length Extension do (Bumble's
  27 makes every write ten trips through ``/dev/vhci``);
* LE Create Connection Cancel ends the attempt (from ``CentralController``).

Faults that are BlueZ's own in the simulator (``race``, ``stale-cache``) are provoked for
real here by :class:`BluezFacingPeripheral`; see ``docs/faults.md`` ("Real BlueZ").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Iterable
from typing import Any

from bumble import hci, ll
from bumble.transport.common import Transport

from ..device import SimDevice
from ..fronts.background_loop import BackgroundLoop

log = logging.getLogger("sim.vhci")


VHCI_PATH = "/dev/vhci"
#: bluetoothd adds a new controller's adapter within a second; under software emulation
#: in the VM it can take a few.
ADAPTER_TIMEOUT_S = 20.0
#: The vendor packet the kernel sends right after /dev/vhci is opened carries the index.
_HCI_VENDOR_PKT = 0xFF


class VhciUnavailable(RuntimeError):
    """The virtual radio cannot be set up here; the message is one sentence saying why
    and what to do."""


def vhci_problem(path: str = VHCI_PATH) -> str | None:
    """Why this machine cannot host the virtual radio, or None."""
    if not os.path.exists(path):
        return (
            f"--bluez=vhci needs {path}, which this machine lacks: load the kernel module "
            "(sudo modprobe hci_vhci), or run the suite in the VM that has it: "
            "python -m smartball_sim.machines.vm -- pytest --device=real --bluez=vhci hil_tests"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        return (
            f"--bluez=vhci cannot open {path} (permission denied): run as root, or give "
            'your user read and write access to it (a udev rule for KERNEL=="vhci")'
        )
    return None


_radios = itertools.count(1)


def controller_address(pid: int | None = None, number: int | None = None) -> str:
    """A public address for a virtual controller: distinct per process and per radio in
    it. bluetoothd does not bring up a second adapter with an address it already has (a
    test's radio next to the session's stayed down)."""
    pid = os.getpid() if pid is None else pid
    number = next(_radios) if number is None else number
    octets = [0x5C, 0x5B, (pid >> 8) & 0xFF, pid & 0xFF, (number >> 8) & 0xFF, number & 0xFF]
    return ":".join(f"{octet:02X}" for octet in octets)


def _host_controller_class() -> type[Any]:
    """HostController, built on the Bumble central's controller (imported lazily: bumble
    is needed only when a virtual radio is made)."""
    from ..bumble.central import CentralController

    class HostController(CentralController):
        """The controller the Linux kernel drives through ``/dev/vhci``."""

        def __init__(self, transport: Transport, link: Any, address: str) -> None:
            super().__init__(
                "smartball-vhci",
                host_source=transport.source,
                host_sink=transport.sink,
                link=link,
                public_address=address,
            )
            self.le_features &= ~(
                hci.LeFeatureMask.LL_PRIVACY | hci.LeFeatureMask.LE_EXTENDED_ADVERTISING
            )
            # A controller with LE Data Length Extension (any adapter since Bluetooth 4.2)
            # takes 251-byte ACL packets. With Bumble's default 27 the kernel cuts every
            # 244-byte write into 10 fragments, each a trip through /dev/vhci: most of the
            # VM's time went there (16 KB took 50 s to send under software emulation).
            self.le_acl_data_packet_length = 251

        def on_advertising_pdu(self, pdu: ll.AdvInd | ll.AdvExtInd) -> None:
            if not self.le_scan_enable:
                super().on_advertising_pdu(pdu)
                return
            self._report(pdu, hci.HCI_LE_Advertising_Report_Event.EventType.ADV_IND, pdu.data)
            if self.le_scan_type == 1:  # active: the scanner asked for the scan response
                self._report(
                    pdu,
                    hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP,
                    self._scan_response(pdu),
                )
            pending = self.pending_le_connection
            if pending is not None and pending.peer_address == pdu.advertiser_address:
                self.create_le_connection(pdu.advertiser_address)

        def _report(self, pdu: ll.AdvInd | ll.AdvExtInd, kind: int, data: bytes) -> None:
            report = hci.HCI_LE_Advertising_Report_Event.Report(
                event_type=kind,
                address_type=pdu.advertiser_address.address_type,
                address=pdu.advertiser_address,
                data=data,
                rssi=-50,
            )
            self.send_hci_packet(hci.HCI_LE_Advertising_Report_Event([report]))

        def _scan_response(self, pdu: ll.AdvInd | ll.AdvExtInd) -> bytes:
            advertiser = self.link.find_le_controller(pdu.advertiser_address)
            if advertiser is None:
                return b""
            legacy = advertiser.le_legacy_advertiser
            if legacy.enabled and legacy.address == pdu.advertiser_address:
                return bytes(legacy.scan_response_data)
            for adv_set in advertiser.advertising_sets.values():
                if adv_set.enabled and adv_set.address == pdu.advertiser_address:
                    return bytes(adv_set.scan_response_data)
            return b""

    return HostController


async def open_vhci(path: str = VHCI_PATH) -> tuple[Transport, asyncio.Future[int]]:
    """Open ``/dev/vhci`` with Bumble's transport; the future gets the kernel's HCI index
    (the ``N`` of ``hciN``) from the vendor packet the kernel answers with."""
    from bumble.transport.vhci import open_vhci_transport

    loop = asyncio.get_running_loop()
    index: asyncio.Future[int] = loop.create_future()
    try:
        transport = await open_vhci_transport(path)
    except PermissionError:
        raise VhciUnavailable(vhci_problem(path) or f"cannot open {path}") from None
    except OSError as exc:
        raise VhciUnavailable(
            vhci_problem(path) or f"cannot open {path}: {exc.strerror or exc}"
        ) from None
    # No await since Bumble wrote its configuration packet: the kernel's answer cannot
    # have been read yet, so wrapping the parser's entry now sees it. The answer is
    # ``ff <opcode> <index, little-endian u16>`` (drivers/bluetooth/hci_vhci.c,
    # put_unaligned_le16; Bumble 0.0.236 reads it big-endian, so its log says hci256 for
    # hci1). It may come in one read with the kernel's first command (HCI Reset) behind
    # it; Bumble's own filter takes only a read of exactly the 4 vendor bytes and would
    # feed a longer one to its parser, so the vendor packet is split off here.
    source: Any = transport.source
    bumble_received = source.data_received

    def data_received(data: bytes) -> None:
        if not index.done() and len(data) >= 4 and data[0] == _HCI_VENDOR_PKT:
            index.set_result(data[2] | data[3] << 8)
            data = data[4:]
            if not data:
                return
        bumble_received(data)

    source.data_received = data_received
    return transport, index


class VirtualRadio(BackgroundLoop):
    """Simulated SmartBalls behind a virtual controller of the host's BlueZ (module doc)."""

    what = "the virtual radio"

    def __init__(
        self,
        devices: Iterable[SimDevice],
        *,
        vhci: str = VHCI_PATH,
        address: str | None = None,
        adapter_timeout_s: float = ADAPTER_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.devices = list(devices)
        self.vhci = vhci
        self.address = address or controller_address()
        self.adapter_timeout_s = adapter_timeout_s
        self.adapter: str = ""  # "hciN" once started
        self.peripherals: list[Any] = []
        self.link: Any = None
        self.controller: Any = None
        self._transport: Transport | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> VirtualRadio:
        """Attach the controller, serve the devices, wait for bluetoothd's adapter and
        power it on. Raises :class:`VhciUnavailable` (one sentence) when it cannot."""
        problem = vhci_problem(self.vhci)
        if problem:
            raise VhciUnavailable(problem)
        try:
            self._start_loop("vhci-radio", timeout=self.adapter_timeout_s + 10)
        except BaseException:
            self.stop()
            raise
        return self

    async def _on_loop_start(self) -> None:
        from ..bumble.local_link import SmartBallLink

        controller_class = _host_controller_class()  # imports before /dev/vhci is open
        transport, index_future = await open_vhci(self.vhci)
        self._transport = transport
        self.link = SmartBallLink()
        self.controller = controller_class(transport, self.link, self.address)
        try:
            index = await asyncio.wait_for(index_future, 5.0)
        except TimeoutError:
            raise VhciUnavailable(
                f"the kernel did not register a controller for {self.vhci} within 5 s"
            ) from None
        self.adapter = f"hci{index}"
        for device in self.devices:
            self.peripherals.append(await serve_for_bluez(device, self.link))
        await power_on_adapter(self.adapter, self.address, self.adapter_timeout_s)
        log.info("virtual radio: %s (%s) serves %s", self.adapter, self.address, self.devices)

    async def _on_loop_stop(self) -> None:
        for peripheral in self.peripherals:
            with contextlib.suppress(Exception):
                await peripheral.close()
        self.peripherals.clear()
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()  # the kernel unregisters hciN; bluetoothd drops it

    def stop(self) -> None:
        """Idempotent: devices, controller (the kernel's hciN goes away), thread."""
        self._stop_loop(timeout=10)

    def __enter__(self) -> VirtualRadio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the radio's loop: run() and call() come from BackgroundLoop ----------------------

    @property
    def device(self) -> SimDevice:
        """The first (usually the only) simulated device."""
        return self.devices[0]


#: Why a plan with ``connect-fail`` is refused on the real stack.
CONNECT_FAIL_REFUSED = (
    "connect-fail ends a new link with HCI 0x3E before bluetoothd's ATT channel is up, "
    "and Debian 12's Linux 6.1 crashed on that every time (list_del corruption in "
    "hci_chan_del) and took bluetoothd down with it; run it with --bluez=emulated or "
    "--device=sim (docs/faults.md, Real BlueZ)"
)


def _bluez_facing_peripheral_class() -> type[Any]:
    from bumble import att

    from ..bumble.peripheral import SmartBallPeripheral
    from ..device import FaultRecord
    from ..faults import FaultPlan, FaultSpecError
    from ..radio import gatt_layout

    class BluezFacingPeripheral(SmartBallPeripheral):
        """The Bumble SmartBall, provoking for real what ``race`` and ``stale-cache``
        imitate elsewhere:

        * ``race``: a racing connection is lost (HCI 0x08) at bluetoothd's first service
          discovery request, what a link that dies while the host discovers looks like.
          bluetoothd >= 5.55 never reports ServicesResolved before the objects exist,
          so this is the race's real form on today's BlueZ.
        * ``stale-cache``: the device's GATT database changes without a Service Changed
          indication. On the connection the fault hits, the device serves its database
          without NUS (as a bootloader would); when that link ends NUS is back, and
          nothing tells the host. bluetoothd 5.66 reads the services again on the next
          connection; a host that keeps a copy of its own (bleak's service cache) has
          the NUS-less one until it reads them again.
        """

        def __init__(self, device: SimDevice, link: Any) -> None:
            super().__init__(device, link)
            self._racing: set[int] = set()  # connection handles to drop at discovery
            self._nus_hidden_on: int | None = None  # the handle that sees no NUS
            self._nus_attributes: list[Any] = []
            # Bumble has no hook for a request before it is served: this connection's
            # requests pass through _on_gatt_pdu first.
            server = self.bumble.gatt_server
            self._serve_att = server.on_gatt_pdu
            setattr(server, "on_gatt_pdu", self._on_gatt_pdu)  # noqa: B010

        def check_faults(self, plan: FaultPlan) -> None:
            for fault in plan.faults:
                if fault.effect == "connect-fail":
                    raise FaultSpecError(f"fault {str(fault)!r}: {CONNECT_FAIL_REFUSED}")

        def _on_connection(self, connection: Any) -> None:
            super()._on_connection(connection)
            link = self.links.get(connection.handle)
            if link is None or link is not self.device.link:
                return
            hidden = self.device.injector.nus_hidden_on_connect()
            if hidden == "race":
                self._racing.add(connection.handle)
            elif hidden == "stale-cache":
                self._hide_nus(connection.handle)

        def _on_disconnection(self, link: Any, reason: int) -> None:
            if link.connection.handle == self._nus_hidden_on:
                self._show_nus()
            super()._on_disconnection(link, reason)

        def _hide_nus(self, handle: int) -> None:
            server = self.bumble.gatt_server
            first = gatt_layout.NUS.handle
            self._nus_attributes = [a for a in server.attributes if a.handle >= first]
            server.attributes = [a for a in server.attributes if a.handle < first]
            for attribute in self._nus_attributes:
                server.attributes_by_handle.pop(attribute.handle, None)
            self._nus_hidden_on = handle
            self._record("stale-cache", "this connection's GATT database has no NUS")

        def _show_nus(self) -> None:
            server = self.bumble.gatt_server
            server.attributes = sorted(
                [*server.attributes, *self._nus_attributes], key=lambda a: a.handle
            )
            self._nus_attributes = []
            self._nus_hidden_on = None
            self._record("stale-cache", "NUS is back, and no Service Changed says so")

        def _on_gatt_pdu(self, bearer: Any, pdu: Any) -> None:
            connection = bearer.connection if att.is_enhanced_bearer(bearer) else bearer
            handle = connection.handle
            if handle in self._racing and isinstance(pdu, att.ATT_Read_By_Group_Type_Request):
                self._racing.discard(handle)
                self._record("race", "link lost at bluetoothd's first discovery request")
                self.device.disconnect("link lost during service discovery (race)")
                return
            self._serve_att(bearer, pdu)

        def _record(self, fault: str, detail: str) -> None:
            d = self.device
            d.fault_log.append(FaultRecord(d.now(), fault, "applied", detail))

    return BluezFacingPeripheral


async def serve_for_bluez(device: SimDevice, link: Any) -> Any:
    """Serve ``device`` on ``link`` as the Bumble SmartBall peripheral, provoking for
    real what ``race`` and ``stale-cache`` imitate (:func:`_bluez_facing_peripheral_class`)."""
    peripheral = _bluez_facing_peripheral_class()(device, link)
    await peripheral.start()
    return peripheral


async def power_on_adapter(adapter: str, address: str, timeout: float) -> None:
    """Wait until bluetoothd exports ``/org/bluez/<adapter>`` for our controller, then
    power it on (bluetoothd may do that itself: ``AutoEnable``)."""
    from dbus_fast import BusType, Message, Variant
    from dbus_fast.aio import MessageBus

    path = f"/org/bluez/{adapter}"
    try:
        async with asyncio.timeout(5.0):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, ValueError, TimeoutError) as exc:
        raise VhciUnavailable(
            f"--bluez=vhci needs a running bluetoothd on the system D-Bus, which did not "
            f"answer ({type(exc).__name__}: {exc}); start it (systemctl start bluetooth)"
        ) from None
    try:
        async with asyncio.timeout(timeout):
            while True:
                props = await _adapter_props(bus, path)
                if props is not None and str(props["Address"].value).upper() == address:
                    if props["Powered"].value:
                        return
                    await bus.call(
                        Message(
                            destination="org.bluez",
                            path=path,
                            interface="org.freedesktop.DBus.Properties",
                            member="Set",
                            signature="ssv",
                            body=["org.bluez.Adapter1", "Powered", Variant("b", True)],
                        )
                    )
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise VhciUnavailable(
            f"bluetoothd did not bring up {adapter} for the virtual controller within "
            f"{timeout:g} s; is bluetoothd running (systemctl start bluetooth)?"
        ) from None
    finally:
        bus.disconnect()


async def _adapter_props(bus: Any, path: str) -> dict[str, Any] | None:
    from dbus_fast import Message, MessageType

    reply = await bus.call(
        Message(
            destination="org.bluez",
            path="/",
            interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects",
        )
    )
    if reply.message_type != MessageType.METHOD_RETURN:
        return None  # bluetoothd not (yet) on the bus
    props = reply.body[0].get(path, {}).get("org.bluez.Adapter1")
    return dict(props) if props is not None else None

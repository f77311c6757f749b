"""A Bumble central behind bleak's backend interface, reaching simulated SmartBalls served
by Bumble peripherals: the unchanged engine, NusLink and plugin talk real ATT to them.

``BumbleWorld(devices)`` is the radio neighbourhood: a :class:`SmartBallLink` bus, one
Bumble peripheral per SimDevice, and one central ``Device`` shared by every client (one
adapter). ``world.scanner_backend`` and ``world.client_backend`` go into
``BleakScanner(backend=...)`` / ``BleakClient(backend=...)`` (``BleBackend`` for the link).
The world starts lazily, in the event loop of its first scan or connect.

What the client copies of bleak on BlueZ (where the field's failures live): on connect it
exchanges the ATT MTU like bluetoothd does (it asks for 517; ``exchange_mtu=None`` leaves
the link at 23), then discovers every service, characteristic and descriptor over ATT;
characteristics show their declaration handles (``gatt_layout``); services are dropped on
every disconnect, so a GATT call after a drop raises "Service Discovery has not been
performed yet"; disconnects reach ``disconnected_callback``; ``BLEDevice.details`` is not a
dict (bleak-retry-connector would make D-Bus calls). What it adds that Bumble lacks: a
write longer than the ATT MTU - 3 is refused (Bumble would send it; a real controller
would not), and a connect that is cancelled ends the controller's attempt (Bumble's
controller ignores LE Create Connection Cancel; :class:`CentralController` answers it as
the specification says).
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError
from bumble import core, hci
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy
from bumble.host import Host
from bumble.transport.common import AsyncPipeSink

from ..device import SimDevice
from ..fronts.bleak_base import DeviceRegistry, SimulatedClient, SimulatedScanner
from .local_link import SmartBallLink
from .peripheral import QuietController, SmartBallPeripheral, serve_smartball

log = logging.getLogger("sim.bumble.central")

T = TypeVar("T")

#: What bluetoothd asks for in its ATT MTU exchange (BlueZ ``[GATT] ExchangeMTU``).
BLUEZ_EXCHANGE_MTU = 517
CENTRAL_ADDRESS = "F0:CE:17:A1:00:01"  # random static (two top bits set)
#: The scan's advertisement reports come through as fast as the device advertises.
SCAN_INTERVAL_MS = 60.0

REASONS = {
    0x08: "connection timeout",
    0x13: "remote user terminated the connection",
    0x16: "connection terminated by local host",
    0x3E: "connection failed to be established",
}


def reason_text(reason: int) -> str:
    return f"HCI 0x{reason:02X} ({REASONS.get(reason, hci.HCI_Constant.error_name(reason))})"


class CentralController(QuietController):
    """Bumble's controller, except that LE Create Connection Cancel ends the attempt.

    Core 5.3, Vol 4, Part E, 7.8.13: after a successful cancel the controller reports LE
    Connection Complete with Unknown Connection Identifier (0x02). Bumble's controller
    answers the cancel with success and keeps the attempt, so a cancelled connect (Bumble's
    own connect timeout waits for that event) never ends, and a later advertisement of the
    device would still complete it behind the host's back."""

    def on_hci_le_create_connection_cancel_command(
        self, command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        asyncio.get_running_loop().call_soon(self._report_cancelled, pending.peer_address)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    def _report_cancelled(self, peer: hci.Address) -> None:
        self.send_hci_packet(
            hci.HCI_LE_Connection_Complete_Event(
                status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
                connection_handle=0,
                role=hci.Role.CENTRAL,
                peer_address_type=peer.address_type,
                peer_address=peer,
                connection_interval=0,
                peripheral_latency=0,
                supervision_timeout=0,
                central_clock_accuracy=0,
            )
        )


@dataclass(frozen=True, slots=True)
class BumbleDetails:
    """``BLEDevice.details`` for a device seen over Bumble: deliberately not a dict."""

    address: hci.Address
    device: SimDevice | None


class BumbleWorld(DeviceRegistry):
    """Simulated SmartBalls served by Bumble peripherals, and the bleak backends of one
    Bumble central that reaches them."""

    def __init__(
        self,
        devices: Iterable[SimDevice] = (),
        *,
        exchange_mtu: int | None = BLUEZ_EXCHANGE_MTU,
        central_address: str = CENTRAL_ADDRESS,
    ) -> None:
        super().__init__()
        self.link = SmartBallLink()
        self.central: Device | None = None
        for device in devices:
            self.add(device)
        self.exchange_mtu = exchange_mtu
        #: The ATT MTU of the last connection set up (after its exchange, if any).
        self.negotiated_mtu: int | None = None
        self.central_address = central_address
        self.peripherals: dict[str, SmartBallPeripheral] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Lock | None = None
        self._scanners: set[BumbleScanner] = set()
        self.scanner_backend, self.client_backend = self.backends_for(BumbleScanner, BumbleClient)

    def _check_can_add(self) -> None:
        if self.central is not None:
            raise RuntimeError("add devices before the Bumble world starts")

    async def start(self) -> Device:
        """Power the central and serve every device, once, in the running loop."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and self._loop.is_running():
                raise RuntimeError("a Bumble world runs in one event loop at a time")
            if self._loop is not None:
                self._rebuild()
            self._loop = loop
            self._starting = asyncio.Lock()
        assert self._starting is not None
        async with self._starting:
            if self.central is None:
                for key, device in self.devices.items():
                    self.peripherals[key] = await serve_smartball(device, self.link)
                controller = CentralController("central", link=self.link)
                host = Host(controller, AsyncPipeSink(controller))
                central = Device(name="central", address=hci.Address(self.central_address))
                central.host = host
                await central.power_on()
                central.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
                self.central = central
        assert self.central is not None
        return self.central

    def _rebuild(self) -> None:
        """The loop the Bumble stacks ran in has ended (a host process gone): the devices
        keep their state, their links are dead, and every stack starts afresh in the next
        loop (Bumble's objects belong to the loop that made them)."""
        for peripheral in self.peripherals.values():
            peripheral.abandon()
        self.link = SmartBallLink()
        self.central = None
        self.peripherals = {}
        self._scanners = set()
        self.negotiated_mtu = None

    async def close(self) -> None:
        for peripheral in self.peripherals.values():
            await peripheral.close()

    async def forget(self, address: str) -> bool:
        """What BlueZ's ``RemoveDevice`` does: drop any link (Bumble keeps no GATT cache)."""
        device = self.find(address)
        if device is None:
            return False
        if self.central is not None:
            for connection in list(self.central.connections.values()):
                if _address_text(connection.peer_address) == device.address.upper():
                    await _quiet_disconnect(connection)
        return True

    # --- scanning, shared by every scanner like one adapter ------------------------------

    async def scanner_started(self, scanner: BumbleScanner) -> None:
        central = await self.start()
        self._scanners.add(scanner)
        if not central.is_scanning:
            await central.start_scanning(
                filter_duplicates=False,
                scan_interval=SCAN_INTERVAL_MS,
                scan_window=SCAN_INTERVAL_MS,
            )

    async def scanner_stopped(self, scanner: BumbleScanner) -> None:
        self._scanners.discard(scanner)
        central = self.central
        if not self._scanners and central is not None and central.is_scanning:
            await central.stop_scanning()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        for scanner in list(self._scanners):
            scanner.on_advertisement(advertisement)


def _address_text(address: hci.Address) -> str:
    return address.to_string(with_type_qualifier=False).upper()


async def _quiet_disconnect(connection: Connection) -> None:
    try:
        await connection.disconnect()
    except (hci.HCI_Error, core.BaseBumbleError) as exc:
        log.debug("disconnect: %s", exc)


class BumbleScanner(SimulatedScanner):
    world: ClassVar[BumbleWorld]

    async def start(self) -> None:
        self.seen_devices = {}
        await self.world.scanner_started(self)

    async def stop(self) -> None:
        await self.world.scanner_stopped(self)

    def on_advertisement(self, advertisement: Advertisement) -> None:
        data = advertisement.data
        uuids = [
            _uuid_text(uuid)
            for kind in (
                AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                AdvertisingData.Type.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                AdvertisingData.Type.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                AdvertisingData.Type.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            )
            for uuids in data.get_all(kind)
            for uuid in uuids
        ]
        # Bumble's LocalLink repeats the advertising data as the scan response, and the
        # accumulator joins both: each field comes twice.
        uuids = list(dict.fromkeys(uuids))
        if not self.is_allowed_uuid(uuids):
            return
        names = data.get_all(AdvertisingData.Type.COMPLETE_LOCAL_NAME) or data.get_all(
            AdvertisingData.Type.SHORTENED_LOCAL_NAME
        )
        tx_power = data.get(AdvertisingData.Type.TX_POWER_LEVEL)
        adv = AdvertisementData(
            local_name=names[0] if names else None,
            manufacturer_data={},
            service_data={},
            service_uuids=uuids,
            tx_power=tx_power if isinstance(tx_power, int) else None,
            rssi=advertisement.rssi,
            platform_data=(advertisement,),
        )
        address = _address_text(advertisement.address)
        details = BumbleDetails(advertisement.address, self.world.find(address))
        found = self.create_or_update_device(address, address, adv.local_name, details, adv)
        self.call_detection_callbacks(found, adv)


def _uuid_text(uuid: core.UUID) -> str:
    """A UUID as bleak spells it: 128-bit, lower case, dashed."""
    return str(uuid_module.UUID(bytes=bytes(reversed(uuid.uuid_128_bytes))))


class BumbleClient(SimulatedClient):
    world: ClassVar[BumbleWorld]

    def __init__(self, address_or_ble_device: BLEDevice | str, *args: Any, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, *args, **kwargs)
        self._connection: Connection | None = None
        self._up = False  # connected and set up: a disconnection now is reported
        self._lost: asyncio.Future[int] | None = None
        self._proxies: dict[int, CharacteristicProxy[bytes]] = {}  # by declaration handle
        self._subscriptions: dict[int, Callable[[bytes], None]] = {}
        #: The HCI reason of the last disconnection, for tests and logs.
        self.last_disconnect_reason: int | None = None

    # --- connection --------------------------------------------------------------------

    def _peer_address(self) -> hci.Address:
        if self._ble_device is not None and isinstance(self._ble_device.details, BumbleDetails):
            return self._ble_device.details.address
        if self.world.find(self.address) is None:
            raise BleakDeviceNotFoundError(
                self.address, f"Device with address {self.address} was not found."
            )
        return hci.Address(self.address)  # a simulated SmartBall's random static address

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if self.is_connected:
            raise BleakError("Client is already connected")
        timeout = kwargs.get("timeout", self._timeout)
        address = self._peer_address()
        central = await self.world.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def adopt_at_once(connection: Connection) -> None:
            # Bumble's connect() returns the connection a loop turn after the stack made
            # it; a link that dies in that turn (a drop as the connection is made) would
            # reach nobody, and the set-up's first ATT request would wait for the whole
            # connect timeout. Listening from the stack's own event on misses nothing.
            if connection.peer_address == address and not adopted:
                adopted.append(connection)
                self._adopt(connection)

        adopted: list[Connection] = []

        central.on(Device.EVENT_CONNECTION, adopt_at_once)
        try:
            connection = await central.connect(
                address, own_address_type=hci.OwnAddressType.RANDOM, timeout=timeout
            )
        except core.TimeoutError:
            self._forget()
            raise TimeoutError(f"no connection to {self.address} within {timeout:g} s") from None
        except core.ConnectionError as exc:
            self._forget()
            raise BleakError(f"connecting to {self.address} failed: {exc}") from None
        except BaseException:
            self._forget()
            raise
        finally:
            central.remove_listener(Device.EVENT_CONNECTION, adopt_at_once)
        if adopted != [connection]:  # not seen by the listener (never expected)
            self._forget()
            self._adopt(connection)
        lost = self._lost
        if lost is not None and lost.done():
            # Reported to the connect in progress, as BlueZ fails its Connect() call.
            raise BleakError(
                f"connecting to {self.address} failed: the link dropped as it was made "
                f"({reason_text(lost.result())})"
            )
        try:
            async with asyncio.timeout_at(deadline):
                await self._set_up(connection)
        except BaseException:
            self._forget()  # no callback: the connect itself fails
            if connection.handle in central.connections:
                await _quiet_disconnect(connection)
            raise
        self._up = True
        self.world.negotiated_mtu = connection.att_mtu

    def _adopt(self, connection: Connection) -> None:
        self._connection = connection
        lost = self._lost = asyncio.get_running_loop().create_future()

        def on_disconnection(reason: int) -> None:
            if not lost.done():
                lost.set_result(reason)
            self.last_disconnect_reason = reason
            log.info("%s: disconnected, %s", self.address, reason_text(reason))
            if self._connection is connection:
                was_up, self._up = self._up, False
                self._forget()
                if was_up and self._disconnected_callback is not None:
                    self._disconnected_callback()  # not for a connect that fails

        connection.on(Connection.EVENT_DISCONNECTION, on_disconnection)

    def _forget(self) -> None:
        self._connection = None
        self.services = None  # what makes the front-end raise "Service Discovery ..."
        self._proxies.clear()
        self._subscriptions.clear()

    async def _set_up(self, connection: Connection) -> None:
        """What bluetoothd does once a link is up: exchange the MTU, discover everything."""
        peer = Peer(connection)
        if self.world.exchange_mtu is not None:
            await self._while_connected(peer.request_mtu(self.world.exchange_mtu))
        services = BleakGATTServiceCollection()
        for service in await self._while_connected(peer.discover_services()):
            bleak_service = BleakGATTService(service, service.handle, _uuid_text(service.uuid))
            services.add_service(bleak_service)
            for char in await self._while_connected(service.discover_characteristics()):
                declaration = char.handle - 1  # the value follows its declaration
                self._proxies[declaration] = char
                bleak_char = BleakGATTCharacteristic(
                    char,
                    declaration,
                    _uuid_text(char.uuid),
                    _property_names(char.properties),
                    lambda: connection.att_mtu - 3,
                    bleak_service,
                )
                services.add_characteristic(bleak_char)
                for desc in await self._while_connected(char.discover_descriptors()):
                    services.add_descriptor(
                        BleakGATTDescriptor(desc, desc.handle, _uuid_text(desc.type), bleak_char)
                    )
        self.services = services

    async def _while_connected(self, awaitable: Awaitable[T]) -> T:
        """Await a GATT procedure; BleakError at once if the link drops meanwhile (Bumble's
        requests would wait for their 30 s ATT timeout)."""
        lost = self._lost
        if self._connection is None or lost is None or lost.done():
            raise BleakError("Not connected")
        task = asyncio.ensure_future(awaitable)
        waiting: set[asyncio.Future[Any]] = {task, lost}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if lost.done():
            task.cancel()
            raise BleakError(f"Not connected: {reason_text(lost.result())}")
        if task.cancelled():  # Bumble cancels a link's pending requests when it goes
            raise BleakError("Not connected: the GATT request was cancelled")
        return task.result()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        await _quiet_disconnect(connection)

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    @property
    def name(self) -> str:
        return self._ble_device.name or "" if self._ble_device else ""

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    # --- GATT --------------------------------------------------------------------------

    def _live(self, characteristic: BleakGATTCharacteristic) -> tuple[Connection, Any]:
        connection = self._connection
        proxy = self._proxies.get(characteristic.handle)
        if connection is None or proxy is None:
            raise BleakError("Not connected")
        return connection, proxy

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, **kwargs: Any
    ) -> bytearray:
        _, proxy = self._live(characteristic)
        return bytearray(await self._while_connected(proxy.read_value()))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, **kwargs: Any
    ) -> bytearray:
        connection = self._connection
        if connection is None:
            raise BleakError("Not connected")
        value = await self._while_connected(connection.gatt_client.read_value(descriptor.handle))
        return bytearray(value)

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        connection, proxy = self._live(characteristic)
        value = bytes(data)
        if not response and len(value) > connection.att_mtu - 3:
            # A Write Command is one ATT PDU of at most ATT_MTU bytes (Core 5.3, Vol 3,
            # Part F, 3.4.5.3). Bumble would send a longer one; a real stack refuses.
            raise BleakError(
                f"write of {len(value)} bytes exceeds the link's maximum of "
                f"{connection.att_mtu - 3} (ATT MTU {connection.att_mtu} - 3)"
            )
        await self._while_connected(proxy.write_value(value, with_response=response))

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        connection = self._connection
        if connection is None:
            raise BleakError("Not connected")
        await self._while_connected(
            connection.gatt_client.write_value(descriptor.handle, bytes(data), True)
        )

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        _, proxy = self._live(characteristic)

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        self._subscriptions[characteristic.handle] = deliver
        await self._while_connected(proxy.subscribe(deliver))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        _, proxy = self._live(characteristic)
        deliver = self._subscriptions.pop(characteristic.handle, None)
        await self._while_connected(proxy.unsubscribe(deliver))


def _property_names(properties: int) -> list[CharacteristicPropertyName]:
    names: list[str] = []
    for flag, name in _PROPERTY_NAMES:
        if properties & flag:
            names.append(name)
    return cast(list[CharacteristicPropertyName], names)


_PROPERTY_NAMES = (
    (0x01, "broadcast"),
    (0x02, "read"),
    (0x04, "write-without-response"),
    (0x08, "write"),
    (0x10, "notify"),
    (0x20, "indicate"),
    (0x40, "authenticated-signed-writes"),
    (0x80, "extended-properties"),
)

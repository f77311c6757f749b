"""The simulated SmartBall's GATT database: one definition for every front that shows it.

Attribute handles, in the order a GATT server allocates them (Core 5.3, Vol 3, Part G,
3.1-3.3: a service declaration, then per characteristic its declaration, its value right
after it, then its descriptors)::

    0x0001  GAP service (0x1800)
    0x0002    Device Name declaration      0x0003  its value (read)
    0x0004    Appearance declaration       0x0005  its value (read)
    0x0006  GATT service (0x1801)
    0x0007    Service Changed declaration  0x0008  its value (indicate)
    0x0009      its CCCD
    0x000A  Nordic UART Service
    0x000B    RX declaration               0x000C  its value (write, write without response)
    0x000D    TX declaration               0x000E  its value (notify)
    0x000F      its CCCD

Which number a front shows for a characteristic: BlueZ names a characteristic's D-Bus
object after its *declaration* handle (``.../char000b``) and publishes the value handle as
its ``Handle`` property; bleak's BlueZ backend takes the handle from the object path. So
the fronts that imitate BlueZ (the in-process bleak backend, the emulated bluetoothd) show
declaration handles, and the Bumble client, which copies bleak-on-BlueZ, does too. The
Bumble server allocates exactly these handles (it checks at start-up) and a Bumble client
finds them by real ATT discovery.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_smartball.contract import codec as p

GAP_SERVICE_UUID = "00001800-0000-1000-8000-00805f9b34fb"
GATT_SERVICE_UUID = "00001801-0000-1000-8000-00805f9b34fb"
DEVICE_NAME_UUID = "00002a00-0000-1000-8000-00805f9b34fb"
APPEARANCE_UUID = "00002a01-0000-1000-8000-00805f9b34fb"
SERVICE_CHANGED_UUID = "00002a05-0000-1000-8000-00805f9b34fb"
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True, slots=True)
class GattDescriptor:
    handle: int
    uuid: str


@dataclass(frozen=True, slots=True)
class GattCharacteristic:
    declaration_handle: int
    uuid: str
    #: Property names as bleak and BlueZ spell them ("read", "write-without-response", ...).
    properties: tuple[str, ...]
    descriptors: tuple[GattDescriptor, ...] = ()

    @property
    def value_handle(self) -> int:
        return self.declaration_handle + 1


@dataclass(frozen=True, slots=True)
class GattService:
    handle: int
    uuid: str
    characteristics: tuple[GattCharacteristic, ...]


NUS_RX = GattCharacteristic(0x000B, p.NUS_RX_UUID, ("write-without-response", "write"))
NUS_TX_CCCD = GattDescriptor(0x000F, CCCD_UUID)
NUS_TX = GattCharacteristic(0x000D, p.NUS_TX_UUID, ("notify",), (NUS_TX_CCCD,))
DEVICE_NAME = GattCharacteristic(0x0002, DEVICE_NAME_UUID, ("read",))
SERVICE_CHANGED = GattCharacteristic(
    0x0007, SERVICE_CHANGED_UUID, ("indicate",), (GattDescriptor(0x0009, CCCD_UUID),)
)

GAP = GattService(
    0x0001, GAP_SERVICE_UUID, (DEVICE_NAME, GattCharacteristic(0x0004, APPEARANCE_UUID, ("read",)))
)
GATT = GattService(0x0006, GATT_SERVICE_UUID, (SERVICE_CHANGED,))
NUS = GattService(0x000A, p.NUS_SERVICE_UUID, (NUS_RX, NUS_TX))

#: The whole database, in handle order.
SERVICES: tuple[GattService, ...] = (GAP, GATT, NUS)

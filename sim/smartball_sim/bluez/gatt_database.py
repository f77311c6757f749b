"""A device's GATT database as bluetoothd exports it: the ``GattService1``,
``GattCharacteristic1`` and ``GattDescriptor1`` objects of a discovery, their removal in
bluetoothd's order, and the ``MTU`` property that a link gives them."""

from __future__ import annotations

from dbus_fast import Variant

from smartball_sim.device import SimLink
from smartball_sim.radio import gatt_layout as gatt

from .objects import CHARACTERISTIC, DESCRIPTOR, SERVICE, ObjectTree
from .records import EmulatedDevice, ExportedGatt


class GattDatabase:
    """Exports and removes the GATT objects of a device, in the object tree."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree

    def export(
        self,
        dev: EmulatedDevice,
        link: SimLink,
        *,
        nus: bool,
        gatt_service: bool = True,
        stale: bool = False,
    ) -> None:
        """InterfacesAdded for each service, characteristic and descriptor, in order.
        Paths are ``<dev>/serviceXXXX/charYYYY/descZZZZ`` with 4 hex digits: bleak
        derives the device and the handle from them. The GAP service (0x1800) gets no
        object: bluetoothd claims it for itself (its UUID is still in Device1.UUIDs)."""
        mtu = Variant("q", link.mtu)

        def service(handle: int, uuid: str) -> str:
            path = f"{dev.path}/service{handle:04x}"
            self.tree.add_object(
                path,
                {
                    SERVICE: {
                        "UUID": Variant("s", uuid),
                        "Device": Variant("o", dev.path),
                        "Primary": Variant("b", True),
                        "Includes": Variant("ao", []),
                        "Handle": Variant("q", handle),
                    }
                },
            )
            dev.gatt.paths.append(path)
            return path

        def char(svc: str, handle: int, uuid: str, flags: list[str], **extra: Variant) -> str:
            path = f"{svc}/char{handle:04x}"
            props = {
                "UUID": Variant("s", uuid),
                "Service": Variant("o", svc),
                "Flags": Variant("as", flags),
                "MTU": mtu,
                "Handle": Variant("q", handle + 1),
                **extra,
            }
            self.tree.add_object(path, {CHARACTERISTIC: props})
            dev.gatt.paths.append(path)
            return path

        def desc(chr_path: str, handle: int, uuid: str) -> str:
            path = f"{chr_path}/desc{handle:04x}"
            props = {
                "UUID": Variant("s", uuid),
                "Characteristic": Variant("o", chr_path),
                "Handle": Variant("q", handle),
            }
            self.tree.add_object(path, {DESCRIPTOR: props})
            dev.gatt.paths.append(path)
            return path

        def export(definition: gatt.GattService) -> dict[int, str]:
            """The service's objects; the paths of its characteristics and descriptors
            by handle (declaration handles for characteristics, as BlueZ names them)."""
            svc = service(definition.handle, definition.uuid)
            paths: dict[int, str] = {}
            for c in definition.characteristics:
                extra: dict[str, Variant] = {}
                if "notify" in c.properties or "indicate" in c.properties:
                    extra["Notifying"] = Variant("b", False)
                if "notify" in c.properties:
                    extra["NotifyAcquired"] = Variant("b", False)
                if "write-without-response" in c.properties:
                    extra["WriteAcquired"] = Variant("b", False)
                path = paths[c.declaration_handle] = char(
                    svc, c.declaration_handle, c.uuid, list(c.properties), **extra
                )
                for d in c.descriptors:
                    paths[d.handle] = desc(path, d.handle, d.uuid)
            return paths

        if gatt_service:
            export(gatt.GATT)
        dev.gatt.stale = stale
        if not nus:
            return
        paths = export(gatt.NUS)
        dev.gatt.rx = paths[gatt.NUS_RX.declaration_handle]
        dev.gatt.tx = paths[gatt.NUS_TX.declaration_handle]
        dev.gatt.cccd = paths[gatt.NUS_TX_CCCD.handle]

    def drop(self, dev: EmulatedDevice) -> None:
        """InterfacesRemoved for every GATT object, in bluetoothd's order: service by
        service, each characteristic after its descriptors, the service last."""
        paths = dev.gatt.paths
        for svc in [p for p in paths if "/char" not in p]:
            chars = [p for p in paths if p.startswith(f"{svc}/char") and "/desc" not in p]
            for char in chars:
                for desc in [p for p in paths if p.startswith(f"{char}/desc")]:
                    self.tree.remove_object(desc)
                self.tree.remove_object(char)
            self.tree.remove_object(svc)
        dev.gatt = ExportedGatt()
        dev.notify_clients.clear()

    def characteristics(self, dev: EmulatedDevice) -> list[str]:
        return [p for p in dev.gatt.paths if "/char" in p and "/desc" not in p]

    def mtu_known(self, dev: EmulatedDevice, link: SimLink) -> None:
        """A connected characteristic has the link's ATT MTU as its ``MTU`` property.
        Silently, as real bluetoothd 5.66 does: no PropertiesChanged when it comes back
        on a reconnect (bleak keeps the value it read when the object appeared)."""
        for path in self.characteristics(dev):
            props = self.tree.objects.get(path, {}).get(CHARACTERISTIC)
            if props is not None:
                props["MTU"] = Variant("q", link.mtu)

    def mtu_unknown(self, dev: EmulatedDevice) -> None:
        """Without a link the characteristics have no ``MTU`` in GetManagedObjects, and
        no signal says so (real bluetoothd 5.66)."""
        for path in self.characteristics(dev):
            self.tree.objects.get(path, {}).get(CHARACTERISTIC, {}).pop("MTU", None)

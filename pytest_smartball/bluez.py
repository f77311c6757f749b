"""BlueZ-specific helpers for the real-device path (Linux): preflight, cache clear, version.

All through BlueZ's D-Bus API with dbus-fast (bleak's own D-Bus library); no shell-outs
except the version, which BlueZ only reports through ``bluetoothctl --version`` (bleak
reads it the same way).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

log = logging.getLogger("pytest_smartball.bluez")

#: Versions with GATT bugs that hit OTA: before 5.51 write-without-response needs a
#: workaround in bleak; before 5.55 ServicesResolved can precede the GATT objects and stale
#: caches survive reconnects more often (bleak#882, bluez#1489 in the original plan).
KNOWN_BAD = [
    ((5, 51), "write-without-response is broken (bleak works around it, slowly)"),
    (
        (5, 55),
        "ServicesResolved may be reported before the GATT objects exist, and stale "
        "GATT caches survive reconnects; upgrade to 5.55 or newer",
    ),
]


class BluezUnavailable(RuntimeError):
    """BlueZ or the adapter cannot be used; the message is one sentence saying what to do."""


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    name: str
    path: str
    address: str
    powered: bool


async def probe_adapter(adapter: str = "hci0", timeout: float = 3.0) -> AdapterInfo:
    """Check that BlueZ answers on the system bus and the adapter exists and is powered."""
    try:
        from dbus_fast import MessageType
    except ImportError as exc:  # pragma: no cover - non-Linux
        raise BluezUnavailable(f"the real-device path needs BlueZ and dbus-fast: {exc}") from None
    try:
        reply = await call_bluez(
            timeout,
            path="/",
            interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects",
        )
    except SystemBusFailed as failed:
        cause = failed.cause
        if failed.stage == "connect" and cause is None:
            raise BluezUnavailable(
                f"the system D-Bus did not answer within {timeout:g} s; restart dbus and bluetoothd"
            ) from None
        if failed.stage == "connect":
            raise BluezUnavailable(
                f"cannot reach the system D-Bus at {system_bus_address()} "
                f"({type(cause).__name__}: {cause}); this machine has no BlueZ running: install "
                "bluez and start bluetoothd"
            ) from None
        if cause is None:
            raise BluezUnavailable(
                f"BlueZ did not answer on the system D-Bus within {timeout:g} s; restart bluetoothd"
            ) from None
        raise BluezUnavailable(
            f"the system D-Bus connection failed ({type(cause).__name__}: {cause}); restart dbus "
            "and bluetoothd"
        ) from None
    if reply.message_type == MessageType.ERROR:
        raise BluezUnavailable(
            f"BlueZ is not running ({reply.error_name}); start bluetoothd "
            "(systemctl start bluetooth)"
        )
    objects = reply.body[0]
    path = f"/org/bluez/{adapter}"
    props = objects.get(path, {}).get("org.bluez.Adapter1")
    if props is None:
        found = sorted(p.rsplit("/", 1)[1] for p, i in objects.items() if "org.bluez.Adapter1" in i)
        raise BluezUnavailable(
            f"Bluetooth adapter {adapter} not found (adapters: {', '.join(found) or 'none'}); "
            "plug one in or choose another adapter"
        )
    powered = bool(props["Powered"].value)
    if not powered:
        raise BluezUnavailable(
            f"Bluetooth adapter {adapter} is powered off; run `bluetoothctl power on`"
        )
    return AdapterInfo(adapter, path, str(props["Address"].value), powered)


def system_bus_address() -> str:
    """Where dbus-fast looks for the system bus (what the messages name)."""
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/var/run/dbus/system_bus_socket")


class SystemBusFailed(Exception):
    """A call on the system D-Bus that got no reply: ``stage`` says whether reaching the bus
    (``connect``) or the call itself (``call``) failed; ``cause`` is what was raised, None
    when the time ran out."""

    def __init__(self, stage: str, cause: BaseException | None) -> None:
        super().__init__(f"{stage}: {cause or 'timed out'}")
        self.stage = stage
        self.cause = cause


async def call_bluez(timeout: float, **message: Any) -> Any:
    """One method call to ``org.bluez`` on the system D-Bus (``message``: dbus-fast
    ``Message`` fields), from connecting to disconnecting within ``timeout``: the one way
    this package talks to BlueZ. Returns the reply, an error reply included; raises
    :class:`SystemBusFailed` for anything else (``ImportError`` without dbus-fast)."""
    from dbus_fast import BusType, Message
    from dbus_fast.aio import MessageBus
    from dbus_fast.errors import DBusError

    stage = "connect"
    try:
        async with asyncio.timeout(timeout):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            stage = "call"
            try:
                return await bus.call(Message(destination="org.bluez", **message))
            finally:
                bus.disconnect()
    except TimeoutError:
        raise SystemBusFailed(stage, None) from None
    except (OSError, ValueError, EOFError, DBusError) as exc:
        raise SystemBusFailed(stage, exc) from None


async def remove_device(address: str, adapter: str = "hci0", timeout: float = 5.0) -> bool:
    """BlueZ's ``Adapter1.RemoveDevice``: forget the device and its cached GATT database
    (what ``bluetoothctl remove ADDRESS`` does). False when BlueZ did not know it. Raises
    :class:`BluezUnavailable` (one sentence) for anything else, an OS error included (no
    system D-Bus: ``FileNotFoundError``)."""
    try:
        from dbus_fast import MessageType
    except ImportError as exc:  # pragma: no cover - non-Linux
        raise BluezUnavailable(f"clearing BlueZ's cache needs dbus-fast: {exc}") from None

    device_path = f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"
    try:
        reply = await call_bluez(
            timeout,
            path=f"/org/bluez/{adapter}",
            interface="org.bluez.Adapter1",
            member="RemoveDevice",
            signature="o",
            body=[device_path],
        )
    except SystemBusFailed as failed:
        cause = failed.cause
        if cause is None:
            raise BluezUnavailable(
                f"BlueZ did not answer RemoveDevice for {address} within {timeout:g} s"
            ) from None
        raise BluezUnavailable(
            f"cannot reach BlueZ on the system D-Bus at {system_bus_address()} "
            f"({type(cause).__name__}: {cause})"
        ) from None
    if reply.message_type == MessageType.ERROR:
        if reply.error_name == "org.bluez.Error.DoesNotExist":
            return False
        raise BluezUnavailable(
            f"BlueZ refused to remove {address}: {reply.error_name} {reply.body}"
        )
    log.info("removed %s from BlueZ (its GATT cache is gone)", address)
    return True


async def connected_devices(adapter: str = "hci0", timeout: float = 3.0) -> list[BLEDevice]:
    """Devices BlueZ holds connected on ``adapter``, as BLEDevices bleak connects through
    (it skips ``Connect`` for a device already connected). A connected device does not
    advertise, so no scan sees it: one a killed host process had connected stays connected
    in bluetoothd (bluez#89) until someone disconnects it. Empty when BlueZ cannot be asked
    (nothing to add to a scan that found nothing)."""
    try:
        from dbus_fast import MessageType
    except ImportError:  # pragma: no cover - non-Linux
        return []
    try:
        reply = await call_bluez(
            timeout,
            path="/",
            interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects",
        )
    except SystemBusFailed as exc:
        log.debug("cannot list BlueZ's connected devices: %s", exc)
        return []
    if reply.message_type == MessageType.ERROR:
        return []
    prefix = f"/org/bluez/{adapter}/"
    found = []
    for path, interfaces in reply.body[0].items():
        variants = interfaces.get("org.bluez.Device1")
        if not path.startswith(prefix) or variants is None:
            continue
        props = {key: variant.value for key, variant in variants.items()}
        if props.get("Connected"):
            name = props.get("Name") or props.get("Alias")
            found.append(BLEDevice(props["Address"], name, {"path": path, "props": props}))
    return found


async def bluez_version(timeout: float = 3.0) -> tuple[int, int] | None:
    exe = shutil.which("bluetoothctl")
    if exe is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            exe, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        return None
    return parse_version(out.decode(errors="replace"))


async def reread_services(client: Any) -> bool:
    """Re-read a connected bleak client's services from what BlueZ exports now.

    bleak's BlueZ backend builds a connection's services once, when BlueZ reports
    ServicesResolved; BlueZ before 5.55 may report that before the GATT objects exist (the
    race the settle guards against), and the objects then come a moment later. This asks
    bleak's own BlueZ manager for the services again, through two attributes bleak does not
    document (the client's ``_backend`` and its ``_device_path``); with a bleak that lacks
    them it returns False, and the link reconnects instead.
    """
    backend = getattr(client, "_backend", None)
    path = getattr(backend, "_device_path", None)
    if backend is None or not isinstance(path, str) or not hasattr(backend, "services"):
        return False
    try:
        from bleak.backends.bluezdbus.manager import get_global_bluez_manager

        manager = await get_global_bluez_manager()
        backend.services = await manager.get_services(path, False, None)
    except (ImportError, AttributeError, KeyError, OSError, BleakError) as exc:
        log.debug("re-reading the services of %s failed: %s", path, exc)
        return False
    return True


async def acquire_mtu(client: Any) -> int | None:
    """The connection's ATT MTU as BlueZ negotiated it, or None when it cannot be had.

    bleak's BlueZ backend learns a characteristic's ``MTU`` property from its manager, which
    builds its picture once per event loop (GetManagedObjects) and then follows signals;
    bluetoothd 5.66 exports ``MTU`` only while connected and signals neither its going nor
    its return, so a loop that first met the device disconnected reports
    ``max_write_without_response_size`` = 20 for the whole loop. The MTU itself comes with
    ``AcquireWrite``: bleak's ``_acquire_mtu()`` (its documented way, see
    ``BleakClient.mtu_size``) calls it, closes the fd at once and keeps the MTU. It goes
    through the client's undocumented ``_backend``; with a bleak that lacks it, None.
    """
    backend = getattr(client, "_backend", None)
    acquire = getattr(backend, "_acquire_mtu", None)
    if acquire is None:
        return None
    try:
        await acquire()
        mtu = getattr(backend, "_mtu_size", None)
    except (AssertionError, StopIteration, AttributeError, OSError, BleakError) as exc:
        # bleak asserts on a failed reply (assert_reply raises BleakDBusError) and on a
        # collection with no writable or notifying characteristic
        log.debug("acquiring the MTU failed: %s: %s", type(exc).__name__, exc)
        return None
    return mtu if isinstance(mtu, int) and mtu >= 23 else None


def parse_version(text: str) -> tuple[int, int] | None:
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def version_warnings(version: tuple[int, int] | None) -> list[str]:
    if version is None:
        return ["BlueZ version unknown (bluetoothctl not found); GATT bugs cannot be ruled out"]
    text = f"{version[0]}.{version[1]}"
    return [f"BlueZ {text}: {why}" for below, why in KNOWN_BAD if version < below]

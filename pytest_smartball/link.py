"""The NUS link over bleak: scan, connect robustly, send frames, receive typed messages.

Everything the field taught us about bleak on BlueZ lives here, once:

* connect through ``bleak_retry_connector.establish_connection`` (retries, backoff, BlueZ
  error categories) with the ``BLEDevice`` from the scan, never a bare address;
* settle after connecting, then force service discovery: NUS must be there, else the
  connect counts as failed (this covers BlueZ's ``ServicesResolved``-before-objects race
  and stale GATT caches);
* a plain ``disconnected_callback`` that wakes every wait at once;
* one write path that turns bleak, EOF and D-Bus errors into :class:`LinkLost`.

The backend is injected (:class:`BleBackend`): ``None`` classes mean the platform's own
(a real radio); the simulator supplies its classes. This module never imports ``sim``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

from . import protocol as p

log = logging.getLogger("pytest_smartball.link")


class LinkError(Exception):
    """Base of the link's clean failures; the message says what failed and what to do."""


class DeviceNotFound(LinkError):
    pass


class ConnectFailed(LinkError):
    pass


class LinkLost(LinkError):
    """The connection is gone (dropped, reset, or a GATT call failed): reconnect to go on."""


class ResponseTimeout(LinkError):
    """The device sent nothing that was waited for within the time allowed."""


def _link_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [BleakError, EOFError, BrokenPipeError, ConnectionError]
    try:  # dbus-fast is bleak's D-Bus library on Linux; absent elsewhere
        from dbus_fast.errors import DBusError

        errors.append(DBusError)
    except ImportError:  # pragma: no cover - non-Linux
        pass
    return tuple(errors)


#: What a GATT call may raise when the link is going or gone.
LINK_ERRORS = _link_errors()
#: Starting and stopping a scanner: bounded on top of the scan itself.
SCANNER_START_STOP_S = 10.0


@dataclass(frozen=True, slots=True)
class BleBackend:
    """Which bleak backends to use. ``None`` means the platform's own (a real radio).

    ``forget`` removes a device from the stack's cache (its GATT database included) and
    ``warnings`` reports known problems of the stack; the real ones talk to BlueZ, the
    simulator supplies its own.
    """

    scanner: type | None = None
    client: type | None = None
    adapter: str = "hci0"
    forget: Callable[[str], Awaitable[bool]] | None = None
    warnings: Callable[[], Awaitable[list[str]]] | None = None

    @property
    def is_real(self) -> bool:
        return self.client is None

    def scanner_kwargs(self) -> dict[str, Any]:
        if self.scanner is not None:
            return {"backend": self.scanner}
        return {"bluez": {"adapter": self.adapter}} if sys.platform.startswith("linux") else {}

    def client_kwargs(self) -> dict[str, Any]:
        if self.client is not None:
            return {"backend": self.client}
        return {"bluez": {"adapter": self.adapter}} if sys.platform.startswith("linux") else {}

    async def forget_device(self, address: str) -> bool:
        if self.forget is not None:
            return await self.forget(address)
        if sys.platform.startswith("linux"):
            from .bluez import remove_device

            return await remove_device(address, self.adapter)
        return False  # CoreBluetooth and WinRT keep no cache a client can clear

    async def platform_warnings(self) -> list[str]:
        if self.warnings is not None:
            return await self.warnings()
        if self.is_real and sys.platform.startswith("linux"):
            from .bluez import bluez_version, version_warnings

            return version_warnings(await bluez_version())
        return []


@dataclass(frozen=True, slots=True)
class LinkSettings:
    #: Pause after connecting before the first GATT operation (BlueZ services race).
    settle_s: float = 1.5
    #: Attempts per connect that establish_connection makes (it retries transient errors
    #: up to 9 times on its own: bleak_retry_connector.MAX_TRANSIENT_ERRORS).
    connect_attempts: int = 3
    #: Connects that came up without NUS before giving up (race / stale cache).
    services_attempts: int = 3
    services_retry_backoff_s: float = 1.0
    #: How long a scan looks for the device (``--scan-timeout``, ``--ble-scan-timeout``).
    scan_timeout_s: float = 10.0
    write_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Sighting:
    """One advertiser a scan saw: what it advertised, and the BLEDevice to connect to."""

    address: str
    name: str | None
    rssi: int | None = None
    nus: bool = False  # advertises the Nordic UART Service
    device: BLEDevice | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        rssi = f", {self.rssi} dBm" if self.rssi is not None else ""
        return f"{self.name or '(no name)'} ({self.address}{rssi})"

    @property
    def ble_device(self) -> BLEDevice:
        assert self.device is not None, f"{self} was not seen by a scan"
        return self.device


async def observe(
    backend: BleBackend,
    *,
    timeout: float,
    done: Callable[[Mapping[str, Sighting]], bool] = lambda seen: False,
) -> dict[str, Sighting]:
    """Scan until ``done(seen)`` holds or ``timeout`` passes; every advertiser seen, by
    upper-case address. The one scanning loop: finding a device, listing devices and
    preflight all use it. Raises DeviceNotFound when the scanner itself fails (no adapter,
    adapter off, stack not running)."""
    seen: dict[str, Sighting] = {}
    complete = asyncio.Event()

    def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[device.address.upper()] = Sighting(
            device.address,
            adv.local_name or device.name,
            adv.rssi,
            p.NUS_SERVICE_UUID in (u.lower() for u in adv.service_uuids),
            device,
        )
        if done(seen):
            complete.set()

    scanner = BleakScanner(detection_callback=on_advertisement, **backend.scanner_kwargs())
    try:
        async with asyncio.timeout(timeout + SCANNER_START_STOP_S):  # start and stop bounded
            async with scanner:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await complete.wait()
    except (*LINK_ERRORS, OSError, TimeoutError) as exc:  # no adapter, stack not running
        why = str(exc) or "the scanner did not start or stop in time"
        raise DeviceNotFound(
            f"scanning failed ({type(exc).__name__}: {why}); check that Bluetooth is on and "
            "the adapter is present"
        ) from None
    return seen


async def find_device(
    backend: BleBackend,
    *,
    name: str | None = None,
    address: str | None = None,
    timeout: float,
) -> Sighting:
    """Scan for a SmartBall by address (preferred) or advertised name."""
    if not (address or name):
        raise ValueError("find_device needs a name or an address")
    what = f"address {address}" if address else f"name {name!r}"

    def wanted(s: Sighting) -> bool:
        return s.address.upper() == address.upper() if address else s.name == name

    seen = await observe(
        backend, timeout=timeout, done=lambda seen: any(wanted(s) for s in seen.values())
    )
    for sighting in seen.values():
        if wanted(sighting):
            return sighting
    raise DeviceNotFound(
        f"no SmartBall with {what} advertised within {timeout:g} s; check that it is "
        "powered, in range and not connected to another host"
    )


async def scan(backend: BleBackend, timeout: float) -> list[Sighting]:
    """Devices advertising NUS, strongest first."""
    seen = await observe(backend, timeout=timeout)
    nus = [s for s in seen.values() if s.nus]
    return sorted(nus, key=lambda s: -(s.rssi if s.rssi is not None else -999))


_LOST = object()


class NusLink:
    """One connection to a SmartBall's NUS. Use ``async with await NusLink.open(...)``."""

    def __init__(
        self,
        device: BLEDevice,
        backend: BleBackend,
        settings: LinkSettings,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.device = device
        self.backend = backend
        self.settings = settings
        self._on_event = on_event or (lambda kind, detail: None)
        self._client: BleakClient | None = None
        self._rx: BleakGATTCharacteristic | None = None
        self._decoder = p.FrameDecoder()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.lost = asyncio.Event()
        self.lost_reason = "not connected"
        self.max_write = 20

    # --- connecting --------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        device: BLEDevice,
        backend: BleBackend,
        settings: LinkSettings | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> NusLink:
        link = cls(device, backend, settings or LinkSettings(), on_event)
        await link._connect()
        return link

    async def _connect(self) -> None:
        s = self.settings
        for attempt in range(1, s.services_attempts + 1):
            client = await self._establish()
            await asyncio.sleep(s.settle_s)
            rx, tx, problem = _find_nus(client)
            if rx is not None and tx is not None:
                break
            self._on_event(
                "services-missing", f"{problem} (attempt {attempt}/{s.services_attempts})"
            )
            await _quiet_disconnect(client)
            if attempt == s.services_attempts:
                raise ConnectFailed(
                    f"{self._who}: connected {attempt} times but the Nordic UART Service never "
                    f"appeared ({problem}). On Linux, clear BlueZ's cache for the device "
                    "(smartball-ota --clear-cache, or `bluetoothctl remove ADDRESS`) and retry"
                )
            await asyncio.sleep(s.services_retry_backoff_s * attempt)
        self._client, self._rx = client, rx
        self.max_write = rx.max_write_without_response_size
        try:
            # bleak's BlueZ backend awaits this D-Bus call without a timeout of its own
            async with asyncio.timeout(self.settings.write_timeout_s):
                await client.start_notify(tx, self._on_notify)
        except (*LINK_ERRORS, TimeoutError) as exc:
            self._mark_lost(f"start_notify failed: {exc}")
            raise LinkLost(f"{self._who}: link lost while enabling notifications: {exc}") from exc
        # Not client.mtu_size: on BlueZ it reads 23 (with a warning) until the MTU is
        # acquired; the characteristic's write size is what bounds a write.
        self._on_event("connected", f"write size {self.max_write} (mtu {self.mtu_size})")

    async def _establish(self) -> BleakClient:
        try:
            return await establish_connection(
                BleakClientWithServiceCache,
                self.device,
                self.device.name or self.device.address,
                disconnected_callback=self._on_disconnected,
                max_attempts=self.settings.connect_attempts,
                **self.backend.client_kwargs(),
            )
        except (TimeoutError, BleakError) as exc:
            raise ConnectFailed(f"{self._who}: could not connect: {exc}") from exc

    @property
    def _who(self) -> str:
        return f"{self.device.name or 'device'} ({self.device.address})"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _quiet_disconnect(client)
        self._mark_lost("closed by host")

    async def __aenter__(self) -> NusLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        return self._client is not None and not self.lost.is_set()

    @property
    def mtu_size(self) -> int:
        return self.max_write + 3

    @property
    def max_data_chunk(self) -> int:
        """Image bytes one CMD_OTA_DATA frame carries when it fills exactly one write."""
        return p.max_data_chunk(self.max_write)

    # --- callbacks -------------------------------------------------------------------

    def _on_disconnected(self, client: BleakClient) -> None:
        # Before _connect adopts a client, a drop shows up as missing services instead.
        if client is self._client:
            self._mark_lost("device disconnected")

    def _mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        self._decoder.reset()
        self._queue.put_nowait(_LOST)
        self._on_event("link-lost", reason)

    def _on_notify(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        for frame in self._decoder.feed(bytes(data)):
            try:
                msg = p.parse_message(frame)
            except p.ProtocolError as exc:
                log.warning("%s: ignoring a malformed frame from the device: %s", self._who, exc)
                continue
            if frame.type in p.COMMAND_TYPES:
                log.warning("%s: the device sent a host command (%r); ignored", self._who, msg)
                continue
            self._queue.put_nowait(msg)

    # --- I/O -------------------------------------------------------------------------

    async def send(self, msg: p.Command) -> None:
        await self.send_frame(p.encode(msg))

    async def send_frame(self, frame: bytes) -> None:
        """Write one frame (split into writes of the link's size); raises LinkLost."""
        if self._client is None or self._rx is None or self.lost.is_set():
            raise LinkLost(f"{self._who}: {self.lost_reason}")
        step = self.max_write
        try:
            async with asyncio.timeout(self.settings.write_timeout_s):
                for start in range(0, len(frame), step):
                    await self._client.write_gatt_char(
                        self._rx, frame[start : start + step], response=False
                    )
        except LINK_ERRORS as exc:
            self._mark_lost(f"write failed: {type(exc).__name__}: {exc}")
            raise LinkLost(f"{self._who}: write failed: {exc}") from exc
        except TimeoutError as exc:
            self._mark_lost("write timed out")
            raise LinkLost(
                f"{self._who}: a write did not complete within {self.settings.write_timeout_s:g} s"
            ) from exc

    async def receive(self, timeout: float) -> p.DeviceMessage:
        """The next device message; LinkLost at once when the link drops, else
        ResponseTimeout after ``timeout`` seconds of silence."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise ResponseTimeout(
                f"{self._who}: no message from the device for {timeout:g} s"
            ) from None
        if item is _LOST:
            self._queue.put_nowait(_LOST)  # every later wait ends at once too
            raise LinkLost(f"{self._who}: {self.lost_reason}")
        return item  # type: ignore[return-value]

    async def request(
        self, cmd: p.Command, expect: tuple[type, ...], timeout: float = 5.0
    ) -> p.DeviceMessage:
        """Send a command and return its reply: the first message of the expected types,
        or MSG_ERROR for a command the device may refuse. Messages already queued are
        answers to earlier commands and are dropped first; others that arrive meanwhile
        (progress, stale ACKs, errors about earlier writes) are skipped."""
        stale = self.drain()
        if stale:
            log.debug(
                "%s: dropped %d stale message(s) before %s", self._who, len(stale), cmd.TYPE.name
            )
        await self.send(cmd)
        accept = (*expect, p.MsgError) if cmd.TYPE in p.REFUSABLE_COMMANDS else expect
        what = f"{'/'.join(t.TYPE.name for t in expect)} reply to {cmd.TYPE.name}"
        return await self.wait_for(accept, timeout, what)

    async def wait_for(
        self, accept: tuple[type, ...], timeout: float, what: str
    ) -> p.DeviceMessage:
        """The first message of the ``accept`` types within ``timeout`` seconds in all,
        skipping others; LinkLost at once if the link drops, ResponseTimeout naming
        ``what`` when the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ResponseTimeout(f"{self._who}: no {what} within {timeout:g} s")
            msg = await self.receive(remaining)
            if isinstance(msg, accept):
                return msg

    def drain(self) -> list[p.DeviceMessage]:
        """Messages already received and not yet consumed."""
        out: list[p.DeviceMessage] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _LOST:
                self._queue.put_nowait(_LOST)
                break
            out.append(item)  # type: ignore[arg-type]
        return out


def _find_nus(
    client: BleakClient,
) -> tuple[BleakGATTCharacteristic | None, BleakGATTCharacteristic | None, str]:
    """Force discovery results to be read now; say what is missing."""
    try:
        services = list(client.services)
    except BleakError as exc:  # dropped during the settle delay
        return None, None, str(exc)
    if not any(s.uuid == p.NUS_SERVICE_UUID for s in services):
        return None, None, "GATT database has no Nordic UART Service"
    rx = client.services.get_characteristic(p.NUS_RX_UUID)
    tx = client.services.get_characteristic(p.NUS_TX_UUID)
    missing = [name for name, c in (("RX", rx), ("TX", tx)) if c is None]
    return rx, tx, f"NUS {'/'.join(missing)} characteristic missing" if missing else ""


async def _quiet_disconnect(client: BleakClient) -> None:
    try:
        async with asyncio.timeout(5.0):
            await client.disconnect()
    except (*LINK_ERRORS, TimeoutError) as exc:
        log.debug("disconnect: %s", exc)

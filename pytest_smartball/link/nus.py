"""One connection to a SmartBall's NUS over bleak: connect robustly, send frames, receive
typed messages.

Everything the field taught us about bleak on BlueZ lives here, once:

* connect through ``bleak_retry_connector.establish_connection`` (retries, backoff, BlueZ
  error categories) with the ``BLEDevice`` from the scan, never a bare address;
* after connecting, go on as soon as the stack has resolved the services *and* the NUS
  characteristics are really there; a connect without them counts as failed (BlueZ's
  ``ServicesResolved``-before-objects race, stale GATT caches). The settle delay is only
  the upper bound of that wait, and a fixed pause only on stacks known to need one;
* a plain ``disconnected_callback`` that wakes every wait at once;
* one write path that turns bleak, EOF and D-Bus errors into :class:`LinkLost`.

The backend is injected (:class:`~.backend.BleBackend`); this module never imports the
simulator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

from ..contract import codec as p
from .backend import BleBackend
from .errors import (
    LINK_ERRORS,
    LINK_OR_TIMEOUT_ERRORS,
    STACK_ERRORS,
    ConnectFailed,
    LinkEvent,
    LinkLost,
    ResponseTimeout,
)
from .settings import LinkSettings

log = logging.getLogger("pytest_smartball.link")


class LinkObserver(Protocol):
    """Sees every byte of one link both ways, with the loop's clock (the contract monitor,
    :mod:`pytest_smartball.plugin.monitoring`): what the host wrote, what the device notified,
    and when the link came and went."""

    def connected(self, t: float) -> None: ...

    def disconnected(self, t: float, by_host: bool) -> None: ...

    def host_bytes(self, t: float, data: bytes) -> None: ...

    def device_bytes(self, t: float, data: bytes) -> None: ...


#: Called for every new link; each returns an observer for it, or None. Empty unless a
#: test asked for the contract monitor (:func:`watch_links`).
_WATCHERS: list[Callable[[NusLink], LinkObserver | None]] = []


def watch_links(factory: Callable[[NusLink], LinkObserver | None]) -> Callable[[], None]:
    """Give every link opened from now on the observer ``factory`` returns for it;
    returns the function that stops it (links already open keep their observer)."""
    _WATCHERS.append(factory)

    def stop() -> None:
        if factory in _WATCHERS:
            _WATCHERS.remove(factory)

    return stop


_LOST = object()
#: Message types this codec knows; others are a newer device's (P13).
_KNOWN_TYPES = frozenset(int(t) for t in p.MsgType)
#: How often the settle looks again for services that came late.
SETTLE_POLL_S = 0.05


class NusLink:
    """One connection to a SmartBall's NUS. Use ``async with await NusLink.open(...)``."""

    def __init__(
        self,
        device: BLEDevice,
        backend: BleBackend,
        settings: LinkSettings,
        on_event: Callable[[LinkEvent, str], None] | None = None,
    ) -> None:
        self.device = device
        self.backend = backend
        self.settings = settings
        self._on_event: Callable[[LinkEvent, str], None] = on_event or (lambda kind, detail: None)
        self._client: BleakClient | None = None
        self._rx: BleakGATTCharacteristic | None = None
        self._decoder = p.FrameDecoder()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.lost = asyncio.Event()
        self.lost_reason = "not connected"
        self.max_write = 20
        self._observers = [o for o in (w(self) for w in _WATCHERS) if o is not None]
        #: The loop whose clock the observers get (set once they saw the link come up).
        self._watched_loop: asyncio.AbstractEventLoop | None = None
        #: The release of a client the device dropped (see _on_disconnected).
        self._release: asyncio.Task[None] | None = None

    # --- connecting --------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        device: BLEDevice,
        backend: BleBackend,
        settings: LinkSettings | None = None,
        on_event: Callable[[LinkEvent, str], None] | None = None,
    ) -> NusLink:
        link = cls(device, backend, settings or LinkSettings(), on_event)
        await link._connect()
        return link

    async def _connect(self) -> None:
        s = self.settings
        for attempt in range(1, s.services_attempts + 1):
            client = await self._establish()
            rx, tx, problem = await self._settle(client)
            if rx is not None and tx is not None:
                break
            self._on_event(
                LinkEvent.SERVICES_MISSING, f"{problem} (attempt {attempt}/{s.services_attempts})"
            )
            await _quiet_disconnect(client)
            if attempt == s.services_attempts:
                raise ConnectFailed(
                    f"{self._who}: connected {attempt} times but the Nordic UART Service never "
                    f"appeared ({problem}). On Linux, clear BlueZ's cache for the device "
                    "(smartball-ota --clear-cache, or `bluetoothctl remove ADDRESS`) and retry"
                )
            await asyncio.sleep(s.services_retry_backoff_s * attempt)
        assert rx is not None and tx is not None  # the loop ends only with both, or raises
        self._client, self._rx = client, rx
        self.max_write = await self._write_size(client, rx)
        if self._observers:
            self._watched_loop = asyncio.get_running_loop()
            for observer in self._observers:
                observer.connected(self._watched_loop.time())
        try:
            # bleak's BlueZ backend awaits this D-Bus call without a timeout of its own
            async with asyncio.timeout(self.settings.write_timeout_s):
                await client.start_notify(tx, self._on_notify)
        except LINK_OR_TIMEOUT_ERRORS as exc:
            self._mark_lost(f"start_notify failed: {exc}")
            raise LinkLost(f"{self._who}: link lost while enabling notifications: {exc}") from exc
        self._on_event(LinkEvent.CONNECTED, f"write size {self.max_write} (mtu {self.mtu_size})")

    async def _write_size(self, client: BleakClient, rx: BleakGATTCharacteristic) -> int:
        """What one write may carry: MTU - 3 with the MTU the stack negotiated, when it has
        to be asked for it (BlueZ), else the characteristic's own write size. Not
        ``client.mtu_size``: on BlueZ it reads 23 (with a warning) until acquired."""
        try:
            async with asyncio.timeout(self.settings.write_timeout_s):
                mtu = await self.backend.negotiated_mtu(client)
        except TimeoutError:
            mtu = None
        size = rx.max_write_without_response_size
        if mtu is None:
            return size
        if mtu - 3 != size:
            log.info(
                "%s: ATT MTU %d: writes of %d bytes (the characteristic said %d)",
                self._who,
                mtu,
                mtu - 3,
                size,
            )
        return mtu - 3

    async def _settle(
        self, client: BleakClient
    ) -> tuple[BleakGATTCharacteristic | None, BleakGATTCharacteristic | None, str]:
        """Wait until NUS is there, at most ``settle_s``. The connect returned once the
        stack resolved the services (no bleak service cache, see _establish), so what it
        resolved is looked at at once; if NUS is missing and the stack's client can re-read
        its services, they are read again while the settle lasts (BlueZ's race: the objects
        come after ServicesResolved). A fixed settle waits first, whatever the stack shows."""
        s = self.settings
        if s.fixed_settle:
            await asyncio.sleep(s.settle_s)
            await self.backend.reread_services(client)
            return _find_nus(client)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.settle_s
        while True:
            rx, tx, problem = _find_nus(client)
            remaining = deadline - loop.time()
            if (rx and tx) or remaining <= 0 or not self.backend.can_reread_services:
                return rx, tx, problem
            await asyncio.sleep(min(SETTLE_POLL_S, remaining))
            if not await self.backend.reread_services(client):
                return _find_nus(client)

    async def _establish(self) -> BleakClient:
        link = self

        class CountedClient(BleakClientWithServiceCache):
            """Says each connect attempt that fails (bleak-retry-connector makes the next one
            itself): a link the device made and lost at once is one of its links too."""

            async def connect(self, *args: Any, **kwargs: Any) -> None:
                try:
                    await super().connect(*args, **kwargs)
                except BaseException as exc:
                    why = str(exc) or type(exc).__name__
                    link._on_event(LinkEvent.CONNECT_ATTEMPT_FAILED, why)
                    raise

        try:
            return await establish_connection(
                CountedClient,
                self.device,
                self.device.name or self.device.address,
                disconnected_callback=self._on_disconnected,
                max_attempts=self.settings.connect_attempts,
                # Without bleak's own service cache its BlueZ backend returns from connect
                # only once BlueZ reports ServicesResolved, with what BlueZ resolved; with
                # it, at once, with what an earlier connection saw.
                use_services_cache=False,
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
        if self._release is not None:
            await self._release
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
            self._client = None
            # Released at once, not when the owner closes the link: bleak's BlueZ client
            # keeps its D-Bus connection after the device dropped, bluetoothd re-enables that
            # connection's notifications when the device comes back, and bleak then hands
            # each of them to the next link twice (seen in the VM stage: every reply on the
            # link opened after a reset arrived twice while the old link was still open).
            self._release = asyncio.get_running_loop().create_task(_quiet_disconnect(client))

    def _mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        self._decoder.reset()
        if self._watched_loop is not None:
            now = self._watched_loop.time()
            for observer in self._observers:
                observer.disconnected(now, reason == "closed by host")
        self._queue.put_nowait(_LOST)
        self._on_event(LinkEvent.LINK_LOST, reason)

    def _on_notify(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if self.lost.is_set():
            # A link is never revived, so nothing it hears after its loss is its own (its
            # bleak client may still be handed the next connection's notifications until
            # it is released, see _on_disconnected).
            return
        # P14: a partial frame with no byte for 1 s is discarded (the loop's clock).
        now = asyncio.get_running_loop().time()
        for observer in self._observers:
            observer.device_bytes(now, bytes(data))
        for frame in self._decoder.feed(bytes(data), now=now):
            if frame.type not in _KNOWN_TYPES:
                # P13: a message type this host does not know (a newer device's) is ignored.
                log.info("%s: ignoring a message of unknown type 0x%02X", self._who, frame.type)
                continue
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
                    piece = frame[start : start + step]
                    # Told before the write is awaited: over BlueZ the device's reply can
                    # reach us before the write call returns (seen in the VM stage), and a
                    # monitor told afterwards sees an answer to a command not yet sent.
                    for observer in self._observers:
                        observer.host_bytes(asyncio.get_running_loop().time(), piece)
                    await self._client.write_gatt_char(self._rx, piece, response=False)
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

    def no_reply(self, what: str, timeout: float) -> ResponseTimeout:
        """The error for a reply that never came, naming it (``what``: "MSG_INFO reply to
        CMD_INFO")."""
        return ResponseTimeout(f"{self._who}: no {what} within {timeout:g} s")

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
        names = "/".join(p.MsgType(getattr(t, "TYPE", 0)).name for t in expect)
        what = f"{names} reply to {cmd.TYPE.name}"
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
            try:
                if remaining <= 0:
                    raise TimeoutError
                msg = await self.receive(remaining)
            except (TimeoutError, ResponseTimeout):
                raise self.no_reply(what, timeout) from None
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
    except STACK_ERRORS as exc:
        log.debug("disconnect: %s", exc)

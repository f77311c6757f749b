"""The OTA engine: an explicit state machine that survives drops, resumes, and never bricks.

Each state is one coroutine that returns the next state. Link failures (:class:`LinkLost`,
:class:`ResponseTimeout`, :class:`ConnectFailed`) are caught in one place, the runner,
and become the RECOVERING state; the device's ``CMD_OTA_STATUS`` answer is the only truth
about what it holds, so nothing already sent is ever assumed to have arrived.

    SCANNING -> CONNECTING -> QUERYING -+-> (ABORTING) -> STARTING -> WAITING_READY
                                        |                                 |
                                        +--> WAITING_READY (still erasing)|
                                                                          v
          SUCCEEDED <- QUERYING <- REBOOTING <- FINISHING <- TRANSFERRING <- STABILISING
    any link failure -> RECOVERING -> SCANNING (a budget of attempts without progress)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bleak.backends.device import BLEDevice

from . import protocol as p
from .bluez import BluezUnavailable
from .image import FirmwareImage, ImageError
from .link import (
    LINK_ERRORS,
    BleBackend,
    ConnectFailed,
    DeviceNotFound,
    LinkLost,
    LinkSettings,
    NusLink,
    ResponseTimeout,
    find_device,
)

log = logging.getLogger("pytest_smartball.ota")


class State(enum.Enum):
    SCANNING = "scanning"
    CONNECTING = "connecting"
    QUERYING = "querying"
    ABORTING = "aborting"
    STARTING = "starting"
    WAITING_READY = "waiting-ready"
    STABILISING = "stabilising"
    TRANSFERRING = "transferring"
    FINISHING = "finishing"
    REBOOTING = "rebooting"
    RECOVERING = "recovering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class FailureKind(enum.Enum):
    BAD_INPUT = "bad-input"  # the image (or a parameter) cannot be used
    NOT_FOUND = "not-found"  # the device never showed up
    LINK = "link"  # the update could not finish: retries without progress exhausted
    REFUSED = "refused"  # the device rejected the image (too large, CRC mismatch, ...)


class OtaFailed(Exception):
    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class OtaSettings:
    link: LinkSettings = field(default_factory=LinkSettings)
    #: After READY, before the first DATA (the field's firmware needed a moment).
    stabilise_s: float = 1.0
    #: Longest silence while waiting for READY; MSG_OTA_PROGRESS counts as a sign of life.
    erase_silence_timeout_s: float = 10.0
    #: Longest wait for an ACK with a full window in flight before asking for STATUS.
    ack_timeout_s: float = 3.0
    #: Reply to a command such as INFO, STATUS or ABORT.
    reply_timeout_s: float = 5.0
    #: From FINISH to DONE (the device CRCs the whole image).
    verify_timeout_s: float = 15.0
    #: From DONE to the link dropping for the reset.
    reset_timeout_s: float = 10.0
    #: How long a vanished device (reboot, advertising pause) is waited for.
    reappear_timeout_s: float = 60.0
    #: Recoveries in a row without the device getting further before giving up.
    max_attempts_without_progress: int = 5
    #: A hard cap on recoveries whatever the progress, so nothing can loop forever.
    max_recoveries: int = 100
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    #: Forget the device in the Bluetooth stack first (BlueZ: Adapter1.RemoveDevice, what
    #: ``bluetoothctl remove`` does), so no stale GATT cache is used.
    clear_cache: bool = False
    #: Proposed in CMD_OTA_START; the link's write size caps it further.
    chunk_size: int = p.MAX_DATA_CHUNK


@dataclass(frozen=True, slots=True)
class OtaEvent:
    time: float  # seconds since the update began (event-loop time)
    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.time:9.3f}s  {self.kind:<14} {self.detail}"


@dataclass(slots=True)
class OtaResult:
    success: bool = False
    failure: FailureKind | None = None
    error: str = ""
    image_size: int = 0
    image_crc32: int = 0
    bytes_sent: int = 0
    bytes_resent: int = 0
    connects: int = 0
    #: Connections made again after a link failure (the planned one after the device
    #: resets into the new image is not counted).
    reconnects: int = 0
    resumes: int = 0
    restarts: int = 0
    duration_s: float = 0.0
    phase_s: dict[str, float] = field(default_factory=dict)
    info_after: p.MsgInfo | None = None
    #: Signal strength of the device's advertisement when this update last found it.
    rssi_dbm: int | None = None
    events: list[OtaEvent] = field(default_factory=list)

    @property
    def throughput_bps(self) -> float:
        transfer = self.phase_s.get(State.TRANSFERRING.value, 0.0)
        return self.image_size / transfer if transfer > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failure"] = self.failure.value if self.failure else None
        out["throughput_bps"] = round(self.throughput_bps, 1)
        return out


ProgressCallback = Callable[[str, int, int], None]  # phase ("erase"/"transfer"), done, total


class OtaEngine:
    """Flash one image onto one SmartBall. ``await engine.run()`` returns an OtaResult and
    raises nothing for device or link trouble: a failure is ``result.success == False``
    with ``result.failure`` and a sentence in ``result.error``."""

    def __init__(
        self,
        image: FirmwareImage,
        backend: BleBackend,
        *,
        device: BLEDevice | None = None,
        name: str | None = p.DEFAULT_NAME,
        address: str | None = None,
        settings: OtaSettings | None = None,
        on_progress: ProgressCallback | None = None,
        on_event: Callable[[OtaEvent], None] | None = None,
    ) -> None:
        self.image = image
        self.backend = backend
        self.settings = settings or OtaSettings()
        self.name = name
        self.address = address or (device.address if device else None)
        self._ble_device = device
        self._on_progress = on_progress or (lambda phase, done, total: None)
        self._on_event = on_event
        self.result = OtaResult(image_size=image.size, image_crc32=image.crc32)
        self.state = State.SCANNING
        self._link: NusLink | None = None
        self._t0 = 0.0
        self._state_since = 0.0
        self._ready: p.MsgOtaReady | None = None
        self._device_offset = 0  # what the device said it expects next
        self._high_water = 0  # highest offset ever sent (for re-sent accounting)
        self._session_started = False
        self._reconnecting = False
        self._just_connected = False
        self._recoveries = 0
        self._finish_sent = False
        self._recovering = False
        self._last_error = ""
        self._no_progress = 0
        self._progress_mark: tuple[int, int] = (0, 0)
        self._capacity_checked = False
        self.data_offsets_sent: list[int] = []  # for tests: every DATA offset, in order

    @property
    def started_at(self) -> float:
        """Event-loop time when run() began (event times are relative to it)."""
        return self._t0

    @property
    def link(self) -> NusLink | None:
        """The current connection, if any (tests use it to drop the link on purpose)."""
        return self._link

    # --- the runner --------------------------------------------------------------------

    async def run(self) -> OtaResult:
        loop = asyncio.get_running_loop()
        self._t0 = self._state_since = loop.time()
        self._event(
            "start", f"{self.image.source}: {self.image.size} bytes, crc32 {self.image.crc32:08x}"
        )
        handlers: dict[State, Callable[[], Awaitable[State]]] = {
            State.SCANNING: self._scan,
            State.CONNECTING: self._connect,
            State.QUERYING: self._query,
            State.ABORTING: self._abort,
            State.STARTING: self._start,
            State.WAITING_READY: self._wait_ready,
            State.STABILISING: self._stabilise,
            State.TRANSFERRING: self._transfer,
            State.FINISHING: self._finish,
            State.REBOOTING: self._await_reboot,
            State.RECOVERING: self._recover,
        }
        try:
            while self.state not in (State.SUCCEEDED, State.FAILED):
                try:
                    next_state = await handlers[self.state]()
                except (LinkLost, ResponseTimeout, ConnectFailed) as exc:
                    self._last_error = str(exc)
                    self._event("link-failure", str(exc))
                    next_state = State.RECOVERING
                except OtaFailed as exc:
                    self.result.failure = exc.kind
                    self.result.error = str(exc)
                    next_state = State.FAILED
                self._transition(next_state)
        finally:
            await self._close_link()
            self.result.duration_s = loop.time() - self._t0
        self.result.success = self.state is State.SUCCEEDED
        self._event("end", "success" if self.result.success else f"failed: {self.result.error}")
        return self.result

    def _transition(self, new: State) -> None:
        now = asyncio.get_running_loop().time()
        phases = self.result.phase_s
        phases[self.state.value] = phases.get(self.state.value, 0.0) + (now - self._state_since)
        self._state_since = now
        if new is not self.state:
            self._event("state", f"{self.state.value} -> {new.value}")
        self.state = new

    def _event(self, kind: str, detail: str = "") -> None:
        event = OtaEvent(asyncio.get_running_loop().time() - self._t0, kind, detail)
        self.result.events.append(event)
        log.info("%s %s", kind, detail)
        if self._on_event is not None:
            self._on_event(event)

    # --- states ------------------------------------------------------------------------

    async def _scan(self) -> State:
        s = self.settings
        if not self._recovering:
            await self._preflight()
        if self._ble_device is not None and not self._recovering:
            return State.CONNECTING
        timeout = s.reappear_timeout_s if self._recovering else s.link.scan_timeout_s
        try:
            sighting = await find_device(
                self.backend,
                name=None if self.address else self.name,
                address=self.address,
                timeout=timeout,
            )
        except DeviceNotFound as exc:
            if not self._recovering:
                raise OtaFailed(FailureKind.NOT_FOUND, str(exc)) from None
            raise ConnectFailed(str(exc)) from None
        self._ble_device = sighting.ble_device
        self.address = sighting.address
        self.result.rssi_dbm = sighting.rssi
        return State.CONNECTING

    async def _preflight(self) -> None:
        """Before the first scan (_scan calls it only then): BlueZ version warnings and the
        optional cache clear."""
        for warning in await self.backend.platform_warnings():
            self._event("warning", warning)
        if not self.settings.clear_cache:
            return
        if self.address is None:  # the cache is per address: find the device first
            try:
                sighting = await find_device(
                    self.backend, name=self.name, timeout=self.settings.link.scan_timeout_s
                )
            except DeviceNotFound as exc:
                raise OtaFailed(FailureKind.NOT_FOUND, str(exc)) from None
            self.address = sighting.address
        try:
            forgotten = await self.backend.forget_device(self.address)
        except (BluezUnavailable, TimeoutError, *LINK_ERRORS) as exc:
            # Not fatal: the update can go on with the cache; say why it was kept.
            self._event("warning", f"could not clear the cache for {self.address}: {exc}")
            return
        self._ble_device = None  # the old BLEDevice refers to what was just removed
        self._event(
            "cache-cleared",
            f"{self.address}: {'removed' if forgotten else 'not known'}"
            " from the Bluetooth stack's device cache",
        )

    async def _connect(self) -> State:
        assert self._ble_device is not None
        self._link = await NusLink.open(
            self._ble_device,
            self.backend,
            self.settings.link,
            on_event=self._link_event,
        )
        self.result.connects += 1
        self._just_connected = True
        if self._reconnecting:  # after a link failure (not the planned one after the reset)
            self.result.reconnects += 1
            self._reconnecting = False
        return State.QUERYING

    async def _query(self) -> State:
        info = await self._request(p.CmdInfo(), p.MsgInfo)
        if not self._capacity_checked:
            try:
                self.image.check_fits(info.staging_capacity)
            except ImageError as exc:
                raise OtaFailed(FailureKind.BAD_INPUT, str(exc)) from None
            self._capacity_checked = True
        if self._finish_sent and self._is_active(info):
            self.result.info_after = info
            self._event(
                "verified",
                f"device runs the new image (crc32 {info.active_image_crc32:08x},"
                f" firmware {info.firmware_version})",
            )
            return State.SUCCEEDED
        self._finish_sent = False
        status = await self._request(p.CmdOtaStatus(), p.MsgOtaStatus)
        ours = (status.image_size, status.image_crc32) == (self.image.size, self.image.crc32)
        self._event(
            "status",
            f"{status.state_name}, offset {status.next_expected_offset}, "
            f"{'this' if ours else 'no/another'} image's session",
        )
        state = status.state
        just_connected, self._just_connected = self._just_connected, False
        if ours and state == p.OtaState.ERASING:
            self._device_offset = 0  # nothing received yet: READY, then from the start
            return State.WAITING_READY
        if ours and state == p.OtaState.RECEIVING:
            self._device_offset = status.next_expected_offset
            self._progressed(2, self._device_offset)
            if just_connected:  # not a re-sync on a link that never dropped
                self.result.resumes += 1
                self._event("resume", f"at offset {self._device_offset} of {self.image.size}")
            return State.STARTING  # START for the same session answers READY without erasing
        if ours and state in (p.OtaState.VERIFYING, p.OtaState.COMPLETE):
            self._finish_sent = True
            return State.REBOOTING if state == p.OtaState.COMPLETE else State.FINISHING
        self._device_offset = 0  # a new session: everything is sent from the start
        if self._session_started:
            self.result.restarts += 1
            self._event("restart", "the device lost this image's session: abort, start over")
            return State.ABORTING
        return State.STARTING if state == p.OtaState.IDLE else State.ABORTING

    async def _abort(self) -> State:
        reply = await self._request(p.CmdOtaAbort(), p.MsgOtaStatus)
        self._event("aborted", f"device state {reply.state_name}")
        return State.STARTING

    async def _start(self) -> State:
        """START: a new session (erase first), or the same one again, which the device
        answers with READY at once (how a resume gets its chunk size and window)."""
        link = self._require_link()
        self._session_started = True
        chunk = min(self.settings.chunk_size, link.max_data_chunk)
        await link.send(p.CmdOtaStart(self.image.size, self.image.crc32, chunk))
        return State.WAITING_READY

    async def _wait_ready(self) -> State:
        link = self._require_link()
        while True:
            msg = await link.receive(self.settings.erase_silence_timeout_s)
            if isinstance(msg, p.MsgOtaProgress) and msg.phase == p.OtaPhase.ERASE:
                self._progressed(1, msg.done)
                self._on_progress("erase", msg.done, msg.total)
            elif isinstance(msg, p.MsgOtaReady):
                self._ready = msg
                self._event("ready", f"max chunk {msg.max_chunk}, window {msg.window}")
                return State.STABILISING
            elif isinstance(msg, p.MsgError):
                self._refused(msg, "CMD_OTA_START")

    async def _stabilise(self) -> State:
        await asyncio.sleep(self.settings.stabilise_s)
        return State.TRANSFERRING

    async def _transfer(self) -> State:
        link = self._require_link()
        assert self._ready is not None
        data = self.image.data
        size = len(data)
        chunk = min(self._ready.max_chunk, link.max_data_chunk)
        in_flight_limit = max(1, self._ready.window) * chunk
        acked = sent = self._device_offset
        rewound_to = -1
        self._on_progress("transfer", acked, size)
        while acked < size:
            while sent < size and sent - acked < in_flight_limit:
                end = min(sent + chunk, size)
                await link.send_frame(p.encode_data_frame(sent, data[sent:end]))
                self._count_sent(sent, end)
                sent = end
            try:
                msg = await link.receive(self.settings.ack_timeout_s)
            except ResponseTimeout:
                # A lost ACK or a lost write: the device's STATUS says where to go on.
                self._event("ack-timeout", f"no ACK with {sent - acked} bytes in flight")
                msg = await self._request(p.CmdOtaStatus(), p.MsgOtaStatus)
            if isinstance(msg, p.MsgOtaAck):
                if msg.next_expected_offset > acked:
                    acked = msg.next_expected_offset
                    self._device_offset = acked
                    self._progressed(2, acked)
                    self._on_progress("transfer", acked, size)
            elif isinstance(msg, p.MsgOtaStatus):
                if msg.state != p.OtaState.RECEIVING:
                    self._event("desync", f"device is {msg.state_name} mid-transfer")
                    return State.QUERYING
                if msg.next_expected_offset == rewound_to:
                    # Refused again with nothing taken since the last rewind: its flash is
                    # behind. Re-sending at once would spin (on a link without airtime the
                    # clock never moves on); its next ACK says the flash made room.
                    with contextlib.suppress(ResponseTimeout):
                        await link.wait_for(
                            (p.MsgOtaAck,), self.settings.ack_timeout_s, "MSG_OTA_ACK"
                        )
                acked = sent = self._device_offset = rewound_to = msg.next_expected_offset
                self._event("rewind", f"device expects offset {acked}")
            elif isinstance(msg, p.MsgError):
                if msg.code in (p.ErrorCode.BAD_STATE, p.ErrorCode.BAD_OFFSET):
                    self._event("device-error", f"{msg.code_name}: {msg.text}; re-syncing")
                    return State.QUERYING
                self._refused(msg, "CMD_OTA_DATA")
        return State.FINISHING

    async def _finish(self) -> State:
        link = self._require_link()
        if not self._finish_sent:
            await link.send(p.CmdOtaFinish())
            self._finish_sent = True
        msg = await link.wait_for(
            (p.MsgOtaDone, p.MsgError), self.settings.verify_timeout_s, "MSG_OTA_DONE"
        )
        if isinstance(msg, p.MsgError):
            self._finish_sent = False
            if msg.code == p.ErrorCode.BAD_STATE:
                return State.QUERYING
            self._refused(msg, "CMD_OTA_FINISH")
        assert isinstance(msg, p.MsgOtaDone)
        if msg.crc32 != self.image.crc32:
            raise OtaFailed(
                FailureKind.REFUSED,
                f"device reported crc32 {msg.crc32:08x}, expected {self.image.crc32:08x}",
            )
        self._event("done", f"device verified crc32 {msg.crc32:08x}; it resets into the new image")
        return State.REBOOTING

    async def _await_reboot(self) -> State:
        link = self._require_link()
        try:
            async with asyncio.timeout(self.settings.reset_timeout_s):
                await link.lost.wait()
        except TimeoutError:
            self._event("no-reset", "the device did not reset after DONE; checking its image")
            await self._close_link()
        self._recovering = True
        return State.SCANNING

    async def _recover(self) -> State:
        await self._close_link()
        self._recovering = True
        self._reconnecting = True
        s = self.settings
        self._recoveries += 1
        self._no_progress += 1
        if self._no_progress > s.max_attempts_without_progress or (
            self._recoveries > s.max_recoveries
        ):
            raise OtaFailed(
                FailureKind.LINK,
                f"gave up after {self._no_progress - 1} reconnect attempts without progress "
                f"(device at offset {self._device_offset} of {self.image.size}); last error: "
                f"{self._last_error}. The device keeps its old image; move it closer and run "
                "the update again: it resumes where the device stopped",
            )
        backoff = min(s.backoff_max_s, s.backoff_base_s * 2 ** (self._no_progress - 1))
        self._event(
            "recover",
            f"reconnecting in {backoff:g} s ({self._no_progress} of "
            f"{s.max_attempts_without_progress} attempts since the last progress)",
        )
        await asyncio.sleep(backoff)
        return State.SCANNING

    # --- helpers -----------------------------------------------------------------------

    def _link_event(self, kind: str, detail: str) -> None:
        if kind == "link-lost" and self.state is State.REBOOTING:
            kind = "device-reset"  # the drop DONE announced, not a failure
        self._event(kind, detail)

    def _require_link(self) -> NusLink:
        if self._link is None:
            raise LinkLost("not connected")
        return self._link

    async def _request(self, cmd: p.Command, expect: type) -> Any:
        link = self._require_link()
        reply = await link.request(cmd, (expect,), self.settings.reply_timeout_s)
        if isinstance(reply, p.MsgError):
            self._refused(reply, cmd.TYPE.name)
        return reply

    def _refused(self, msg: p.MsgError, after: str) -> None:
        raise OtaFailed(
            FailureKind.REFUSED,
            f"device refused {after}: {msg.code_name}: {msg.text or '(no text)'}",
        )

    def _count_sent(self, start: int, end: int) -> None:
        self.data_offsets_sent.append(start)
        self.result.bytes_sent += end - start
        if start < self._high_water:
            self.result.bytes_resent += min(end, self._high_water) - start
        self._high_water = max(self._high_water, end)

    def _progressed(self, rank: int, amount: int) -> None:
        """Record how far the device has got (rank 1: erased bytes, 2: received bytes).
        Only getting further than ever before resets the budget of fruitless attempts, so
        a device that reboots at the same point every time is eventually given up on."""
        mark = (rank, amount)
        if mark > self._progress_mark:
            self._progress_mark = mark
            self._no_progress = 0

    def _is_active(self, info: p.MsgInfo) -> bool:
        return (info.active_image_size, info.active_image_crc32) == (
            self.image.size,
            self.image.crc32,
        )

    async def _close_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

"""The OTA engine: the I/O of each state, with every rule left to the sans-I/O core.

Each state is one coroutine that talks to the link and reports what it saw to
:meth:`OtaEngine._see`, which asks :func:`~.decide.decide` what next. What to send and until
when to wait, given the time, are the core's too: the record (INFO and STATUS together or
apart, START's flags), :class:`~.window.Transfer` (DATA, the ACK and STATUS waits, the pause
after a repeated refusal) and :class:`~.timeouts.SilenceWatch` (the erase); this module only
pumps bytes and timeouts. Link failures
(:class:`LinkLost`, :class:`ResponseTimeout`, :class:`ConnectFailed`) are caught in one
place, the runner, and reported as :class:`~.observations.LinkFailed`; the device's own
answers (STATUS, ACK) are the only truth about what it holds, so nothing already sent is
assumed to have arrived. The states and their transitions: :mod:`.states`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import TypeVar

from bleak.backends.device import BLEDevice

from ..contract import codec as p
from ..image import FirmwareImage, ImageError
from ..link import (
    STACK_ERRORS,
    BleBackend,
    ConnectFailed,
    DeviceNotFound,
    ForgetFailed,
    LinkEvent,
    LinkLost,
    LinkSettings,
    NusLink,
    ResponseTimeout,
    find_device,
)
from . import observations as o
from .decide import decide
from .record import Commit, ImageId, Record
from .result import OtaEvent, OtaResult
from .settings import HealthCheckFailed, OtaSettings
from .states import EventKind, State
from .timeouts import SilenceWatch, reappear_s
from .window import CreditWindow, Transfer, TransferWaits, Wake, host_chunk

log = logging.getLogger("pytest_smartball.ota")

ProgressCallback = Callable[[str, int, int], None]  # phase ("erase"/"transfer"), done, total
_Reply = TypeVar("_Reply", p.MsgInfo, p.MsgOtaStatus)


#: Called with every engine as it is made, while registered (:func:`engines_made`).
_ENGINE_OBSERVERS: list[Callable[[OtaEngine], None]] = []


@contextlib.contextmanager
def engines_made(observer: Callable[[OtaEngine], None]) -> Iterator[None]:
    """Call ``observer`` with every OtaEngine made inside the block, however it was made
    (the pytest plugin records a test's updates with it, also those of engines a test
    builds itself). The observer must not raise; it is not an engine's business."""
    _ENGINE_OBSERVERS.append(observer)
    try:
        yield
    finally:
        _ENGINE_OBSERVERS.remove(observer)


class OtaEngine:
    """Flash one image onto one SmartBall. ``await engine.run()`` returns an OtaResult and
    raises nothing for device or link trouble: the outcome is ``result.outcome``
    (succeeded, unconfirmed or failed) with ``result.failure`` and a sentence in
    ``result.error`` when it did not succeed."""

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
        crc32 = image.crc32  # computed over the whole image on every access: once here
        self.result = OtaResult(image_size=image.size, image_crc32=crc32)
        image_id = ImageId(image.size, crc32, image.source, image.manifest)
        self.record = Record(image_id, self.settings.record_limits())
        self._link_settings: LinkSettings = self.settings.link
        self._link: NusLink | None = None
        self._ready: p.MsgOtaReady | None = None
        self._t0 = 0.0
        self._state_since = 0.0
        self._high_water = 0  # highest offset ever sent (for re-sent accounting)
        for observer in tuple(_ENGINE_OBSERVERS):
            observer(self)

    @property
    def state(self) -> State:
        return self.record.state

    @property
    def switch_asked(self) -> bool:
        """FINISH was sent (or the device said DONE, or COMPLETE): if this update stops now,
        the device may run the new image, now or after its next reset."""
        return self.record.commit is not Commit.NONE

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
            EventKind.START,
            f"{self.image.source}: {self.image.size} bytes, crc32 {self.record.image.crc32:08x}",
        )
        handlers: dict[State, Callable[[], Awaitable[None]]] = {
            State.SCANNING: self._scan,
            State.CONNECTING: self._connect,
            State.QUERYING: self._query,
            State.ABORTING: self._abort,
            State.SENDING_MANIFEST: self._send_manifest,
            State.STARTING: self._start,
            State.WAITING_READY: self._wait_ready,
            State.STABILISING: self._stabilise,
            State.TRANSFERRING: self._transfer,
            State.FINISHING: self._finish,
            State.REBOOTING: self._await_reset,
            State.HEALTH_CHECKING: self._health_check,
            State.CONFIRMING: self._confirm,
            State.RECOVERING: self._recover,
        }
        try:
            while not self.state.terminal:
                state = self.state
                try:
                    await handlers[state]()
                except (LinkLost, ResponseTimeout, ConnectFailed) as exc:
                    self._see(o.LinkFailed(str(exc)))
                except STACK_ERRORS as exc:  # a stack error the link did not translate
                    self._see(o.LinkFailed(f"Bluetooth error: {type(exc).__name__}: {exc}"))
                if self.state is state:
                    raise AssertionError(f"the {state.name} step ended without a decision")
        finally:
            await self._close_link()
            self.result.duration_s = loop.time() - self._t0
        r = self.record
        assert r.outcome is not None
        self._event(EventKind.END, r.outcome.value + (f": {r.error}" if r.error else ""))
        return self.result

    def _see(self, seen: o.Observation) -> None:
        """Report what was seen; :func:`decide` says what next (the one place the record
        and the state change)."""
        old = self.record.state
        self.record, notes = decide(self.record, seen)
        r = self.record
        self.result.follow(r)
        for note in notes:
            self._event(note.kind, note.detail)
        if r.state is not old:
            self._phase_ends(old)
            self._event(EventKind.STATE, f"{old.value} -> {r.state.value}")

    def _phase_ends(self, state: State) -> None:
        now = asyncio.get_running_loop().time()
        phases = self.result.phase_s
        phases[state.value] = phases.get(state.value, 0.0) + (now - self._state_since)
        self._state_since = now

    def _event(self, kind: EventKind, detail: str = "") -> None:
        event = OtaEvent(asyncio.get_running_loop().time() - self._t0, kind, detail)
        self.result.events.append(event)
        log.info("%s %s", kind, detail)
        if self._on_event is not None:
            self._on_event(event)

    # --- states ------------------------------------------------------------------------

    async def _scan(self) -> None:
        s = self.settings
        first = not self.record.seen
        if first:
            if not await self._preflight():
                return
            if self._ble_device is not None:
                self._see(o.Found())
                return
        timeout = s.link.scan_timeout_s if first else reappear_s(s.reappear_timeout_s, self.record)
        try:
            sighting = await find_device(
                self.backend,
                name=None if self.address else self.name,
                address=self.address,
                timeout=timeout,
            )
        except DeviceNotFound as exc:
            self._see(o.NotFound(str(exc)))
            return
        self._ble_device = sighting.ble_device
        self.address = sighting.address
        self.result.rssi_dbm = sighting.rssi
        self._see(o.Found())

    async def _preflight(self) -> bool:
        """Before the first scan: the stack's warnings, the settle it needs, and the
        optional cache clear. False when the device was not found for the cache clear."""
        for warning in await self.backend.platform_warnings():
            self._event(EventKind.WARNING, warning)
        if self._link_settings.fixed_settle is None:
            fixed = await self.backend.needs_fixed_settle()
            self._link_settings = replace(self._link_settings, fixed_settle=fixed)
        if not self.settings.clear_cache:
            return True
        if self.address is None:  # the cache is per address: find the device first
            try:
                sighting = await find_device(
                    self.backend, name=self.name, timeout=self.settings.link.scan_timeout_s
                )
            except DeviceNotFound as exc:
                self._see(o.NotFound(str(exc)))
                return False
            self.address = sighting.address
        try:
            forgotten = await self.backend.forget_device(self.address)
        except ForgetFailed as exc:
            # Not fatal: the update can go on with the cache; say why it was kept.
            self._event(EventKind.WARNING, str(exc))
            return True
        self._ble_device = None  # the old BLEDevice refers to what was just removed
        self._event(
            EventKind.CACHE_CLEARED,
            f"{self.address}: {'removed' if forgotten else 'not known'}"
            " from the Bluetooth stack's device cache",
        )
        return True

    async def _connect(self) -> None:
        assert self._ble_device is not None
        self._link = await NusLink.open(
            self._ble_device, self.backend, self._link_settings, on_event=self._link_event
        )
        self._see(o.Connected())

    async def _query(self) -> None:
        """INFO, then STATUS: sent together or STATUS after INFO's answer, as the record
        says (:attr:`~.record.Record.status_with_info`)."""
        link = self._require_link()
        both = self.record.status_with_info
        if both:
            link.drain()  # answers to earlier commands
            await link.send(p.CmdInfo())
            await link.send(p.CmdOtaStatus())
            timeout = self.settings.reply_timeout_s
            info = await link.wait_for((p.MsgInfo,), timeout, "MSG_INFO reply to CMD_INFO")
            assert isinstance(info, p.MsgInfo)
        else:
            info = await self._request(p.CmdInfo(), p.MsgInfo)
        try:
            self.image.check_fits(info.staging_capacity)
            too_large = None
        except ImageError as exc:
            too_large = str(exc)
        self._see(o.InfoReply(info, too_large))
        if self.record.commit is not Commit.NONE:
            self.result.info_after = info  # what the device runs after (or for) the switch
        if self.state is not State.QUERYING:
            return
        if both:
            what = "MSG_OTA_STATUS reply to CMD_OTA_STATUS"
            status = await link.wait_for((p.MsgOtaStatus,), self.settings.reply_timeout_s, what)
            assert isinstance(status, p.MsgOtaStatus)
        else:
            status = await self._request(p.CmdOtaStatus(), p.MsgOtaStatus)
        self._see(o.StatusReply(status))

    async def _abort(self) -> None:
        self._see(o.AbortReply(await self._request(p.CmdOtaAbort(), p.MsgOtaStatus)))

    async def _send_manifest(self) -> None:
        """A signed-only device: the signed manifest opens the session (section 16). The
        device checks it (key, signature, counter) before anything is erased."""
        signed = self.image.signed
        assert signed is not None
        link = self._require_link()
        link.drain()  # answers to earlier commands
        await link.send(p.CmdOtaManifest(signed.manifest_bytes, signed.signature))
        loop = asyncio.get_running_loop()
        timeout = self.settings.reply_timeout_s
        deadline = loop.time() + timeout
        what = "MSG_OTA_STATUS reply to CMD_OTA_MANIFEST"
        while self.state is State.SENDING_MANIFEST:  # a stale MSG_ERROR is skipped
            reply = await link.wait_for(
                (p.MsgOtaStatus, p.MsgError), max(0.0, deadline - loop.time()), what
            )
            if isinstance(reply, p.MsgError):
                self._see(o.DeviceError(reply, p.MsgType.CMD_OTA_MANIFEST))
            else:
                assert isinstance(reply, p.MsgOtaStatus)
                self._see(o.ManifestAccepted(reply))

    async def _health_check(self) -> None:
        """The user's health check of the new image on trial, with the link released (the
        device advertises again, so the check may connect to it), bounded by its timeout.
        Any exception from it is a failed check, not the engine's."""
        check = self.settings.health_check
        info = self.record.info
        assert check is not None and info is not None
        await self._close_link()
        timeout = self.settings.health_check_timeout_s
        try:
            async with asyncio.timeout(timeout):
                healthy = bool(await check(info))
            why = "" if healthy else "the check said the device is not healthy"
        except TimeoutError:
            healthy, why = False, f"it did not finish within {timeout:g} s"
        except HealthCheckFailed as exc:
            healthy, why = False, str(exc) or "no reason given"
        except Exception as exc:  # the user's code: whatever it raises is its "no"
            healthy, why = False, f"it raised {type(exc).__name__}: {exc}"
        self._see(o.HealthChecked(healthy, why))

    async def _confirm(self) -> None:
        """CMD_OTA_CONFIRM: the device keeps the new image (and raises its security
        counter) before it answers with INFO."""
        info = await self._request(p.CmdOtaConfirm(), p.MsgInfo)
        self.result.info_after = info
        self._see(o.ConfirmReply(info))

    async def _start(self) -> None:
        """START: a new session (erase first, unless progressive), or the same one again,
        which the device answers with READY at once (how a resume gets its chunk size and
        window)."""
        link = self._require_link()
        chunk = host_chunk(min(self.settings.chunk_size, link.max_data_chunk))
        flags = self.record.start_flags
        await link.send(p.CmdOtaStart(self.image.size, self.record.image.crc32, chunk, flags))
        self._see(o.StartSent(flags))

    async def _wait_ready(self) -> None:
        """Erase progress until READY, within the silence :class:`~.timeouts.SilenceWatch`
        allows."""
        link = self._require_link()
        loop = asyncio.get_running_loop()
        watch = SilenceWatch(self.settings.erase_silence_timeout_s, loop.time())
        while self.state is State.WAITING_READY:
            try:
                msg = await link.receive(max(0.0, watch.deadline - loop.time()))
            except ResponseTimeout:
                what = "MSG_OTA_READY or erase progress after CMD_OTA_START"
                raise link.no_reply(what, watch.timeout_s) from None
            if isinstance(msg, p.MsgOtaProgress) and msg.phase == p.OtaPhase.ERASE:
                watch.progress(msg.done, loop.time())
                self._on_progress("erase", msg.done, msg.total)
                self._see(o.EraseProgress(msg.done, msg.total))
            elif isinstance(msg, p.MsgOtaReady):
                self._ready = msg
                self._see(o.Ready(msg))
            elif isinstance(msg, p.MsgError):
                self._see(o.DeviceError(msg, p.MsgType.CMD_OTA_START))

    async def _stabilise(self) -> None:
        await asyncio.sleep(self.settings.stabilise_s)
        self._see(o.Stabilised())

    async def _transfer(self) -> None:
        """DATA as the credit allows, waiting as :class:`~.window.Transfer` says."""
        link = self._require_link()
        assert self._ready is not None
        s = self.settings
        data = self.image.data
        size = len(data)
        loop = asyncio.get_running_loop()
        window = CreditWindow(
            size,
            host_chunk(min(self._ready.max_chunk, link.max_data_chunk)),
            self._ready.window,
            start=self.record.resume_offset,
        )
        waits = TransferWaits(s.ack_timeout_s, s.refusal_probe_s, s.reply_timeout_s)
        transfer = Transfer(window, waits, loop.time())
        self._on_progress("transfer", window.acked, size)
        while not window.complete:
            while (span := transfer.next_span(loop.time())) is not None:
                start, end = span
                await link.send_frame(p.encode_data_frame(start, data[start:end]))
                transfer.sent_span(end, loop.time())
                self._count_sent(start, end)
            now = loop.time()
            until, why = transfer.wake(now)
            try:
                msg = await link.receive(max(0.0, until - now))
            except ResponseTimeout:
                if transfer.woke(why) is Wake.PAUSE_OVER:
                    continue
                if why is Wake.STATUS_OVERDUE:
                    what = "MSG_OTA_STATUS reply to CMD_OTA_STATUS"
                    raise link.no_reply(what, waits.reply_s) from None
                self._see(o.AckTimeout(window.in_flight, transfer.ack_wait_s))
                if self.state is not State.TRANSFERRING:
                    return
                await link.send(p.CmdOtaStatus())  # P6: answered with STATUS, then an ACK
                transfer.status_asked(loop.time())
                continue
            if isinstance(msg, p.MsgOtaAck):
                if transfer.on_ack(msg.next_expected_offset, loop.time()):
                    self._see(o.Acked(msg.next_expected_offset))
                    self._on_progress("transfer", window.acked, size)
            elif isinstance(msg, p.MsgOtaStatus):
                if msg.state != p.OtaState.RECEIVING:
                    self._see(o.Desync(msg))
                    return
                offset = msg.next_expected_offset
                seen = transfer.on_status(offset, loop.time())
                self._see(o.Rewound(offset, seen.back, refused=seen.refused))
                if self.state is not State.TRANSFERRING:
                    return
                if seen.credited is not None:
                    self._see(o.Acked(seen.credited))
            elif isinstance(msg, p.MsgError):
                self._see(o.DeviceError(msg, p.MsgType.CMD_OTA_DATA))
                if self.state is not State.TRANSFERRING:
                    return
        self._on_progress("transfer", size, size)
        self._see(o.AllAcked())

    async def _finish(self) -> None:
        link = self._require_link()
        if self.record.finish_owed:
            await link.send(p.CmdOtaFinish())
            self._see(o.FinishSent())
        loop = asyncio.get_running_loop()
        timeout = self.settings.verify_timeout_s
        deadline = loop.time() + timeout
        while self.state is State.FINISHING:
            try:
                msg = await link.receive(max(0.0, deadline - loop.time()))
            except ResponseTimeout:
                raise link.no_reply("MSG_OTA_DONE reply to CMD_OTA_FINISH", timeout) from None
            if isinstance(msg, p.MsgOtaDone):
                self._see(o.Done(msg.crc32))
            elif isinstance(msg, p.MsgError):
                self._see(o.DeviceError(msg, p.MsgType.CMD_OTA_FINISH))

    async def _await_reset(self) -> None:
        """REBOOTING: the device said it resets (DONE, or STATUS COMPLETE); wait for the
        link to end, bounded by the device's DONE→disconnect obligation with a margin."""
        link = self._link
        timeout = self.settings.reset_timeout_s
        if link is not None:
            try:
                async with asyncio.timeout(timeout):
                    await link.lost.wait()
            except TimeoutError:
                await self._close_link()
                self._see(o.ResetNotSeen(timeout))
                return
        await self._close_link()
        self._see(o.DeviceReset())

    async def _recover(self) -> None:
        await self._close_link()
        self._see(o.FailedLinkClosed())
        if self.state is State.RECOVERING:
            await asyncio.sleep(self.record.backoff_s)
            self._see(o.BackedOff())

    # --- helpers -----------------------------------------------------------------------

    def _link_event(self, kind: LinkEvent, detail: str) -> None:
        event = EventKind(kind.value)
        # The drop DONE announced is the device's reset, not a failure; but a link this
        # engine closes itself (_close_link lets go of it first: no reset was seen) is not.
        ours = self._link is None
        if event is EventKind.LINK_LOST and self.state is State.REBOOTING and not ours:
            event = EventKind.DEVICE_RESET
        if event is EventKind.CONNECT_ATTEMPT_FAILED:
            self.result.failed_connect_attempts += 1
        self._event(event, detail)

    def _require_link(self) -> NusLink:
        if self._link is None:
            raise LinkLost("not connected")
        return self._link

    async def _request(self, cmd: p.Command, expect: type[_Reply]) -> _Reply:
        """INFO, STATUS or ABORT, which a device answers in every state (never MSG_ERROR)."""
        reply = await self._require_link().request(cmd, (expect,), self.settings.reply_timeout_s)
        assert isinstance(reply, expect)
        return reply

    def _count_sent(self, start: int, end: int) -> None:
        self.result.bytes_sent += end - start
        if start < self._high_water:
            self.result.bytes_resent += min(end, self._high_water) - start
        self._high_water = max(self._high_water, end)

    async def _close_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

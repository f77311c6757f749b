"""The real Linux Bluetooth stack: the field failure for real, and our emulated bluetoothd
compared with the real one.

Needs ``/dev/vhci`` and a running bluetoothd, so it runs in .ci/run's VM stage
(``python -m smartball_sim.machines.vm -- pytest ... tests/system/test_real_bluez.py``) and on a
developer's machine as root; elsewhere it skips. Each test gets its own virtual controller (a new
``hciN``) with its own simulated SmartBall, at an address no other test uses, so neither
a GATT cache nor a fault plan leaks between tests.

The differential tests run one scenario against real bluetoothd and the same scenario
against the emulator (sim/smartball_sim/bluez, on a private bus), each recording what
org.bluez says on D-Bus, and compare the two recordings phase by phase: what the engine
and the tests rely on must be the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import (
    BleBackend,
    ConnectFailed,
    LinkEvent,
    LinkSettings,
    NusLink,
    find_device,
)
from pytest_smartball.ota import EventKind, Limits, OtaEngine, OtaSettings
from tests.naive_client import naive_flash

BLUEZ = "org.bluez"


def _real_stack_missing() -> str | None:
    if not os.path.exists("/dev/vhci"):
        return "needs /dev/vhci and bluetoothd: runs in .ci/run's VM stage"
    try:
        import bumble  # noqa: F401
    except ImportError:
        return "needs bumble (pip install bumble)"
    if shutil.which("busctl") is not None:
        owner = subprocess.run(
            ["busctl", "--system", "status", BLUEZ], capture_output=True, check=False
        )
        if owner.returncode != 0:
            return "needs a running bluetoothd on the system bus"
    return None


# No module-wide asyncio mark: the differential tests are plain functions (each stack runs
# its own event loop inside a module fixture); each async test carries its own.
pytestmark = [
    pytest.mark.looptime(False),  # a real kernel and daemon: real time
    pytest.mark.skipif(_real_stack_missing() is not None, reason=str(_real_stack_missing())),
    pytest.mark.timeout(300),
]

IMAGE = FirmwareImage(random.Random(5).randbytes(16_000), "real-bluez-16000.bin")
DEVICE1 = "org.bluez.Device1"
ADAPTER1 = "org.bluez.Adapter1"
CHAR1 = "org.bluez.GattCharacteristic1"
_next_address = iter(f"C0:FF:EE:00:01:{n:02X}" for n in range(1, 255))


@dataclass
class Stack:
    """One BlueZ (real or emulated) with one simulated SmartBall behind it."""

    kind: str
    adapter: str
    address: str
    call: Callable[..., Any]
    device: Any

    @property
    def adapter_path(self) -> str:
        return f"/org/bluez/{self.adapter}"

    @property
    def device_path(self) -> str:
        return f"{self.adapter_path}/dev_{self.address.replace(':', '_')}"

    @property
    def backend(self) -> BleBackend:
        return BleBackend(adapter=self.adapter)


@contextlib.contextmanager
def real_stack(faults: str | None = None) -> Iterator[Stack]:
    from smartball_sim.bluez.launcher import emulated_smartball
    from smartball_sim.machines.vhci import VirtualRadio

    address = next(_next_address)
    with VirtualRadio([emulated_smartball(address=address, faults=faults)]) as radio:
        yield Stack("real", radio.adapter, address, radio.call, radio.device)


@contextlib.contextmanager
def emulated_stack(faults: str | None = None, timing: Any = None) -> Iterator[Stack]:
    from smartball_sim.bluez.launcher import EmulatedBluez, emulated_smartball

    address = next(_next_address)
    devices = [emulated_smartball(address=address, faults=faults)]
    with EmulatedBluez(devices, timing=timing) as bluez:
        yield Stack("emulated", bluez.adapter, address, bluez.call, bluez.device)


def fault_log(stack: Stack) -> list[tuple[str, str]]:
    return stack.call(lambda: [(r.fault, r.trigger) for r in stack.device.fault_log])


# --- the field failure, for real ---------------------------------------------------------


@pytest.mark.asyncio
async def test_the_field_failure_through_real_bluetoothd_and_the_engine_finishes() -> None:
    """The original script under a drop in the erase: the kernel reports the lost link
    (HCI 0x08), bluetoothd sets ServicesResolved and Connected false, bleak clears its
    services, and the keepalive raises the field's exact error. The robust engine then
    finishes under the same plan."""
    with real_stack() as stack:
        stack.call(stack.device.set_faults, "drop@erase:50%")
        with pytest.raises(BleakError, match="Service Discovery has not been performed yet"):
            await naive_flash(stack.backend, stack.address, IMAGE.data)
        assert ("drop", "erase:50%") in fault_log(stack)
        assert stack.call(lambda: stack.device.firmware.active.crc32) != IMAGE.crc32

        stack.call(stack.device.reboot)  # the naive session dies with it; erase again
        stack.call(stack.device.set_faults, "drop@erase:50%")
        result = await OtaEngine(IMAGE, stack.backend, address=stack.address).run()
        assert result.success, result.error
        assert result.reconnects >= 1 and result.restarts == 0
        assert ("drop", "erase:50%") in fault_log(stack)
        assert stack.call(lambda: stack.device.firmware.active.crc32) == IMAGE.crc32


@pytest.mark.asyncio
async def test_race_for_real_is_a_link_lost_during_service_discovery() -> None:
    """bluetoothd >= 5.55 does not say ServicesResolved before the objects exist; what a
    host meets instead is a link lost while it discovers. The connect fails, and the
    engine connects again and finishes."""
    lost_at_discovery = "link lost at bluetoothd's first discovery request"
    with real_stack(faults="race:0.1s") as stack:
        device = (await find_device(stack.backend, address=stack.address, timeout=30)).ble_device
        with pytest.raises(ConnectFailed) as lost:
            await NusLink.open(device, stack.backend, LinkSettings(connect_attempts=1))
        assert "disconnected" in str(lost.value), lost.value
        assert [d for f, _, d in _fault_details(stack) if d == lost_at_discovery]

        stack.call(stack.device.set_faults, "race:0.1s")
        result = await OtaEngine(IMAGE, stack.backend, address=stack.address).run()
        assert result.success, result.error
        assert len([d for f, _, d in _fault_details(stack) if d == lost_at_discovery]) == 2


@pytest.mark.asyncio
async def test_a_database_changed_without_service_changed_is_read_again_on_the_next_connect() -> (
    None
):
    """A SmartBall whose GATT database changed without a Service Changed indication (one
    connection without NUS, as a bootloader's, then NUS back). bluetoothd 5.66 keeps the
    objects it found but reads the primary services again on every connection, and the
    link connects without bleak's service cache (which would hand the NUS-less collection
    to the next connect once more): the link's second connect finds NUS. No cache clear
    is needed, unlike the simulator's stale-cache, which lasts until RemoveDevice."""
    events: list[tuple[LinkEvent, str]] = []
    with real_stack(faults="stale-cache") as stack:
        device = (await find_device(stack.backend, address=stack.address, timeout=30)).ble_device
        link = await NusLink.open(
            device, stack.backend, LinkSettings(), on_event=lambda *e: events.append(e)
        )
        try:
            info = await link.request(p.CmdInfo(), (p.MsgInfo,))
            assert isinstance(info, p.MsgInfo)
        finally:
            await link.close()
        details = [d for f, _, d in _fault_details(stack) if f == "stale-cache"]
    missing = [d for kind, d in events if kind is LinkEvent.SERVICES_MISSING]
    assert missing == ["GATT database has no Nordic UART Service (attempt 1/3)"], events
    # the device's own records (fired, applied) come first, then the peripheral's
    assert details[-2:] == [
        "this connection's GATT database has no NUS",
        "NUS is back, and no Service Changed says so",
    ], details


@pytest.mark.asyncio
async def test_the_engine_finishes_when_the_database_changes_during_the_update() -> None:
    """The database changes under a reconnect (a drop half-way, then a connection without
    NUS, then NUS back without Service Changed), with a budget of one attempt without
    progress: the link's own reconnect (services_attempts) sees NUS again, because
    bluetoothd reads the services again on every connection, and the update resumes. The
    engine forgets nothing: on bluetoothd 5.66 the cache is not what is stale."""
    with real_stack(faults="drop@offset:8000,stale-cache@connect:2") as stack:
        settings = OtaSettings(limits=Limits(max_attempts_without_progress=1))
        result = await OtaEngine(
            IMAGE, stack.backend, address=stack.address, settings=settings
        ).run()
        fired = [(f, t) for f, t, _ in _fault_details(stack)]
    assert result.success, result.error
    assert result.reconnects == 1 and result.restarts == 0, result
    kinds = [e.kind for e in result.events]
    assert kinds.count(EventKind.SERVICES_MISSING) == 1, result.events
    assert EventKind.CACHE_CLEARED not in kinds
    assert ("drop", "offset:8000") in fired and ("stale-cache", "connect:2") in fired, fired


def _fault_details(stack: Stack) -> list[tuple[str, str, str]]:
    return stack.call(lambda: [(r.fault, r.trigger, r.detail) for r in stack.device.fault_log])


async def _write_size(stack: Stack) -> tuple[int, int]:
    """Connect with bleak on this event loop: the RX characteristic's write size, and the
    ATT MTU once acquired (AcquireWrite)."""
    device = await BleakScanner.find_device_by_address(
        stack.address, timeout=30, bluez={"adapter": stack.adapter}
    )
    assert device is not None
    async with BleakClient(device) as client:
        rx = client.services.get_characteristic(p.NUS_RX_UUID)
        assert rx is not None
        await client._backend._acquire_mtu()  # type: ignore[attr-defined]
        return rx.max_write_without_response_size, client.mtu_size


def test_bleak_on_a_new_event_loop_reports_a_write_size_of_20() -> None:
    """bluetoothd 5.66 exports a characteristic's MTU only while connected and signals
    neither its going nor its return. bleak builds a manager per event loop from
    GetManagedObjects and then follows signals only: a loop that first meets the device
    disconnected (after preflight's connect, or a test before) never learns the MTU and
    reports 23 - 3 = 20 bytes per write for the whole loop, although the link runs at
    MTU 247. A client that sizes its writes by it sends 20-byte writes."""
    with real_stack() as stack:
        first = asyncio.run(_write_size(stack))
        second = asyncio.run(_write_size(stack))
    assert first == (244, 247)
    assert second == (20, 247)


async def _link_write_size(stack: Stack) -> tuple[int, int]:
    """Open the link on this event loop: what bleak says a write may carry, and what the
    link writes."""
    device = (await find_device(stack.backend, address=stack.address, timeout=30)).ble_device
    async with await NusLink.open(device, stack.backend, LinkSettings()) as link:
        assert link._rx is not None
        return link._rx.max_write_without_response_size, link.max_write


def test_the_link_writes_mtu_minus_3_on_every_event_loop() -> None:
    """Whatever bleak's characteristic says (244, then 20 on a loop that met the device
    disconnected), the link acquires the MTU (bleak's _acquire_mtu) and writes 244 bytes:
    232 image bytes per DATA frame instead of 8."""
    with real_stack() as stack:
        first = asyncio.run(_link_write_size(stack))
        second = asyncio.run(_link_write_size(stack))
    assert first == (244, 244)
    assert second == (20, 244)


# --- recording what org.bluez says ----------------------------------------------------------

Event = tuple[str, Any]


@dataclass
class Recorder:
    """Signals of org.bluez about one device and its GATT objects, normalised:
    ``("Connected", True)``, ``("ServicesResolved", False)``, ``("added", "service000a")``,
    ``("removed", "")`` (the device itself), ``("MTU", ("service000a/char000b", 247))``
    (``None``: the property went away)."""

    stack: Stack
    bus: MessageBus | None = None
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Recorder:
        self.bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
        self.bus.add_message_handler(self._on_message)
        await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[f"type='signal',sender='{BLUEZ}'"],
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.bus is not None:
            self.bus.disconnect()

    def _rel(self, path: str) -> str | None:
        base = self.stack.device_path
        if path == base:
            return ""
        if path.startswith(base + "/"):
            return path[len(base) + 1 :]
        return None

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member in ("InterfacesAdded", "InterfacesRemoved"):
            rel = self._rel(msg.body[0])
            if rel is not None:
                kind = "added" if msg.member == "InterfacesAdded" else "removed"
                self.events.append((kind, rel))
        elif msg.member == "PropertiesChanged":
            rel = self._rel(msg.path or "")
            interface, changed, invalidated = msg.body
            if rel == "" and interface == DEVICE1:
                for name in ("ServicesResolved", "Connected"):
                    if name in changed:
                        self.events.append((name, bool(changed[name].value)))
            elif rel and interface == CHAR1:
                if "MTU" in changed:
                    self.events.append(("MTU", (rel, changed["MTU"].value)))
                if "MTU" in invalidated:
                    self.events.append(("MTU", (rel, None)))
        self.changed.set()

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    async def until(self, event: Event, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while event not in self.events:
                self.changed.clear()
                await self.changed.wait()

    async def settle(self, quiet_s: float = 1.0, timeout: float = 30.0) -> None:
        """Wait until nothing was said for ``quiet_s`` (late signals of a phase)."""
        async with asyncio.timeout(timeout):
            while True:
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), quiet_s)
                except TimeoutError:
                    return

    async def call(
        self, path: str, interface: str, member: str, signature: str = "", body: Any = ()
    ) -> Message:
        assert self.bus is not None
        return await self.bus.call(
            Message(
                destination=BLUEZ,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )

    async def objects(self) -> dict[str, dict[str, Any]]:
        """The device's GATT objects now: relative path -> characteristic/service props."""
        reply = await self.call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
        found: dict[str, dict[str, Any]] = {}
        for path, interfaces in reply.body[0].items():
            rel = self._rel(path)
            if rel:
                props = next(v for k, v in interfaces.items() if k.startswith("org.bluez."))
                found[rel] = {k: v.value for k, v in props.items() if k in ("UUID", "MTU")}
        return found


async def discover(stack: Stack) -> None:
    device = await BleakScanner.find_device_by_address(
        stack.address, timeout=30, bluez={"adapter": stack.adapter}
    )
    assert device is not None, f"{stack.kind}: {stack.address} not found"


async def lifecycle(stack: Stack) -> dict[str, Any]:
    """Connect (cold cache), the device drops the link, reconnect (warm), the host
    disconnects, RemoveDevice: each phase's signals, and the objects between phases."""
    phases: dict[str, Any] = {}
    await discover(stack)
    async with Recorder(stack) as rec:
        await rec.settle(0.5)
        rec.take()
        reply = await rec.call(stack.device_path, DEVICE1, "Connect")
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        await rec.until(("ServicesResolved", True))
        await rec.settle()
        phases["connect"] = rec.take()
        phases["objects connected"] = await rec.objects()

        stack.call(stack.device.disconnect, "link dropped (fault)")
        await rec.until(("Connected", False))
        await rec.settle()
        phases["device drops the link"] = rec.take()
        phases["objects after the drop"] = await rec.objects()

        reply = await rec.call(stack.device_path, DEVICE1, "Connect")
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        await rec.until(("ServicesResolved", True))
        await rec.settle()
        phases["reconnect"] = rec.take()
        phases["objects reconnected"] = await rec.objects()

        await rec.call(stack.device_path, DEVICE1, "Disconnect")
        await rec.until(("Connected", False))
        await rec.settle()
        phases["host disconnects"] = rec.take()

        reply = await rec.call(
            stack.adapter_path, ADAPTER1, "RemoveDevice", "o", [stack.device_path]
        )
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        await rec.until(("removed", ""))
        await rec.settle()
        phases["RemoveDevice"] = rec.take()
    return phases


@pytest.fixture(scope="module")
def lifecycles() -> dict[str, dict[str, Any]]:
    """The scenario once against each stack (real first: the emulator's launcher points
    the process's system bus at its private daemon while it runs)."""
    with real_stack() as real:
        real_phases = asyncio.run(lifecycle(real))
    with emulated_stack() as emulated:
        emulated_phases = asyncio.run(lifecycle(emulated))
    return {"real": real_phases, "emulated": emulated_phases}


PHASES = [
    "connect",
    "objects connected",
    "device drops the link",
    "objects after the drop",
    "reconnect",
    "objects reconnected",
    "host disconnects",
    "RemoveDevice",
]


@pytest.mark.parametrize("phase", PHASES)
def test_the_emulator_says_what_bluetoothd_says(
    lifecycles: dict[str, dict[str, Any]], phase: str
) -> None:
    real, emulated = lifecycles["real"][phase], lifecycles["emulated"][phase]
    assert emulated == real, f"{phase}: real bluetoothd {real}, emulator {emulated}"


def test_services_resolved_comes_after_every_gatt_object(
    lifecycles: dict[str, dict[str, Any]],
) -> None:
    """What bleak's connect() relies on (BlueZ >= 5.55): once ServicesResolved is true,
    the objects it will read exist."""
    for kind, phases in lifecycles.items():
        events = phases["connect"]
        resolved = events.index(("ServicesResolved", True))
        assert all(i < resolved for i, e in enumerate(events) if e[0] == "added"), (kind, events)
        assert events[0] == ("Connected", True), (kind, events)


# --- acquired fds, the MTU, write errors -----------------------------------------------------


async def acquire_and_write(stack: Stack) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    rx = f"{stack.device_path}/service000a/char000b"
    tx = f"{stack.device_path}/service000a/char000d"
    await discover(stack)
    async with Recorder(stack) as rec:
        await rec.call(stack.device_path, DEVICE1, "Connect")
        await rec.until(("ServicesResolved", True))

        def outcome(reply: Message) -> Any:
            if reply.message_type == MessageType.ERROR:
                return ("error", reply.error_name, reply.body[0] if reply.body else "")
            return ("ok", reply.body[1:] if reply.body else [])

        first = await rec.call(rx, CHAR1, "AcquireWrite", "a{sv}", [{}])
        seen["AcquireWrite"] = outcome(first)
        seen["AcquireWrite again while held"] = outcome(
            await rec.call(rx, CHAR1, "AcquireWrite", "a{sv}", [{}])
        )
        for fd in first.unix_fds:
            os.close(fd)
        await asyncio.sleep(1.0)  # the daemon sees the hang-up
        notify = await rec.call(tx, CHAR1, "AcquireNotify", "a{sv}", [{}])
        seen["AcquireNotify"] = outcome(notify)
        seen["StartNotify while acquired"] = outcome(await rec.call(tx, CHAR1, "StartNotify"))
        for fd in notify.unix_fds:
            os.close(fd)
        await asyncio.sleep(1.0)
        command = {"type": Variant("s", "command")}
        seen["write command of MTU - 3"] = outcome(
            await rec.call(rx, CHAR1, "WriteValue", "aya{sv}", [p.encode(p.CmdInfo()), command])
        )
        seen["write command over MTU - 3"] = outcome(
            await rec.call(rx, CHAR1, "WriteValue", "aya{sv}", [bytes(245), command])
        )
        await rec.call(stack.device_path, DEVICE1, "Disconnect")
        await rec.until(("Connected", False))
    return seen


@pytest.fixture(scope="module")
def acquisitions() -> dict[str, dict[str, Any]]:
    with real_stack() as real:
        real_seen = asyncio.run(acquire_and_write(real))
    with emulated_stack() as emulated:
        emulated_seen = asyncio.run(acquire_and_write(emulated))
    return {"real": real_seen, "emulated": emulated_seen}


@pytest.mark.parametrize(
    "step",
    [
        "AcquireWrite",
        "AcquireWrite again while held",
        "AcquireNotify",
        "StartNotify while acquired",
        "write command of MTU - 3",
        "write command over MTU - 3",
    ],
)
def test_acquired_fds_mtu_and_write_errors_match(
    acquisitions: dict[str, dict[str, Any]], step: str
) -> None:
    real, emulated = acquisitions["real"][step], acquisitions["emulated"][step]
    assert emulated == real, f"{step}: real bluetoothd {real}, emulator {emulated}"


# --- a connect that cannot succeed -------------------------------------------------------------


async def connect_to_a_silent_device(stack: Stack) -> tuple[str, str, float]:
    """Device1.Connect to a known device that has stopped advertising: the error name and
    text bluetoothd answers (bleak-retry-connector classifies by them), and after how long."""
    await discover(stack)
    stack.call(stack.device.pause_advertising, 600.0)
    loop = asyncio.get_running_loop()
    async with Recorder(stack) as rec:
        started = loop.time()
        async with asyncio.timeout(120):
            reply = await rec.call(stack.device_path, DEVICE1, "Connect")
        took = loop.time() - started
    assert reply.message_type == MessageType.ERROR, f"{stack.kind}: connected to a silent device"
    print(f"{stack.kind}: Connect to a silent device failed after {took:.1f} s")
    return reply.error_name or "", reply.body[0] if reply.body else "", took


@pytest.fixture(scope="module")
def silent_connects() -> dict[str, tuple[str, str, float] | str]:
    from smartball_sim.bluez.records import EmulatorTiming

    results: dict[str, tuple[str, str, float] | str] = {}
    with real_stack() as real:
        results["real"] = asyncio.run(connect_to_a_silent_device(real))
    # The emulator's 40 s is checked against the real time below; here it waits 2 s.
    with emulated_stack(timing=EmulatorTiming(le_connect_timeout_s=2.0)) as emulated:
        try:
            results["emulated"] = asyncio.run(connect_to_a_silent_device(emulated))
        except TimeoutError:
            results["emulated"] = "no answer within 120 s"
    return results


def test_a_connect_to_a_silent_device_fails_the_same_way(
    silent_connects: dict[str, tuple[str, str, float] | str],
) -> None:
    from smartball_sim.bluez.records import EmulatorTiming

    real, emulated = silent_connects["real"], silent_connects["emulated"]
    assert isinstance(real, tuple)
    assert isinstance(emulated, tuple), f"real bluetoothd {real}, emulator {emulated}"
    assert emulated[:2] == real[:2], f"real bluetoothd {real}, emulator {emulated}"
    # The emulator's own timeout is the kernel's (L2CAP_CONN_TIMEOUT) as measured here.
    assert abs(EmulatorTiming().le_connect_timeout_s - real[2]) < 0.25 * real[2], real

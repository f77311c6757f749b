"""The real BlueZ code path against the emulated BlueZ (sim/smartball_sim/bluez): unmodified
bleak, its BlueZ backend, bleak-retry-connector, dbus-fast and a real dbus-daemon, with only
bluetoothd replaced. Real time (D-Bus is real), with short simulated timings.

Each test gets its own private dbus-daemon and emulator (about 50 ms to start), so fault
plans and GATT caches never leak between tests.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import warnings
from collections.abc import Iterator

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from pytest_smartball.bluez import probe_adapter, remove_device
from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.link import BleBackend, ConnectFailed, NusLink, find_device
from pytest_smartball.ota import Limits, OtaEngine, OtaSettings
from pytest_smartball.targets import FAST_LINK, FAST_OTA
from smartball_sim.bluez.launcher import EmulatedBluez, emulated_smartball, leftover_daemons
from tests.naive_client import naive_flash

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.looptime(False),  # real sockets, a real daemon: real time
    pytest.mark.skipif(
        shutil.which("dbus-daemon") is None,
        reason="needs dbus-daemon (apt-get install -y dbus-daemon); .ci/run installs it",
    ),
]

ADDRESS = "C0:FF:EE:00:00:01"
DEV_PATH = "/org/bluez/hci0/dev_C0_FF_EE_00_00_01"
IMAGE = FirmwareImage(random.Random(5).randbytes(16_000), "emulated-16000.bin")
FAST = FAST_OTA
BACKEND = BleBackend(adapter="hci0")


@pytest.fixture
def bluez() -> Iterator[EmulatedBluez]:
    with EmulatedBluez([emulated_smartball(address=ADDRESS)]) as emulated:
        yield emulated


def fault_log(bluez: EmulatedBluez) -> list[tuple[str, str, str]]:
    return bluez.call(lambda: [(r.fault, r.trigger, r.detail) for r in bluez.device.fault_log])


async def managed_objects() -> dict[str, dict]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path="/",
                interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects",
            )
        )
    finally:
        bus.disconnect()
    assert reply.message_type == MessageType.METHOD_RETURN
    return reply.body[0]


def emulator_calls(bluez: EmulatedBluez) -> list[tuple[str, str, str]]:
    """Every D-Bus call the emulated bluetoothd answered: (interface, member, object path)."""
    assert bluez.emulator is not None, "the emulated BlueZ is not running"
    return list(bluez.emulator.calls)


async def test_launcher_points_the_system_bus_and_bluetoothctl_at_the_emulator(
    bluez: EmulatedBluez,
) -> None:
    assert os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == bluez.bus.address
    out = await asyncio.to_thread(
        subprocess.run, ["bluetoothctl", "--version"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "5.72"
    adapter = await probe_adapter("hci0")  # the plugin's real-device preflight
    assert adapter.powered and adapter.path == "/org/bluez/hci0"
    assert await BACKEND.platform_warnings() == []  # BlueZ version check, for real


async def test_an_old_bluez_version_is_reported() -> None:
    with EmulatedBluez([emulated_smartball()], bluez_version="5.50"):
        found = await BACKEND.platform_warnings()
    assert any("5.50" in w and "ServicesResolved" in w for w in found), found


async def test_nothing_is_left_running_and_the_environment_is_restored() -> None:
    before = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    bluez = EmulatedBluez([emulated_smartball()]).start()
    pid = bluez.daemon_pid
    assert pid is not None and os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == bluez.bus.address
    tmp = bluez.bus.dir
    bluez.stop()
    bluez.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") == before
    assert tmp is not None and not tmp.exists()
    assert pid not in leftover_daemons()


async def test_scan_connect_and_mtu_the_bluez_way(bluez: EmulatedBluez) -> None:
    device = (await find_device(BACKEND, name="SmartBall", timeout=5)).ble_device
    assert device.details["path"] == DEV_PATH  # a real BlueZ BLEDevice
    link = await NusLink.open(device, BACKEND, FAST_LINK)
    try:
        # The link acquired the MTU (bleak's _acquire_mtu: AcquireWrite, fd closed at once)
        # and writes MTU - 3 bytes; bleak on BlueZ reports 23 until then.
        assert link.max_write == 244
        client = link._client
        assert client is not None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "Using default MTU value"
            assert client.mtu_size == 247
        info = await link.request(p.CmdInfo(), (p.MsgInfo,))
        assert isinstance(info, p.MsgInfo) and info.protocol_version == p.PROTOCOL_VERSION
    finally:
        await link.close()
    calls = {member for _, member, _ in emulator_calls(bluez)}
    assert {"GetManagedObjects", "StartDiscovery", "Connect", "StartNotify"} <= calls
    assert {"WriteValue", "AcquireWrite", "Disconnect"} <= calls


async def test_the_link_writes_mtu_minus_3_on_an_event_loop_that_met_the_device_disconnected(
    bluez: EmulatedBluez,
) -> None:
    """bluetoothd exports a characteristic's MTU only while connected and signals neither
    its going nor its return (as 5.66 does, docs/faults.md "Real BlueZ"); bleak's manager on
    a new event loop reads the objects while the device is disconnected, so its write size
    is 20 for that loop. The link acquires the MTU and writes 244 bytes all the same."""
    device = (await find_device(BACKEND, address=ADDRESS, timeout=5)).ble_device
    async with await NusLink.open(device, BACKEND, FAST_LINK):
        pass  # the device is known, its objects stay exported, without MTU once closed

    async def on_a_new_loop() -> tuple[int, int]:
        device = (await find_device(BACKEND, address=ADDRESS, timeout=5)).ble_device
        async with await NusLink.open(device, BACKEND, FAST_LINK) as link:
            assert link._rx is not None
            return link._rx.max_write_without_response_size, link.max_write

    bleak_says, link_writes = await asyncio.to_thread(asyncio.run, on_a_new_loop())
    assert (bleak_says, link_writes) == (20, 244)


async def test_acquire_notify_path(bluez: EmulatedBluez) -> None:
    device = await BleakScanner.find_device_by_address(ADDRESS, timeout=5)
    assert device is not None
    got: asyncio.Queue[p.Frame] = asyncio.Queue()
    decoder = p.FrameDecoder()

    def on_notify(_characteristic: object, data: bytearray) -> None:
        for frame in decoder.feed(bytes(data)):
            got.put_nowait(frame)

    async with BleakClient(device) as client:
        await client.start_notify(
            p.NUS_TX_UUID,
            on_notify,
            bluez={"use_start_notify": False},
        )
        await client.write_gatt_char(p.NUS_RX_UUID, p.encode(p.CmdInfo()), response=False)
        frame = await asyncio.wait_for(got.get(), 5)
        assert isinstance(p.parse_message(frame), p.MsgInfo)
    assert ("org.bluez.GattCharacteristic1", "AcquireNotify") in {
        (i, m) for i, m, _ in emulator_calls(bluez)
    }


async def test_full_update_through_bluez(bluez: EmulatedBluez) -> None:
    result = await OtaEngine(IMAGE, BACKEND, address=ADDRESS, settings=FAST).run()
    assert result.success, result.error
    assert result.info_after is not None and result.info_after.active_image_crc32 == IMAGE.crc32
    assert bluez.call(lambda: bluez.device.firmware.active.crc32) == IMAGE.crc32


async def test_field_failure_reproduces_through_bleaks_bluez_backend(
    bluez: EmulatedBluez,
) -> None:
    """The original script, through bleak's own BlueZ backend: the link drops during the
    erase, BlueZ sends ServicesResolved=false, removes the GATT objects and sends
    Connected=false, and the keepalive write raises the field's error."""
    bluez.call(bluez.device.set_faults, "drop@erase:50%")
    with pytest.raises(BleakError, match="Service Discovery has not been performed yet"):
        await naive_flash(BACKEND, ADDRESS, IMAGE.data)
    assert ("drop", "erase:50%", "") in fault_log(bluez)
    assert bluez.call(lambda: bluez.device.firmware.active.crc32) != IMAGE.crc32

    # The robust engine finishes under the same plan, on a device that lost the naive
    # session (a reset), so the erase, and the drop in it, happen again.
    bluez.call(bluez.device.reboot)
    bluez.call(bluez.device.set_faults, "drop@erase:50%")
    result = await OtaEngine(IMAGE, BACKEND, address=ADDRESS, settings=FAST).run()
    assert result.success, result.error
    assert result.reconnects >= 1 and result.restarts == 0
    assert bluez.call(lambda: bluez.device.firmware.active.crc32) == IMAGE.crc32


async def test_drop_mid_transfer_resumes(bluez: EmulatedBluez) -> None:
    bluez.call(bluez.device.set_faults, "drop@offset:8000")
    result = await OtaEngine(IMAGE, BACKEND, address=ADDRESS, settings=FAST).run()
    assert result.success, result.error
    assert result.resumes == 1
    assert ("drop", "offset:8000", "") in fault_log(bluez)


async def test_reboot_mid_transfer_restarts(bluez: EmulatedBluez) -> None:
    bluez.call(bluez.device.set_faults, "reboot@offset:8000")
    result = await OtaEngine(IMAGE, BACKEND, address=ADDRESS, settings=FAST).run()
    assert result.success, result.error
    assert result.restarts == 1


async def test_connect_fail_is_bluez_br_connection_canceled_and_retried(
    bluez: EmulatedBluez,
) -> None:
    bluez.call(bluez.device.set_faults, "connect-fail:2")
    device = (await find_device(BACKEND, address=ADDRESS, timeout=5)).ble_device
    link = await NusLink.open(device, BACKEND, FAST_LINK)
    await link.close()
    applied = [f for f in fault_log(bluez) if f[1] == "applied"]
    assert applied == [("connect-fail", "applied", "br-connection-canceled")] * 2
    connects = [c for c in emulator_calls(bluez) if c[1] == "Connect"]
    assert len(connects) == 3  # bleak-retry-connector took it as transient, twice


async def test_race_services_resolved_before_nus_is_exported(bluez: EmulatedBluez) -> None:
    """ServicesResolved=true comes before the NUS objects: the settle reads the services
    again (bleak's own BlueZ manager) until they are there, on the same connection."""
    bluez.call(bluez.device.set_faults, "race:0.01s")
    events: list[tuple[str, str]] = []
    device = (await find_device(BACKEND, address=ADDRESS, timeout=5)).ble_device
    link = await NusLink.open(
        device, BACKEND, FAST_LINK, on_event=lambda k, d: events.append((k, d))
    )
    try:
        assert link.max_write == 244
    finally:
        await link.close()
    assert not [d for k, d in events if k == "services-missing"]
    assert ("race", "applied") in [(f, t) for f, t, _ in fault_log(bluez)]
    assert len([c for c in emulator_calls(bluez) if c[1] == "Connect"]) == 1


async def test_race_without_reading_the_services_again_reconnects(bluez: EmulatedBluez) -> None:
    """Control for the test above: what the connect resolved lacks NUS, and a client that
    cannot read again has to connect again."""
    bluez.call(bluez.device.set_faults, "race:0.01s")
    events: list[tuple[str, str]] = []

    async def cannot(client: object) -> bool:
        return False

    backend = BleBackend(adapter="hci0", reread=cannot)
    device = (await find_device(backend, address=ADDRESS, timeout=5)).ble_device
    link = await NusLink.open(
        device, backend, FAST_LINK, on_event=lambda k, d: events.append((k, d))
    )
    await link.close()
    missing = [d for k, d in events if k == "services-missing"]
    assert missing and "no Nordic UART Service" in missing[0]


async def test_stale_cache_is_kept_across_reconnects_until_remove_device(
    bluez: EmulatedBluez,
) -> None:
    bluez.call(bluez.device.set_faults, "stale-cache,stale-cache,stale-cache,stale-cache")
    device = (await find_device(BACKEND, address=ADDRESS, timeout=5)).ble_device
    with pytest.raises(ConnectFailed, match="never appeared"):
        await NusLink.open(device, BACKEND, FAST_LINK)
    # Disconnected, and the cached database (no NUS) is still exported.
    objects = await managed_objects()
    assert objects[DEV_PATH]["org.bluez.Device1"]["Connected"].value is False
    cached = [path for path in objects if path.startswith(DEV_PATH + "/")]
    assert f"{DEV_PATH}/service0006" in cached  # the GATT service (GAP has no object)
    assert not any("service000a" in path for path in cached)

    # The engine's cache clear is Adapter1.RemoveDevice (pytest_smartball.bluez).
    result = await OtaEngine(
        IMAGE,
        BACKEND,
        address=ADDRESS,
        settings=OtaSettings(
            link=FAST_LINK,
            stabilise_s=0.05,
            limits=Limits(backoff_base_s=0.05),
            clear_cache=True,
        ),
    ).run()
    assert result.success, result.error
    assert any(e.kind == "cache-cleared" for e in result.events)
    assert ("org.bluez.Adapter1", "RemoveDevice") in {(i, m) for i, m, _ in emulator_calls(bluez)}
    assert any(f == "stale-cache" and "cleared" in d for f, _, d in fault_log(bluez))


async def test_remove_device_of_an_unknown_device() -> None:
    with EmulatedBluez([emulated_smartball()]):
        assert await remove_device("C0:FF:EE:00:00:99") is False


async def test_drop_while_writing_gives_bleak_errors_not_hangs(bluez: EmulatedBluez) -> None:
    device = (await find_device(BACKEND, address=ADDRESS, timeout=5)).ble_device
    dropped = asyncio.Event()
    async with BleakClient(device, disconnected_callback=lambda _c: dropped.set()) as client:
        bluez.call(bluez.device.disconnect, "test drop")
        await asyncio.wait_for(dropped.wait(), 5)
        assert not client.is_connected
        with pytest.raises(BleakError, match="Service Discovery has not been performed yet"):
            await client.write_gatt_char(p.NUS_RX_UUID, b"\x00", response=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objects = await managed_objects()
    # As real bluetoothd does (tests/system/test_real_bluez.py): the GATT objects stay, without MTU.
    rx = objects[f"{DEV_PATH}/service000a/char000b"]["org.bluez.GattCharacteristic1"]
    assert "MTU" not in rx

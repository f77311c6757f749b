"""The simulator's bleak backends, driven through bleak's own front-end and retry connector.

What they imitate of bleak's BlueZ backend is listed in sim/smartball_sim/fronts/in_process.py; the
field's failure (a write after a drop raising "Service Discovery has not been performed
yet") is reproduced here on purpose. All waiting is on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
from bleak_retry_connector import establish_connection

from pytest_smartball.contract import codec as p
from smartball_sim.device import RadioTimings, SimDevice
from smartball_sim.fronts.in_process import SimDetails, SimWorld
from tests.hosts import NusHost

# Virtual time: a 40 s erase costs milliseconds, and timings are exact.
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

ADDRESS = "C0:FF:EE:00:00:01"
SERVICE_DISCOVERY = re.escape("Service Discovery has not been performed yet")
IMAGE = bytes(range(256)) * 4


def make_world(*devices: SimDevice, **kwargs) -> tuple[SimWorld, SimDevice]:
    if not devices:
        kwargs.setdefault("active_image", IMAGE)
        devices = (SimDevice("SmartBall", ADDRESS, **kwargs),)
    return SimWorld(devices), devices[0]


async def find(world: SimWorld, name: str = "SmartBall", timeout: float = 5.0) -> BLEDevice:
    found = await BleakScanner.find_device_by_name(
        name, timeout=timeout, backend=world.scanner_backend
    )
    assert found is not None, f"{name} not found"
    return found


class Host(NusHost):
    """A host on the in-process radio model."""

    def __init__(self, world: SimWorld, device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(world.client_backend, device, **kwargs)


# --- discovery -----------------------------------------------------------------------------


async def test_find_by_name() -> None:
    world, device = make_world()
    found = await find(world)
    assert found.address == ADDRESS
    assert found.name == "SmartBall"
    assert not isinstance(found.details, dict)  # keeps bleak-retry-connector off D-Bus
    assert isinstance(found.details, SimDetails) and found.details.device is device


async def test_find_by_address_case_insensitive() -> None:
    world, _ = make_world()
    found = await BleakScanner.find_device_by_address(
        ADDRESS.lower(), timeout=5, backend=world.scanner_backend
    )
    assert found is not None and found.name == "SmartBall"


async def test_find_unknown_name_returns_none_after_the_timeout() -> None:
    world, _ = make_world()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    found = await BleakScanner.find_device_by_name(
        "NoSuchBall", timeout=7, backend=world.scanner_backend
    )
    assert found is None
    assert loop.time() - t0 == pytest.approx(7, abs=0.01)


async def test_discover_reports_advertisement_data() -> None:
    world, _ = make_world()
    seen = await BleakScanner.discover(timeout=1, return_adv=True, backend=world.scanner_backend)
    assert list(seen) == [ADDRESS]
    _, adv = seen[ADDRESS]
    assert adv.local_name == "SmartBall"
    assert p.NUS_SERVICE_UUID in adv.service_uuids


async def test_several_devices_coexist_and_are_found_separately() -> None:
    devices = [
        SimDevice(f"SmartBall-{i}", f"C0:FF:EE:00:00:0{i}", active_image=IMAGE, seed=i)
        for i in range(1, 4)
    ]
    world, _ = make_world(*devices)
    for i, device in enumerate(devices, start=1):
        by_name = await find(world, f"SmartBall-{i}")
        assert by_name.address == device.address
        assert by_name.details.device is device
        by_address = await BleakScanner.find_device_by_address(
            device.address, timeout=5, backend=world.scanner_backend
        )
        assert by_address is not None and by_address.name == device.name
    # connect to the second: the others keep advertising, the second stops
    host = Host(world, await find(world, "SmartBall-2"))
    await host.open()
    assert [d.advertising for d in devices] == [True, False, True]
    await host.command(p.CmdInfo())
    await asyncio.sleep(0.1)
    assert [type(m) for m in host.messages] == [p.MsgInfo]
    assert devices[1].firmware.commands_seen == {p.MsgType.CMD_INFO: 1}
    assert devices[0].firmware.commands_seen == devices[2].firmware.commands_seen == {}
    seen = await BleakScanner.discover(timeout=1, return_adv=True, backend=world.scanner_backend)
    assert sorted(seen) == [devices[0].address, devices[2].address]
    await host.client.disconnect()


async def test_world_refuses_duplicate_addresses() -> None:
    world = SimWorld([SimDevice("A", ADDRESS, active_image=IMAGE)])
    with pytest.raises(ValueError, match="already exists"):
        world.add(SimDevice("B", ADDRESS.lower(), active_image=IMAGE))


# --- GATT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [23, 247, 517])
async def test_services_expose_nus(mtu: int) -> None:
    world, _ = make_world(mtu=mtu)
    host = Host(world, await find(world))
    with pytest.raises(BleakError, match=SERVICE_DISCOVERY):
        _ = host.client.services  # none before connecting
    await host.client.connect()
    assert host.client.is_connected
    nus = host.client.services.get_service(p.NUS_SERVICE_UUID)
    assert nus is not None
    rx = nus.get_characteristic(p.NUS_RX_UUID)
    tx = nus.get_characteristic(p.NUS_TX_UUID)
    assert rx is not None and tx is not None
    assert "write-without-response" in rx.properties
    assert "notify" in tx.properties
    assert rx.max_write_without_response_size == mtu - 3
    assert host.client.mtu_size == mtu
    await host.client.disconnect()


@pytest.mark.parametrize("mtu", [23, 247])
async def test_notifications_arrive_via_start_notify(mtu: int) -> None:
    world, device = make_world(mtu=mtu)
    host = Host(world, await find(world))
    await host.open()
    await host.command(p.CmdInfo())
    await asyncio.sleep(0.1)
    assert host.messages == [device.firmware.info()]
    # a 22-byte MSG_INFO does not fit one notification at MTU 23: split into MTU-3 pieces
    assert [len(c) for c in host.chunks] == ([20, 2] if mtu == 23 else [22])
    await host.client.stop_notify(p.NUS_TX_UUID)
    await host.command(p.CmdOtaStatus())
    await asyncio.sleep(0.1)
    assert len(host.messages) == 1
    await host.client.disconnect()


async def test_write_longer_than_mtu_minus_3_raises() -> None:
    world, device = make_world(mtu=23)
    host = Host(world, await find(world))
    await host.open()
    with pytest.raises(BleakError, match="exceeds"):
        await host.client.write_gatt_char(p.NUS_RX_UUID, bytes(21), response=False)
    # exactly MTU-3 goes through: a frame split over two writes is reassembled
    frame = p.encode(p.CmdOtaStart(10, 0x8EC580C0, 4)) + p.encode(p.CmdInfo())  # 16 + 6 bytes
    await host.client.write_gatt_char(p.NUS_RX_UUID, frame[:20], response=False)
    await host.client.write_gatt_char(p.NUS_RX_UUID, frame[20:], response=False)
    await asyncio.sleep(0.2)
    # the INFO waits for the one page's erase, which stalls the CPU, and its PROGRESS/READY
    assert [type(m) for m in host.messages] == [p.MsgOtaProgress, p.MsgOtaReady, p.MsgInfo]
    assert device.firmware.state == p.OtaState.RECEIVING
    await host.client.disconnect()


# --- link loss -----------------------------------------------------------------------------


async def test_device_side_drop_then_write_raises_service_discovery_error() -> None:
    world, device = make_world()
    host = Host(world, await find(world))
    await host.open()
    device.disconnect("x")
    await asyncio.sleep(0)  # the "D-Bus signal" is delivered through the loop
    assert host.disconnects == [host.client]
    assert not host.client.is_connected
    # the field error: the next GATT call after an unnoticed drop
    with pytest.raises(BleakError, match=SERVICE_DISCOVERY):
        await host.client.write_gatt_char(p.NUS_RX_UUID, p.encode(p.CmdInfo()), response=False)
    rx = None
    with pytest.raises(BleakError, match=SERVICE_DISCOVERY):
        rx = host.client.services.get_characteristic(p.NUS_RX_UUID)
    assert rx is None
    with pytest.raises(BleakError):
        await host.client.start_notify(p.NUS_TX_UUID, host.on_notify)
    await host.client.disconnect()  # idempotent: no second callback
    await asyncio.sleep(1)
    assert host.disconnects == [host.client]


async def test_notification_and_drop_arrive_in_order() -> None:
    world, device = make_world()
    order: list[str] = []
    messages: list[p.Message] = []
    decoder = p.FrameDecoder()

    def on_notify(_char: object, data: bytearray) -> None:
        order.append("notification")
        messages.extend(p.parse_message(f) for f in decoder.feed(bytes(data)))

    client = BleakClient(
        await find(world),
        backend=world.client_backend,
        disconnected_callback=lambda _client: order.append("disconnected"),
    )
    await client.connect()
    await client.start_notify(p.NUS_TX_UUID, on_notify)
    device.firmware.receive(p.encode(p.CmdInfo()))  # the answer waits for a connection event
    await asyncio.sleep(0.05)  # past it: the answer is on air
    device.disconnect("x")
    device.firmware.receive(p.encode(p.CmdOtaStatus()))  # no link: this answer is lost
    assert order == ["notification"]  # delivered through the loop, like a D-Bus signal
    await asyncio.sleep(1)
    assert order == ["notification", "disconnected"]
    assert messages == [device.firmware.info()]


async def test_an_answer_not_yet_on_air_is_lost_with_the_link() -> None:
    world, device = make_world()
    order: list[str] = []
    client = BleakClient(
        await find(world),
        backend=world.client_backend,
        disconnected_callback=lambda _client: order.append("disconnected"),
    )
    await client.connect()
    await client.start_notify(p.NUS_TX_UUID, lambda _c, _d: order.append("notification"))
    device.firmware.receive(p.encode(p.CmdInfo()))  # queued for the next connection event
    device.disconnect("x")  # the link drops first
    await asyncio.sleep(1)
    assert order == ["disconnected"]


async def test_write_in_flight_at_a_drop_never_reaches_the_device() -> None:
    world, device = make_world()
    host = Host(world, await find(world))
    await host.open()
    await host.command(p.CmdInfo())  # queued for the next connection event
    device.disconnect("x")
    await asyncio.sleep(1)
    assert device.firmware.commands_seen == {}
    assert host.messages == []
    assert len(host.disconnects) == 1


async def test_requested_disconnect_fires_the_callback_once() -> None:
    world, device = make_world()
    host = Host(world, await find(world))
    await host.open()
    await host.client.disconnect()
    assert host.disconnects == [host.client]
    assert not host.client.is_connected
    assert device.link is None
    await asyncio.sleep(1)
    await host.client.disconnect()
    assert host.disconnects == [host.client]
    with pytest.raises(BleakError, match=SERVICE_DISCOVERY):
        await host.command(p.CmdInfo())


async def test_reconnect_on_the_same_client() -> None:
    world, device = make_world()
    host = Host(world, await find(world))
    await host.open()
    device.disconnect("x")
    await asyncio.sleep(0)
    assert device.advertising
    await host.open()
    assert host.client.is_connected
    await host.command(p.CmdOtaStatus())
    await asyncio.sleep(0.1)
    assert host.messages == [p.MsgOtaStatus(0, 0, 0, 0)]
    assert device.link is not None and device.link.number == 2
    await host.client.disconnect()
    assert len(host.disconnects) == 2
    await host.open()
    assert device.link.number == 3
    await host.client.disconnect()


async def test_drop_keeps_the_ota_session() -> None:
    world, device = make_world()
    host = Host(world, await find(world))
    await host.open()
    await host.command(p.CmdOtaStart(5000, 0x1234, 100))
    await asyncio.sleep(0.1)
    device.disconnect("x")
    await asyncio.sleep(1)
    await host.open()
    await host.command(p.CmdOtaStatus())
    await asyncio.sleep(0.1)
    # the STATUS, then the ACK a STATUS in RECEIVING always brings (docs/protocol.md)
    assert host.messages[-2:] == [
        p.MsgOtaStatus(p.OtaState.RECEIVING, 0, 5000, 0x1234),
        p.MsgOtaAck(0),
    ]
    await host.client.disconnect()


async def test_reboot_stops_advertising_for_boot_time() -> None:
    world, device = make_world(radio=RadioTimings(boot_s=3.0))
    loop = asyncio.get_running_loop()
    host = Host(world, await find(world))
    await host.open()
    t0 = loop.time()
    device.reboot()
    await asyncio.sleep(0)
    assert host.disconnects == [host.client]
    assert not device.advertising
    missing = await BleakScanner.find_device_by_name(
        "SmartBall", timeout=2.5, backend=world.scanner_backend
    )
    assert missing is None
    assert not device.advertising
    await find(world, timeout=5)
    assert loop.time() - t0 == pytest.approx(3.0, abs=0.15)  # within one advertising interval
    assert device.advertising
    assert device.firmware.boot_count == 2
    await host.open()
    assert host.client.is_connected
    await host.client.disconnect()


# --- connecting ----------------------------------------------------------------------------


async def test_connect_to_a_silent_device_times_out() -> None:
    world, device = make_world(faults="adv-pause:1000s")
    loop = asyncio.get_running_loop()
    assert not device.advertising
    host = Host(world, ADDRESS, timeout=4.0)
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await host.client.connect()
    assert loop.time() - t0 == pytest.approx(4.0, abs=1e-3)
    assert not host.client.is_connected
    assert host.disconnects == []


async def test_connect_timeout_argument_overrides_the_client_default() -> None:
    world, _ = make_world(faults="connect-timeout")
    loop = asyncio.get_running_loop()
    host = Host(world, await find(world))
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await host.client.connect(timeout=2.5)
    assert loop.time() - t0 == pytest.approx(2.5, abs=1e-3)
    await host.client.connect(timeout=2.5)  # the fault was used up; the client is reusable
    assert host.client.is_connected
    await host.client.disconnect()


async def test_connect_to_unknown_address_is_not_found() -> None:
    world, _ = make_world()
    host = Host(world, "AA:BB:CC:DD:EE:FF")
    with pytest.raises(BleakError, match="not found"):
        await host.client.connect()


async def test_connect_to_an_already_connected_device_waits_for_it() -> None:
    world, _ = make_world()
    device = await find(world)
    first = Host(world, device)
    await first.open()
    second = Host(world, device, timeout=3.0)
    with pytest.raises(TimeoutError):
        await second.client.connect()
    await first.client.disconnect()
    await second.open()
    assert second.client.is_connected
    await second.client.disconnect()


async def test_connect_fail_raises_bluez_error() -> None:
    world, device = make_world(faults="connect-fail:2")
    host = Host(world, await find(world))
    for _ in range(2):
        with pytest.raises(BleakError, match="br-connection-canceled"):
            await host.client.connect()
        assert not host.client.is_connected
    await host.client.connect()
    assert host.client.is_connected
    applied = [r.fault for r in device.fault_log if r.trigger == "applied"]
    assert applied == ["connect-fail", "connect-fail"]
    await host.client.disconnect()


@pytest.mark.parametrize("failures", [1, 3, 8])
async def test_establish_connection_retries_transient_failures(failures: int) -> None:
    world, device = make_world(faults=f"connect-fail:{failures}")
    disconnects: list[BleakClient] = []
    client = await establish_connection(
        BleakClient,
        await find(world),
        "SmartBall",
        disconnected_callback=disconnects.append,
        backend=world.client_backend,
    )
    assert client.is_connected
    assert (
        sum(r.fault == "connect-fail" and r.trigger == "applied" for r in device.fault_log)
        == failures
    )
    assert device.link is not None and device.link.number == 1
    device.disconnect("x")
    await asyncio.sleep(0)
    assert disconnects == [client]


async def test_establish_connection_gives_up_after_its_transient_budget() -> None:
    world, device = make_world(faults="connect-fail:20")
    with pytest.raises(BleakError, match="br-connection-canceled"):
        await establish_connection(
            BleakClient, await find(world), "SmartBall", backend=world.client_backend
        )
    applied = sum(r.fault == "connect-fail" and r.trigger == "applied" for r in device.fault_log)
    assert applied == 9  # bleak-retry-connector's MAX_TRANSIENT_ERRORS
    assert device.link is None


async def test_establish_connection_retries_a_connect_timeout() -> None:
    world, _device = make_world(faults="connect-timeout")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    client = await establish_connection(
        BleakClient, await find(world), "SmartBall", backend=world.client_backend
    )
    assert client.is_connected
    # one attempt ran into bleak-retry-connector's 20 s BLEAK_TIMEOUT, then one succeeded
    assert 20.0 < loop.time() - t0 < 22.0
    await client.disconnect()


# --- services race / stale cache -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["race:1.5s", "stale-cache"])
async def test_race_or_stale_cache_gives_services_without_nus(fault: str) -> None:
    world, _ = make_world(faults=fault)
    host = Host(world, await find(world))
    await host.client.connect()
    services = host.client.services
    assert services.get_service(p.NUS_SERVICE_UUID) is None
    assert services.get_characteristic(p.NUS_RX_UUID) is None
    assert services.get_service("00001800-0000-1000-8000-00805f9b34fb") is not None  # GAP
    with pytest.raises(BleakError):
        await host.command(p.CmdInfo())
    await host.client.disconnect()
    if fault.startswith("race"):
        # BlueZ exports NUS 1.5 s after the raced connect: a reconnect before then fares
        # no better, one after it finds NUS.
        await host.client.connect()
        assert host.client.services.get_service(p.NUS_SERVICE_UUID) is None
        await host.client.disconnect()
        await asyncio.sleep(1.5)
    # a stale cache costs one connection only: the next one finds NUS
    await host.open()
    assert host.client.services.get_service(p.NUS_SERVICE_UUID) is not None
    await host.client.disconnect()


async def test_race_on_the_second_connection() -> None:
    world, _ = make_world(faults="race:1.5s@connect:2")
    host = Host(world, await find(world))
    visible = []
    for _ in range(3):
        await host.client.connect()
        visible.append(host.client.services.get_service(p.NUS_SERVICE_UUID) is not None)
        await host.client.disconnect()
        await asyncio.sleep(1.5)  # past the race's window
    assert visible == [True, False, True]

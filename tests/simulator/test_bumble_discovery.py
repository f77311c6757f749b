"""The simulated SmartBall over Google's Bumble stack, before any update: advertising and
discovery, the GATT layout found over ATT, the MTU exchange and the write and notification
sizes it allows. All waiting is on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio

import pytest
from bleak import BleakScanner
from bleak.exc import BleakError
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Device

from pytest_smartball.contract import codec as p
from smartball_sim.bumble.central import BumbleDetails
from smartball_sim.bumble.peripheral import ADV_DATA_MAX, advertising_data
from smartball_sim.radio import gatt_layout

from .bumble_world import (
    ADDRESS,
    connected,
    find,
    make_world,
)

#: The async tests run on looptime's virtual clock (the plugin gives it only to tests that
#: use its fixtures or markers).
pytestmark = pytest.mark.looptime


# --- advertising and discovery --------------------------------------------------------------


@pytest.mark.asyncio
async def test_found_by_name_with_the_nus_uuid_in_the_advertising_data_itself() -> None:
    world, device = make_world()
    central = await world.start()
    seen: list[Advertisement] = []
    central.on(Device.EVENT_ADVERTISEMENT, seen.append)
    found = await find(world)
    assert found.address == ADDRESS and found.name == "SmartBall"
    assert not isinstance(found.details, dict)  # keeps bleak-retry-connector off D-Bus
    assert isinstance(found.details, BumbleDetails) and found.details.device is device
    # What the controller put on air (Bumble's LocalLink carries no scan responses).
    adv, scan_response = advertising_data("SmartBall")
    assert scan_response == b"" and len(adv) <= ADV_DATA_MAX
    on_air = AdvertisingData.from_bytes(seen[0].data_bytes)
    assert on_air.get_all(AdvertisingData.Type.COMPLETE_LOCAL_NAME) == ["SmartBall"]
    uuids = on_air.get_all(AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
    assert [str(u).lower() for u in uuids[0]] == [p.NUS_SERVICE_UUID]


@pytest.mark.asyncio
async def test_discover_reports_name_uuid_and_rssi() -> None:
    world, _ = make_world()
    seen = await BleakScanner.discover(timeout=1, return_adv=True, backend=world.scanner_backend)
    assert list(seen) == [ADDRESS]
    _, adv = seen[ADDRESS]
    assert adv.local_name == "SmartBall"
    assert adv.service_uuids == [p.NUS_SERVICE_UUID]


def test_a_long_name_is_shortened_in_the_advertising_data_and_whole_in_the_scan_response() -> None:
    adv, scan_response = advertising_data("SmartBall-Workshop-7")
    assert len(adv) <= ADV_DATA_MAX
    data = AdvertisingData.from_bytes(adv)
    assert data.get_all(AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
    (short,) = data.get_all(AdvertisingData.Type.SHORTENED_LOCAL_NAME)
    assert "SmartBall-Workshop-7".startswith(short)
    complete = AdvertisingData.from_bytes(scan_response)
    assert complete.get_all(AdvertisingData.Type.COMPLETE_LOCAL_NAME) == ["SmartBall-Workshop-7"]


# --- GATT: one layout, real discovery -------------------------------------------------------


@pytest.mark.asyncio
async def test_discovery_over_att_finds_the_gatt_layout() -> None:
    world, _ = make_world()
    host = await connected(world)
    found = {
        (s.handle, s.uuid): [
            (c.handle, c.uuid, tuple(c.properties), tuple(d.handle for d in c.descriptors))
            for c in s.characteristics
        ]
        for s in host.client.services
    }
    expected = {
        (s.handle, s.uuid): [
            (c.declaration_handle, c.uuid, c.properties, tuple(d.handle for d in c.descriptors))
            for c in s.characteristics
        ]
        for s in gatt_layout.SERVICES
    }
    assert found == expected
    tx = host.client.services.get_characteristic(p.NUS_TX_UUID)
    assert tx is not None and tx.handle == 0x000D
    assert [d.handle for d in tx.descriptors] == [0x000F]


@pytest.mark.asyncio
async def test_start_notify_writes_the_cccd() -> None:
    world, _ = make_world()
    host = await connected(world)
    cccd = host.client.services.get_descriptor(gatt_layout.NUS_TX_CCCD.handle)
    assert cccd is not None
    assert await host.client.read_gatt_descriptor(cccd.handle) == b"\x01\x00"


# --- MTU, write size, notification size ---------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(("exchange", "mtu"), [(517, 247), (None, 23)])
async def test_mtu_is_negotiated_like_bluez_or_stays_23(exchange: int | None, mtu: int) -> None:
    world, device = make_world(exchange_mtu=exchange)
    host = await connected(world)
    assert host.client.mtu_size == mtu
    rx = host.client.services.get_characteristic(p.NUS_RX_UUID)
    assert rx is not None and rx.max_write_without_response_size == mtu - 3
    assert device.link is not None and device.link.mtu == mtu
    assert world.negotiated_mtu == mtu


@pytest.mark.asyncio
@pytest.mark.parametrize(("exchange", "mtu"), [(517, 247), (None, 23)])
async def test_a_write_longer_than_mtu_minus_3_is_refused(exchange: int | None, mtu: int) -> None:
    world, device = make_world(exchange_mtu=exchange)
    host = await connected(world)
    frame = p.encode(p.CmdOtaData(0, bytes(400)))[: mtu - 2]
    with pytest.raises(BleakError, match=f"exceeds the link's maximum of {mtu - 3}"):
        await host.client.write_gatt_char(p.NUS_RX_UUID, frame, response=False)
    # MTU - 3 itself goes through: a frame cut into writes of exactly that size arrives.
    info = p.encode(p.CmdInfo()) * 40
    for start in range(0, len(info), mtu - 3):
        await host.client.write_gatt_char(
            p.NUS_RX_UUID, info[start : start + mtu - 3], response=False
        )
    await asyncio.sleep(0.1)
    assert device.firmware.commands_seen == {p.MsgType.CMD_INFO: 40}


@pytest.mark.asyncio
async def test_the_device_drops_a_write_command_longer_than_the_mtu_allows() -> None:
    """Bumble's client sends, and its server would accept, a 300-byte Write Command at MTU
    247; a real controller would not. The peripheral drops it (a raw Bumble client here,
    past the adapter's own check)."""
    world, device = make_world()
    host = await connected(world)
    assert world.central is not None
    (connection,) = world.central.connections.values()
    frame = p.encode(p.CmdOtaStatus()) * 50  # 300 bytes, whole frames
    assert len(frame) == 300
    await connection.gatt_client.write_value(gatt_layout.NUS_RX.value_handle, frame, False)
    await asyncio.sleep(0.1)
    assert device.firmware.commands_seen == {}
    await host.command(p.CmdOtaStatus())
    await asyncio.sleep(0.1)
    assert device.firmware.commands_seen == {p.MsgType.CMD_OTA_STATUS: 1}


@pytest.mark.asyncio
@pytest.mark.parametrize(("exchange", "mtu"), [(None, 23), (517, 247)])
async def test_a_notification_is_cut_at_mtu_minus_3(exchange: int | None, mtu: int) -> None:
    world, _ = make_world(exchange_mtu=exchange)
    host = await connected(world)
    await host.command(p.CmdOtaStart(10**7, 0x1234, 100))  # refused: a long MSG_ERROR
    await asyncio.sleep(0.1)
    (error,) = host.messages
    assert isinstance(error, p.MsgError) and error.code == p.ErrorCode.TOO_LARGE
    frame = p.encode(error)
    assert 20 < len(frame) <= 244
    step = mtu - 3
    assert host.chunks == [frame[i : i + step] for i in range(0, len(frame), step)]
    assert len(host.chunks) == (1 if mtu == 247 else -(-len(frame) // 20))

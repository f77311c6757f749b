"""The NUS link on its own: a settle that ends when its reason is gone, what it does with
messages it does not know, the replies it names when they never come, and the stack's
errors turned into its own (the BleBackend seam).

On the simulator's bleak backend, on looptime's virtual clock (the sim_only marker).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from typing import Any

import pytest
from bleak import BleakClient

from pytest_smartball import bluez
from pytest_smartball.contract import codec as p
from pytest_smartball.link import (
    BleBackend,
    ForgetFailed,
    LinkEvent,
    LinkLost,
    LinkSettings,
    NusLink,
    ResponseTimeout,
    find_device,
    scanning,
)
from pytest_smartball.link import nus as nus_module
from pytest_smartball.link.errors import DeviceNotFound
from pytest_smartball.targets import Target
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.fronts.in_process import SimClient

pytestmark = [pytest.mark.asyncio, pytest.mark.sim_only]

SETTINGS = LinkSettings(settle_s=1.5, services_retry_backoff_s=1.0)


async def open_link(
    target: Target, settings: LinkSettings = SETTINGS, backend: BleBackend | None = None
) -> tuple[NusLink, list[tuple[LinkEvent, str]], float]:
    """Open a link; its events and how long the connect took (virtual seconds)."""
    events: list[tuple[LinkEvent, str]] = []
    sighting = await find_device(target.backend, address=target.address, timeout=5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    link = await NusLink.open(
        sighting.ble_device,
        backend or target.backend,
        settings,
        on_event=lambda kind, detail: events.append((kind, detail)),
    )
    return link, events, loop.time() - t0


# --- the settle ---------------------------------------------------------------------------


async def test_the_settle_ends_as_soon_as_nus_is_there() -> None:
    target = make_sim_target()
    assert target.sim is not None
    link, events, took = await open_link(target)
    await link.close()
    # The radio's connect time, not the 1.5 s settle on top of it.
    assert took == pytest.approx(target.sim.radio.connect_s, abs=0.05)
    assert [k for k, _ in events][:1] == [LinkEvent.CONNECTED]


async def test_a_fixed_settle_waits_the_whole_delay() -> None:
    """For stacks known to report services resolved too early (BlueZ < 5.55)."""
    target = make_sim_target()
    assert target.sim is not None
    link, _, took = await open_link(target, replace(SETTINGS, fixed_settle=True))
    await link.close()
    assert took == pytest.approx(target.sim.radio.connect_s + SETTINGS.settle_s, abs=0.05)


async def test_without_nus_and_no_way_to_read_again_it_reconnects_at_once() -> None:
    """The simulated client resolves a connection's services once: no point waiting."""
    target = make_sim_target(faults="stale-cache")
    assert target.sim is not None
    link, events, took = await open_link(target)
    await link.close()
    missing = [d for k, d in events if k is LinkEvent.SERVICES_MISSING]
    assert missing == ["GATT database has no Nordic UART Service (attempt 1/3)"]
    connect = target.sim.radio.connect_s
    # two connects and the backoff between them, no settle
    assert took == pytest.approx(2 * connect + SETTINGS.services_retry_backoff_s, abs=0.05)


async def test_nus_that_comes_late_is_found_on_the_same_connection() -> None:
    target = make_sim_target(faults="race:0.1s")
    assert target.sim is not None
    rereads: list[float] = []
    loop = asyncio.get_running_loop()

    async def reread(client: BleakClient) -> bool:
        rereads.append(loop.time())
        backend = client._backend
        assert isinstance(backend, SimClient) and backend._link is not None
        if len(rereads) >= 3:  # the objects are there at the third look (~150 ms)
            backend._link.nus_hidden = None
            backend.services = backend._build_services(backend._link)
        return True

    backend = replace(target.backend, reread=reread)
    link, events, took = await open_link(target, backend=backend)
    await link.close()
    assert not [k for k, _ in events if k is LinkEvent.SERVICES_MISSING]
    assert len(rereads) == 3
    assert took == pytest.approx(target.sim.radio.connect_s + 3 * 0.05, abs=0.02)


async def test_nus_that_never_comes_is_given_up_on_at_the_settle_bound() -> None:
    target = make_sim_target(faults="stale-cache")

    async def reread(client: BleakClient) -> bool:
        return True  # reads again, finds the same stale database

    backend = replace(target.backend, reread=reread)
    link, events, _ = await open_link(target, backend=backend)
    await link.close()
    missing = [(k, d) for k, d in events if k is LinkEvent.SERVICES_MISSING]
    assert len(missing) == 1  # one connection waited the settle out, the next had NUS


# --- messages -----------------------------------------------------------------------------


async def test_a_message_of_unknown_type_is_ignored_and_the_next_one_arrives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """P13: a newer device's message type is ignored (logged), not an error."""
    target = make_sim_target()
    assert target.sim is not None
    link, _, _ = await open_link(target)
    notify = target.sim._notify
    notify(p.encode_frame(0xB7, b"news"))
    notify(p.encode(p.MsgOtaAck(232)))
    with caplog.at_level("INFO", logger="pytest_smartball.link"):
        msg = await link.receive(1.0)
    await link.close()
    assert msg == p.MsgOtaAck(232)
    assert "unknown type 0xB7" in caplog.text


async def test_a_partial_frame_is_dropped_after_a_second_of_silence() -> None:
    """P14, a MUST for both ends: a frame that stopped halfway (its length claims 200 bytes)
    does not swallow the next message once no byte has come for 1 s."""
    target = make_sim_target()
    assert target.sim is not None
    link, _, _ = await open_link(target)
    target.sim._notify(bytes([p.SOF, p.MsgType.MSG_OTA_STATUS, 200, 0, 1, 2, 3]))
    await asyncio.sleep(1.5)
    target.sim._notify(p.encode(p.MsgOtaAck(232)))
    assert await link.receive(1.0) == p.MsgOtaAck(232)
    await link.close()


class _DeviceBytes:
    """An observer that keeps what the device notified."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def connected(self, t: float) -> None: ...

    def disconnected(self, t: float, by_host: bool) -> None: ...

    def host_bytes(self, t: float, data: bytes) -> None: ...

    def device_bytes(self, t: float, data: bytes) -> None:
        self.seen.append(data)


async def test_a_lost_link_keeps_nothing_it_is_handed_after_the_loss() -> None:
    """Over the real bluetoothd the bleak client of a lost link was still handed the next
    link's notifications (the VM stage: a contract monitor saw each reply twice). A link is
    never revived, so what reaches it after its loss is neither observed nor queued."""
    target = make_sim_target()
    assert target.sim is not None
    observer = _DeviceBytes()
    stop = nus_module.watch_links(lambda _link: observer)
    try:
        link, _, _ = await open_link(target)
    finally:
        stop()
    target.sim._notify(p.encode(p.MsgOtaAck(232)))
    assert await link.receive(1.0) == p.MsgOtaAck(232)
    client = link._client
    assert client is not None
    tx = client.services.get_characteristic(p.NUS_TX_UUID)
    assert tx is not None
    target.sim.disconnect("the test drops the link")
    await asyncio.wait_for(link.lost.wait(), 5.0)
    # Released at the drop, not at close: the release task exists and ends by itself.
    assert link._release is not None
    await asyncio.wait_for(link._release, 1.0)
    assert link._client is None and not client.is_connected
    link._on_notify(tx, bytearray(p.encode(p.MsgOtaAck(464))))
    assert observer.seen == [p.encode(p.MsgOtaAck(232))]
    with pytest.raises(LinkLost):
        await link.receive(1.0)
    await link.close()


async def test_a_reply_that_never_comes_is_named() -> None:
    """E4: 'no MSG_INFO reply to CMD_INFO within 3 s', not 'no message for 3 s'."""
    target = make_sim_target(faults="lose:MSG_INFO")
    link, _, _ = await open_link(target)
    with pytest.raises(ResponseTimeout, match=r"no MSG_INFO reply to CMD_INFO within 3 s$"):
        await link.request(p.CmdInfo(), (p.MsgInfo,), 3.0)
    await link.close()


# --- the stack's errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(2, "No such file or directory"),
        TimeoutError(),
        bluez.BluezUnavailable("BlueZ refused to remove it"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_failed_cache_clear_is_one_link_error(error: Exception) -> None:
    async def forget(address: str) -> bool:
        raise error

    backend = BleBackend(client=object, forget=forget)
    with pytest.raises(ForgetFailed, match="could not clear the cache for C0:FF:EE:00:00:01"):
        await backend.forget_device("C0:FF:EE:00:00:01")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="BlueZ is Linux's")
async def test_without_a_system_dbus_remove_device_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Issue 11: FileNotFoundError used to escape OtaEngine.run() with --clear-cache."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-socket")
    with pytest.raises(bluez.BluezUnavailable, match="cannot reach BlueZ on the system D-Bus"):
        await bluez.remove_device("C0:FF:EE:00:00:01")
    with pytest.raises(ForgetFailed, match="cannot reach BlueZ"):
        await BleBackend().forget_device("C0:FF:EE:00:00:01")


@pytest.mark.parametrize(
    ("version", "fixed"), [((5, 50), True), ((5, 54), True), ((5, 55), False), (None, False)]
)
async def test_a_fixed_settle_only_for_the_bluez_versions_preflight_warns_about(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, int] | None, fixed: bool
) -> None:
    async def bluez_version(timeout: float = 3.0) -> tuple[int, int] | None:
        return version

    monkeypatch.setattr(bluez, "bluez_version", bluez_version)
    monkeypatch.setattr(sys, "platform", "linux")
    assert await BleBackend().needs_fixed_settle() is fixed
    assert await make_sim_target().backend.needs_fixed_settle() is False
    warned = bool([w for w in bluez.version_warnings(version) if "ServicesResolved" in w])
    assert fixed == warned


# --- a SmartBall BlueZ holds connected (a host killed mid-update) ---------------------------


def _held(address: str, name: str | None, nus: bool = True) -> scanning.Sighting:
    return scanning.Sighting(address, name, None, nus)


async def test_a_held_device_is_picked_only_by_its_address_or_name_and_with_nus() -> None:
    held = [
        _held("AA:AA:AA:AA:AA:01", "Headphones", nus=False),
        _held("AA:AA:AA:AA:AA:02", "SmartBall", nus=False),  # the name, not the service
        _held("AA:AA:AA:AA:AA:03", "SmartBall"),
    ]
    by_name = scanning.pick_held(held, lambda s: s.name == "SmartBall", "name 'SmartBall'")
    assert by_name is not None and by_name.address == "AA:AA:AA:AA:AA:03"
    other = scanning.pick_held(held, lambda s: s.name == "Other", "name 'Other'")
    assert other is None  # a real "not found" stays one
    assert scanning.pick_held([], lambda s: True, "name 'SmartBall'") is None


async def test_several_held_smartballs_of_the_name_are_not_guessed_between() -> None:
    held = [_held("AA:AA:AA:AA:AA:03", "SmartBall"), _held("AA:AA:AA:AA:AA:04", "SmartBall")]
    with pytest.raises(DeviceNotFound, match=r"holds several connected .* give its address"):
        scanning.pick_held(held, lambda s: s.name == "SmartBall", "name 'SmartBall'")
    one = scanning.pick_held(held, lambda s: s.address == "AA:AA:AA:AA:AA:04", "address")
    assert one is not None and one.address == "AA:AA:AA:AA:AA:04"

"""The virtual radio for a real BlueZ (smartball_sim.machines.vhci) without a kernel: its
one-sentence refusals, the HCI index it reads from the kernel's answer, and what its controller
reports to the kernel. The radio against the real kernel and bluetoothd runs in .ci/run's VM stage
(tests/system/test_real_bluez.py)."""

from __future__ import annotations

import asyncio
import os
import pty
import threading
import tty
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("bumble")

from bumble import hci

from pytest_smartball.cli import main
from pytest_smartball.cli.errors import EXIT_NOT_FOUND
from smartball_sim.bluez.launcher import emulated_smartball
from smartball_sim.bumble.local_link import SmartBallLink
from smartball_sim.bumble.peripheral import serve_smartball
from smartball_sim.machines import vhci

pytest_plugins = ["pytester"]
NO_VHCI = not os.path.exists(vhci.VHCI_PATH)


def test_a_missing_dev_vhci_is_one_sentence_naming_the_module_and_the_vm(tmp_path: Path) -> None:
    problem = vhci.vhci_problem(str(tmp_path / "vhci"))
    assert problem is not None
    assert "modprobe hci_vhci" in problem and "python -m smartball_sim.machines.vm" in problem
    assert problem.count(". ") == 0  # one sentence


def test_an_unreadable_dev_vhci_says_permission_denied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "vhci"
    path.write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    problem = vhci.vhci_problem(str(path))
    assert problem is not None and "permission denied" in problem


def test_each_radio_gets_its_own_controller_address() -> None:
    assert vhci.controller_address(1, 1) != vhci.controller_address(2, 1)
    assert vhci.controller_address(7, 1) != vhci.controller_address(7, 2)
    assert vhci.controller_address(0x1234, 0x56) == "5C:5B:12:34:00:56"
    assert vhci.controller_address() != vhci.controller_address()  # one process, two radios


@pytest.mark.skipif(not NO_VHCI, reason="this machine has /dev/vhci")
def test_pytest_without_dev_vhci_stops_before_any_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--device=real", "--bluez=vhci", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --bluez=vhci needs /dev/vhci*modprobe hci_vhci*"])


def test_vhci_is_the_real_device_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--bluez=vhci", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--bluez=vhci*--device=real*"])


@pytest.mark.skipif(not NO_VHCI, reason="this machine has /dev/vhci")
def test_cli_without_dev_vhci_exits_3_with_the_sentence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["info", "--bluez=vhci"]) == EXIT_NOT_FOUND
    assert "needs /dev/vhci" in capsys.readouterr().err


def test_cli_vhci_is_not_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--bluez=vhci", "--sim"]) == 2
    assert "leave out --sim" in capsys.readouterr().err


@pytest.mark.asyncio
@pytest.mark.looptime(False)
async def test_the_hci_index_is_read_even_when_the_kernels_first_command_shares_the_read() -> None:
    """A pty stands in for /dev/vhci. The kernel answers Bumble's configuration packet
    with ``ff 00 <index as little-endian u16>``; here HCI Reset arrives in the same read,
    which Bumble's own filter would have fed to its parser as garbage."""
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)

    def kernel() -> None:
        os.read(master, 16)  # Bumble's configuration packet
        # hci3, little-endian (drivers/bluetooth/hci_vhci.c), then HCI Reset
        os.write(master, bytes.fromhex("ff000300") + bytes.fromhex("01030c00"))

    thread = threading.Thread(target=kernel, daemon=True)
    thread.start()
    packets: list[bytes] = []
    arrived = asyncio.Event()

    class Sink:
        def on_packet(self, packet: bytes) -> None:
            packets.append(bytes(packet))
            arrived.set()

    transport, index = await vhci.open_vhci(os.ttyname(slave))
    try:
        transport.source.set_packet_sink(Sink())
        assert await asyncio.wait_for(index, 5) == 3
        await asyncio.wait_for(arrived.wait(), 5)
        assert packets == [bytes.fromhex("01030c00")]  # HCI Reset reached the controller
    finally:
        await transport.close()
        os.close(master)
        thread.join(1)


class _Transport:
    """What HostController needs of a transport: a source and a sink (HCI to the host)."""

    def __init__(self) -> None:
        self.to_host: list[bytes] = []
        self.two = asyncio.Event()  # two packets reached the host
        outer = self

        class Source:
            def set_packet_sink(self, sink: object) -> None:
                pass

        class Sink:
            def on_packet(self, packet: bytes) -> None:
                outer.to_host.append(bytes(packet))
                if len(outer.to_host) >= 2:
                    outer.two.set()

        self.source = Source()
        self.sink = Sink()


@pytest.mark.asyncio
@pytest.mark.looptime(False)
async def test_active_scanning_reports_the_advertisers_real_scan_response() -> None:
    """Bumble's controller repeats the advertising data as the scan response; the kernel
    then never learns a name carried only in the scan response."""
    link = SmartBallLink()
    transport = _Transport()
    controller = vhci._host_controller_class()(transport, link, "5C:5B:A1:00:00:01")
    device = emulated_smartball("SmartBall-with-a-long-bench-name", "C0:FF:EE:00:00:09")
    peripheral = await serve_smartball(device, link)
    try:
        assert peripheral.scan_response, "this name should not fit the advertising data"
        controller.le_scan_enable = True
        controller.le_scan_type = 1  # active
        await asyncio.wait_for(transport.two.wait(), 5)
        reports = [hci.HCI_Packet.from_bytes(p) for p in transport.to_host[:2]]
        kinds = [r.reports[0].event_type for r in reports]  # type: ignore[attr-defined]
        data = [bytes(r.reports[0].data) for r in reports]  # type: ignore[attr-defined]
        scan_rsp = hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP
        assert kinds == [hci.HCI_LE_Advertising_Report_Event.EventType.ADV_IND, scan_rsp]
        assert data == [peripheral.adv_data, peripheral.scan_response]
        assert not (controller.le_features & hci.LeFeatureMask.LE_EXTENDED_ADVERTISING)
        assert not (controller.le_features & hci.LeFeatureMask.LL_PRIVACY)
    finally:
        await peripheral.close()


@pytest.mark.asyncio
@pytest.mark.looptime(False)
async def test_the_real_stack_refuses_connect_fail_and_takes_race_and_stale_cache() -> None:
    """connect-fail crashed Debian 12's kernel (docs/faults.md, Real BlueZ); race and
    stale-cache have a real form on this front (the Bumble peripheral alone refuses them)."""
    from smartball_sim.faults import FaultSpecError

    link = SmartBallLink()
    with pytest.raises(FaultSpecError, match="hci_chan_del"):
        await vhci.serve_for_bluez(emulated_smartball(faults="connect-fail"), link)
    peripheral = await vhci.serve_for_bluez(emulated_smartball(faults="race:1s,stale-cache"), link)
    try:
        with pytest.raises(FaultSpecError, match="connect-fail"):
            peripheral.device.set_faults("field-linux")
    finally:
        await peripheral.close()


async def _central(link: SmartBallLink) -> object:
    """A plain Bumble central on the link (what the kernel is, behind the vhci controller)."""
    from bumble.device import Device
    from bumble.host import Host
    from bumble.transport.common import AsyncPipeSink

    from smartball_sim.bumble.central import CentralController

    controller = CentralController("central", link=link)
    central = Device(name="central", address=hci.Address("F0:CE:17:A1:00:09"))
    central.host = Host(controller, AsyncPipeSink(controller))
    await central.power_on()
    return central


async def _services_seen(central: object, address: str) -> set[str] | str:
    """Connect and discover like a host does: the service UUIDs, or how the link ended."""
    from bumble.device import Connection, Device, Peer

    assert isinstance(central, Device)
    connection = await central.connect(
        hci.Address(address), own_address_type=hci.OwnAddressType.RANDOM, timeout=10
    )
    ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_end(reason: int) -> None:
        if not ended.done():
            ended.set_result(reason)

    connection.on(Connection.EVENT_DISCONNECTION, on_end)
    discovery = asyncio.ensure_future(Peer(connection).discover_services())
    waiting: set[asyncio.Future[Any]] = {discovery, ended}
    done, _ = await asyncio.wait(waiting, timeout=10, return_when="FIRST_COMPLETED")
    if ended in done:
        discovery.cancel()
        return f"link lost, HCI 0x{ended.result():02X}"
    uuids = {str(s.uuid).lower() for s in discovery.result()}
    await connection.disconnect()
    await asyncio.wait_for(ended, 10)
    return uuids


NUS = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"


@pytest.mark.asyncio
async def test_race_loses_the_link_at_the_first_discovery_request() -> None:
    link = SmartBallLink()
    device = emulated_smartball(address="C0:FF:EE:00:00:0A", faults="race:0.1s")
    peripheral = await vhci.serve_for_bluez(device, link)
    try:
        central = await _central(link)
        assert await _services_seen(central, device.address) == "link lost, HCI 0x08"
        await asyncio.sleep(0.5)  # past the race window
        seen = await _services_seen(central, device.address)
        assert isinstance(seen, set) and NUS in seen
        details = [r.detail for r in device.fault_log if r.fault == "race"]
        assert "link lost at bluetoothd's first discovery request" in details
    finally:
        await peripheral.close()


@pytest.mark.asyncio
async def test_stale_cache_serves_one_connection_without_nus_then_nus_silently() -> None:
    link = SmartBallLink()
    device = emulated_smartball(address="C0:FF:EE:00:00:0B", faults="stale-cache")
    peripheral = await vhci.serve_for_bluez(device, link)
    try:
        central = await _central(link)
        first = await _services_seen(central, device.address)
        assert isinstance(first, set) and NUS not in first and first  # the GATT service
        second = await _services_seen(central, device.address)
        assert isinstance(second, set) and NUS in second
        assert [r.detail for r in device.fault_log if r.trigger == "applied"][-2:] == [
            "this connection's GATT database has no NUS",
            "NUS is back, and no Service Changed says so",
        ]
    finally:
        await peripheral.close()

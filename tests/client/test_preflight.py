"""Preflight for ``--device=real``: the decisions with BlueZ's and bleak's answers stubbed.

``preflight.check`` is pure: each test hands it the answers a bench could give and reads
the one-sentence error or the warnings. ``preflight.run`` is driven through bleak's own
scanner and client against simulated SmartBalls (the simulator's bleak backend), with
BlueZ's two answers (the adapter probe, the version) stubbed; ``bluez.probe_adapter`` is
driven against a stubbed D-Bus. Async tests run on the virtual clock.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from dbus_fast import MessageType, Variant

from pytest_smartball import bluez, preflight
from pytest_smartball.bluez import AdapterInfo, BluezUnavailable
from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage, ImageError
from pytest_smartball.link import ConnectFailed
from pytest_smartball.preflight import Seen, Wanted, check, match, plan_devices
from pytest_smartball.targets.simulated import backend_for
from smartball_sim.device import SimDevice
from smartball_sim.fronts.in_process import SimWorld

# Virtual time: simulated seconds cost no wall time, and timings are exact.
pytestmark = pytest.mark.looptime

A, B, C = "C0:FF:EE:00:00:0A", "C0:FF:EE:00:00:0B", "C0:FF:EE:00:00:0C"
HCI0 = AdapterInfo("hci0", "/org/bluez/hci0", "00:1A:7D:DA:71:13", True)
BASELINE = bytes(range(256)) * 16  # 4 KiB
IMAGE = FirmwareImage(bytes(reversed(BASELINE)) * 2, "build/smartball.bin")


def info(
    crc: int = p.crc32(BASELINE), size: int = len(BASELINE), capacity: int = 480 * 1024
) -> p.MsgInfo:
    return p.MsgInfo(p.PROTOCOL_VERSION, 1, 4, 2, size, crc, capacity)


def one_sentence(text: str) -> None:
    assert text and ". " not in text and "\n" not in text, text


BY_ADDRESS = Wanted("SmartBall", (A,))
SEEN_A = Seen(A, "SmartBall", -58, nus=True)


def full(**overrides: Any) -> preflight.Findings:
    """Every answer a good bench gives, with some replaced."""
    answers: dict[str, Any] = {
        "adapter": HCI0,
        "version": (5, 66),
        "scan": [SEEN_A, Seen("11:22:33:44:55:66", "Headphones", -70)],
        "image": IMAGE,
        "infos": {A: info()},
        "wanted": BY_ADDRESS,
    }
    answers.update(overrides)
    return check(**answers)


# --- the decisions ----------------------------------------------------------------------


def test_a_good_bench_passes_and_says_what_it_checked() -> None:
    out = full()
    assert out.ok, out.error
    assert out.warnings == []
    assert out.found == [SEEN_A]
    assert out.infos == {A: info()}
    text = "\n".join(out.passed)
    for needle in (
        "adapter hci0 (00:1A:7D:DA:71:13) is powered",
        "BlueZ 5.66 (no known GATT bugs)",
        f"found SmartBall ({A}, -58 dBm)",
        "firmware 1.4.2",
        "build/smartball.bin (8192 bytes) fits",
    ):
        assert needle in text


def test_bluez_unreachable_stops_everything() -> None:
    problem = BluezUnavailable("cannot reach the system D-Bus (FileNotFoundError)")
    out = check(problem, wanted=BY_ADDRESS)
    assert out.error == str(problem) and out.no_radio
    assert out.passed == []


def test_nothing_asked_yet_decides_nothing() -> None:
    out = check(wanted=BY_ADDRESS)
    assert out.ok and out.passed == [] and out.found == []


@pytest.mark.parametrize(
    ("version", "reasons"),
    [
        ((5, 50), ["write-without-response", "ServicesResolved"]),
        ((5, 53), ["ServicesResolved may be reported before the GATT objects exist"]),
        ((5, 55), []),
        ((5, 72), []),
        (None, ["version unknown"]),
    ],
)
def test_bluez_versions_with_known_gatt_bugs_are_warnings_with_the_reason(
    version: tuple[int, int] | None, reasons: list[str]
) -> None:
    out = full(version=version)
    assert out.ok, out.error
    assert len(out.warnings) == len(reasons)
    for warning, reason in zip(out.warnings, reasons, strict=True):
        assert reason in warning
        if version is not None:
            assert f"BlueZ {version[0]}.{version[1]}" in warning
    if version is not None and reasons:
        assert "stale GATT caches" in out.warnings[-1] and "upgrade to 5.55" in out.warnings[-1]


def test_an_unusable_image_fails_before_the_scan() -> None:
    out = check(
        HCI0,
        (5, 66),
        image=ImageError("build/smartball.bin: no such file"),
        wanted=BY_ADDRESS,
    )
    assert out.error == "--firmware: build/smartball.bin: no such file"
    assert out.found == []


def test_the_device_not_seen_lists_what_was_seen_strongest_first() -> None:
    seen = [
        Seen("11:22:33:44:55:66", "Headphones", -70),
        Seen(B, "SmartBall", -50, nus=True),
        Seen("AA:BB:CC:DD:EE:FF", None, -90),
    ]
    out = full(scan=seen)
    assert out.error is not None
    one_sentence(out.error)
    assert out.error.startswith(f"no SmartBall at {A} advertised within 10 s (seen instead: ")
    listed = re.findall(r"\(([0-9A-F:]{17})", out.error)
    assert listed == [B, "11:22:33:44:55:66", "AA:BB:CC:DD:EE:FF"]
    assert "(no name) (AA:BB:CC:DD:EE:FF, -90 dBm)" in out.error
    assert "powered, in range, not connected to another host" in out.error


def test_a_long_list_of_advertisers_is_cut() -> None:
    seen = [Seen(f"11:22:33:44:55:{i:02X}", f"dev{i}", -40 - i) for i in range(20)]
    _, problem = match(seen, BY_ADDRESS, 5)
    assert problem is not None
    assert "dev7 " in problem and "dev8 " not in problem
    assert "and 12 more" in problem


def test_nothing_advertising_at_all_points_at_the_radio() -> None:
    out = full(scan=[])
    assert out.error is not None
    one_sentence(out.error)
    assert "nothing advertised at all" in out.error and "rfkill" in out.error


def test_addresses_match_whatever_their_case() -> None:
    found, problem = match([Seen(A.lower(), "SmartBall", -60)], BY_ADDRESS, 5)
    assert problem is None and [s.address for s in found] == [A.lower()]


def test_by_name_one_device_is_found() -> None:
    found, problem = match([SEEN_A, Seen(B, "Other", -40)], Wanted("SmartBall"), 5)
    assert problem is None and found == [SEEN_A]


def test_by_name_two_devices_with_that_name_is_an_error() -> None:
    seen = [SEEN_A, Seen(B, "SmartBall", -40, nus=True)]
    _, problem = match(seen, Wanted("SmartBall"), 5)
    assert problem is not None
    one_sentence(problem)
    assert f"2 devices advertise the name 'SmartBall' ({A}, {B})" in problem
    assert "--ble-address" in problem and "-n 2" in problem


def test_several_addresses_name_the_missing_ones() -> None:
    wanted = Wanted("SmartBall", (A, B, C))
    _, problem = match([SEEN_A], wanted, 10)
    assert problem is not None and problem.startswith(f"no SmartBall at {B}, {C} advertised")


def test_a_device_without_nus_in_its_advertisement_is_a_warning() -> None:
    out = full(scan=[Seen(A, "SmartBall", -58, nus=False)])
    assert out.ok
    assert any("Nordic UART Service" in w for w in out.warnings)


def test_a_device_that_does_not_answer_info_is_an_error() -> None:
    out = full(infos={A: ConnectFailed("SmartBall (C0:FF:EE:00:00:0A): could not connect")})
    assert out.error is not None
    assert "did not answer CMD_INFO" in out.error and out.error.endswith("run again")


def test_a_device_speaking_another_protocol_is_an_error() -> None:
    other = p.MsgInfo(2, 1, 0, 0, 10, 1, 480 * 1024)
    out = full(infos={A: other})
    assert out.error is not None and "protocol v2" in out.error


def test_an_image_larger_than_the_staging_area_is_an_error() -> None:
    out = full(infos={A: info(capacity=IMAGE.size - 1)})
    assert out.error is not None
    one_sentence(out.error)
    assert out.error == (
        f"--firmware build/smartball.bin is 8192 bytes but the SmartBall at {A} stages at "
        "most 8191 bytes; build a smaller image"
    )


def test_the_image_fits_exactly() -> None:
    assert full(infos={A: info(capacity=IMAGE.size)}).ok


def test_infos_asked_one_by_one() -> None:
    wanted = Wanted("SmartBall", (A, B))
    scan = [SEEN_A, Seen(B, "SmartBall", -61, nus=True)]
    partial = full(wanted=wanted, scan=scan, infos={A: info()})
    assert partial.ok and list(partial.infos) == [A]
    assert full(wanted=wanted, scan=scan, infos={A: info(), B: info()}).ok


def test_the_baseline_image_must_be_what_the_device_runs() -> None:
    baseline = FirmwareImage(BASELINE, "build/baseline.bin")
    assert full(baseline=baseline).ok
    out = full(baseline=baseline, infos={A: info(crc=0x1234)})
    assert out.error is not None
    one_sentence(out.error)
    assert "--baseline-firmware build/baseline.bin" in out.error
    assert "crc32 00001234" in out.error and "smartball-ota flash" in out.error
    broken = full(baseline=ImageError("build/baseline.bin: the image is empty"))
    assert broken.error == "--baseline-firmware: build/baseline.bin: the image is empty"


@pytest.mark.parametrize(
    ("addresses", "workers", "in_use", "problem", "note"),
    [
        ((), 0, (), None, None),
        ((A,), 0, (A,), None, None),
        ((A, B, C), 0, (A,), None, "lists 3 devices but this run uses 1"),
        ((A, B, C), 3, (A, B, C), None, None),
        ((A, B, C), 2, (A, B), None, "add -n 3"),
        ((A,), 1, (A,), None, None),
        ((A, B), 3, (), "-n 3 starts 3 workers", None),
        ((), 2, (), "no --ble-address was given", None),
        ((A, A.lower()), 2, (), "more than once", None),
    ],
)
def test_devices_for_xdist_workers(
    addresses: tuple[str, ...],
    workers: int,
    in_use: tuple[str, ...],
    problem: str | None,
    note: str | None,
) -> None:
    got_in_use, got_problem, got_note = plan_devices(addresses, workers)
    assert got_in_use == in_use
    if problem is None:
        assert got_problem is None
    else:
        assert got_problem is not None and problem in got_problem
        one_sentence(got_problem)
    if note is None:
        assert got_note is None
    else:
        assert got_note is not None and note in got_note


# --- the gathering, against simulated devices ----------------------------------------------


class StubBluez:
    def __init__(self, adapter: AdapterInfo | BluezUnavailable, version=(5, 66)) -> None:
        self.adapter, self.version = adapter, version
        self.asked: list[str] = []

    async def probe_adapter(self, adapter: str) -> AdapterInfo:
        self.asked.append(adapter)
        if isinstance(self.adapter, BluezUnavailable):
            raise self.adapter
        return self.adapter

    async def bluez_version(self) -> tuple[int, int] | None:
        return self.version


def bench(*devices: SimDevice) -> SimWorld:
    return SimWorld(devices or [SimDevice("SmartBall", A, active_image=BASELINE)])


@pytest.mark.asyncio
async def test_run_finds_the_device_reads_info_and_returns_it_to_idle() -> None:
    world = bench()
    device = world.find(A)
    assert device is not None
    device.firmware.receive(p.encode(p.CmdOtaStart(8192, 1, 100)))  # a session left over
    steps: list[str] = []
    out = await preflight.run(
        BY_ADDRESS,
        backend_for(world),
        adapter="hci1",
        boundary=StubBluez(HCI0),
        on_step=steps.append,
    )
    assert out.ok, out.error
    assert [s.address for s in out.found] == [A] and out.found[0].device is not None
    assert out.infos[A].active_image_crc32 == p.crc32(BASELINE)
    assert out.found[0].rssi is not None and out.found[0].nus
    assert device.firmware.state == p.OtaState.IDLE
    assert steps[0].startswith("BlueZ answers")
    assert any(s.startswith(f"scanning for the SmartBall at {A} (up to 10 s)") for s in steps)


@pytest.mark.asyncio
async def test_run_stops_at_bluez_without_scanning() -> None:
    class Exploding:
        def scanner_kwargs(self) -> dict[str, Any]:
            raise AssertionError("scanned although BlueZ was unavailable")

    stub = StubBluez(BluezUnavailable("Bluetooth adapter hci1 is powered off"))
    out = await preflight.run(BY_ADDRESS, Exploding(), adapter="hci1", boundary=stub)  # type: ignore[arg-type]
    assert out.error == "Bluetooth adapter hci1 is powered off" and out.no_radio
    assert stub.asked == ["hci1"]


@pytest.mark.asyncio
async def test_run_reports_what_it_saw_when_the_device_is_absent() -> None:
    world = bench(SimDevice("SmartBall", B, active_image=BASELINE))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = await preflight.run(
        BY_ADDRESS, backend_for(world), scan_timeout=4, boundary=StubBluez(HCI0)
    )
    assert out.error is not None
    assert out.error.startswith(f"no SmartBall at {A} advertised within 4 s (seen instead: ")
    assert f"SmartBall ({B}, " in out.error
    assert loop.time() - t0 == pytest.approx(4, abs=0.5), "the scan is bounded by its timeout"


@pytest.mark.asyncio
async def test_run_by_name_sees_a_second_board_with_the_same_name() -> None:
    world = bench(
        SimDevice("SmartBall", A, active_image=BASELINE),
        SimDevice("SmartBall", B, active_image=BASELINE),
    )
    out = await preflight.run(Wanted("SmartBall"), backend_for(world), boundary=StubBluez(HCI0))
    assert out.error is not None and "2 devices advertise the name 'SmartBall'" in out.error


@pytest.mark.asyncio
async def test_run_checks_the_image_against_the_staging_area(tmp_path) -> None:
    world = bench(SimDevice("SmartBall", A, active_image=BASELINE, staging_capacity=4096))
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01" * 4097)
    out = await preflight.run(
        BY_ADDRESS, backend_for(world), firmware=str(big), boundary=StubBluez(HCI0)
    )
    assert out.error is not None and "stages at most 4096 bytes" in out.error


@pytest.mark.asyncio
async def test_run_several_devices_stops_scanning_when_all_are_seen() -> None:
    world = bench(
        SimDevice("SmartBall", A, active_image=BASELINE),
        SimDevice("SmartBall", B, active_image=BASELINE, seed=1),
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    found = await preflight.discover(backend_for(world), Wanted("SmartBall", (A, B)), 10)
    assert {s.address for s in found} == {A, B}
    assert loop.time() - t0 < 2, "the scan ends once every wanted device advertised"


@pytest.mark.asyncio
async def test_a_device_that_never_answers_is_bounded() -> None:
    world = bench(SimDevice("SmartBall", A, active_image=BASELINE, faults="connect-timeout:10"))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = await preflight.run(
        BY_ADDRESS, backend_for(world), info_timeout=20, boundary=StubBluez(HCI0)
    )
    assert out.error is not None and "did not answer CMD_INFO" in out.error
    assert loop.time() - t0 <= 20 + preflight.DEFAULT_SCAN_TIMEOUT_S


# --- bluez.probe_adapter against a stubbed system bus --------------------------------------


class FakeReply:
    def __init__(self, body: Any = None, error: str | None = None) -> None:
        self.message_type = MessageType.ERROR if error else MessageType.METHOD_RETURN
        self.error_name = error
        self.body = [body] if body is not None else []


class FakeBus:
    """dbus_fast.aio.MessageBus as far as probe_adapter uses it."""

    reply: FakeReply | None = None
    connect_hangs = False
    call_hangs = False

    def __init__(self, bus_type: object = None) -> None:
        pass

    async def connect(self) -> FakeBus:
        if self.connect_hangs:
            await asyncio.Future()
        return self

    async def call(self, message: object) -> FakeReply:
        if self.call_hangs:
            await asyncio.Future()
        assert self.reply is not None
        return self.reply

    def disconnect(self) -> None:
        pass


def adapter_objects(**adapters: bool) -> dict[str, Any]:
    return {
        f"/org/bluez/{name}": {
            "org.bluez.Adapter1": {
                "Powered": Variant("b", powered),
                "Address": Variant("s", "00:1A:7D:DA:71:13"),
            }
        }
        for name, powered in adapters.items()
    } | {"/org/bluez": {"org.bluez.AgentManager1": {}}}


@pytest.fixture
def fake_bus(monkeypatch: pytest.MonkeyPatch) -> type[FakeBus]:
    bus = type("Bus", (FakeBus,), {})
    monkeypatch.setattr("dbus_fast.aio.MessageBus", bus)
    return bus


@pytest.mark.asyncio
async def test_probe_finds_a_powered_adapter(fake_bus: type[FakeBus]) -> None:
    fake_bus.reply = FakeReply(adapter_objects(hci0=True, hci1=False))
    assert await bluez.probe_adapter("hci0") == HCI0


@pytest.mark.asyncio
async def test_probe_says_how_to_power_the_adapter_on(fake_bus: type[FakeBus]) -> None:
    fake_bus.reply = FakeReply(adapter_objects(hci0=True, hci1=False))
    with pytest.raises(BluezUnavailable) as exc:
        await bluez.probe_adapter("hci1")
    assert str(exc.value) == "Bluetooth adapter hci1 is powered off; run `bluetoothctl power on`"


@pytest.mark.asyncio
async def test_probe_lists_the_adapters_there_are(fake_bus: type[FakeBus]) -> None:
    fake_bus.reply = FakeReply(adapter_objects(hci0=True, hci2=True))
    with pytest.raises(BluezUnavailable, match=r"adapter hci1 not found \(adapters: hci0, hci2\)"):
        await bluez.probe_adapter("hci1")
    fake_bus.reply = FakeReply({})
    with pytest.raises(BluezUnavailable, match=r"\(adapters: none\); plug one in"):
        await bluez.probe_adapter("hci0")


@pytest.mark.asyncio
async def test_probe_bluez_not_running(fake_bus: type[FakeBus]) -> None:
    fake_bus.reply = FakeReply(error="org.freedesktop.DBus.Error.ServiceUnknown")
    with pytest.raises(BluezUnavailable, match=r"BlueZ is not running .*start bluetoothd"):
        await bluez.probe_adapter("hci0")


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("connect", "the system D-Bus did not answer within 3 s; restart dbus and bluetoothd"),
        ("call", "BlueZ did not answer on the system D-Bus within 3 s; restart bluetoothd"),
    ],
)
@pytest.mark.asyncio
async def test_probe_never_hangs(fake_bus: type[FakeBus], where: str, said: str) -> None:
    """And says which of the bus or BlueZ was silent."""
    setattr(fake_bus, f"{where}_hangs", True)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(BluezUnavailable) as exc:
        await bluez.probe_adapter("hci0", timeout=3)
    assert str(exc.value) == said
    assert loop.time() - t0 == pytest.approx(3)


def test_probe_without_a_system_bus_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    with pytest.raises(BluezUnavailable) as exc:
        asyncio.run(bluez.probe_adapter("hci0"))
    one_sentence(str(exc.value))
    assert f"unix:path={tmp_path / 'no-bus'}" in str(exc.value)
    assert "install bluez and start bluetoothd" in str(exc.value)


@pytest.mark.parametrize(
    ("text", "version"),
    [("5.66\n", (5, 66)), ("bluetoothctl: 5.50", (5, 50)), ("", None), ("unknown", None)],
)
def test_parse_version(text: str, version: tuple[int, int] | None) -> None:
    assert bluez.parse_version(text) == version

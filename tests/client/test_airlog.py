"""The air log: packet times as the link layers record them, and the longest silence the
benchmark reports (``max_silence_s``) computed from it."""

from __future__ import annotations

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.make_image import make_image
from smartball_sim.radio.airlog import Packet, Sender, Silence, longest_silence

H, D = Sender.HOST, Sender.DEVICE


def test_the_longest_gap_between_packets_on_one_link_in_either_direction() -> None:
    log = [
        Packet(0.0, 1, H, 6),
        Packet(0.5, 1, D, 26),
        Packet(2.0, 1, H, 244),  # 1.5 s after the device's packet
        Packet(2.1, 1, D, 10),
    ]
    assert longest_silence(log) == Silence(1.5, 0.5, 1)
    assert longest_silence(log, H) == Silence(2.0, 0.0, 1)
    assert longest_silence(log, D).seconds == pytest.approx(1.6)


def test_time_between_links_is_not_silence_and_order_does_not_matter() -> None:
    log = [
        Packet(10.0, 2, H, 6),  # the next link, after a 7 s reset
        Packet(0.0, 1, H, 6),
        Packet(3.0, 1, D, 6),
        Packet(0.2, 1, D, 6),
        Packet(10.1, 2, D, 26),
    ]
    silence = longest_silence(log)
    assert (silence.seconds, silence.after, silence.link) == (pytest.approx(2.8), 0.2, 1)


def test_no_silence_without_two_packets() -> None:
    assert longest_silence([]) == Silence(0.0)
    assert longest_silence([Packet(1.0, 1, H, 6)]) == Silence(0.0)


def test_nothing_is_recorded_unless_asked() -> None:
    target = make_sim_target()
    assert target.sim is not None and target.sim.air_log is None


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_model_radio_records_each_packet_at_its_connection_event() -> None:
    """Times are connection events (15 ms apart on the default profile): the device's answer
    to a write goes on air at the event after it; each DATA frame is one 242-byte write."""
    image = FirmwareImage(make_image(2048, 1), "tiny.bin")
    target = make_sim_target(faults="write-drop@offset:1000")  # a lost write is on air too
    assert target.sim is not None
    log: list[Packet] = []
    target.sim.air_log = log
    result = await OtaEngine(image, target.backend).run()
    assert result.success, result.error
    interval = target.sim.radio.link.connection_interval_s
    first = [pkt for pkt in log if pkt.link == 1]
    assert first[0].sender is H and first[0].size == 6  # CMD_INFO, a bare frame
    reply = next(pkt for pkt in first if pkt.sender is D)
    assert reply.time - first[0].time == pytest.approx(interval)
    data = [pkt for pkt in first if pkt.sender is H and pkt.size > 100]
    frame = p.FRAME_OVERHEAD + p.DATA_HEADER_SIZE
    assert {pkt.size for pkt in data} <= {232 + frame, 2048 % 232 + frame}
    # every DATA write the engine made is on air, the one the device lost included
    assert result.bytes_resent > 0
    assert sum(pkt.size - frame for pkt in data) == result.bytes_sent


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_bumble_peripheral_records_writes_and_notifications() -> None:
    pytest.importorskip("bumble")
    from pytest_smartball.targets.bumble import make_bumble_target

    image = FirmwareImage(make_image(2048, 1), "tiny.bin")
    target = make_bumble_target()
    log: list[Packet] = []
    target.device.air_log = log
    result = await OtaEngine(image, target.backend, address=target.address).run()
    assert result.success, result.error
    assert {pkt.sender for pkt in log} == {H, D}
    assert {pkt.link for pkt in log} == {1, 2}  # before and after the reset
    assert sum(pkt.sender is H and pkt.size > 100 for pkt in log) == 9  # 2048 / 232 chunks

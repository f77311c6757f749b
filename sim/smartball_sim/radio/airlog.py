"""What crossed a simulated device's links, and when: the packets of an update, and the
longest silence between them.

A *packet* here is one ATT packet of the OTA traffic: a host's write on NUS RX (a frame, or
a piece of one) or a device's notification on NUS TX (a frame, or a fragment of one cut at
the link's MTU - 3). Link-layer packets without data (the empty packets a connection event
exchanges when nobody has anything to say) are not counted: the radio model does not make
them, and what a supervision timeout or a user waits for is data.

The link layers record a packet when it is on air: the model radio at the connection event
that carries it, the Bumble peripheral when a write reaches it and when it hands a
notification to its stack. Recording is off until a log is given to the device
(``SimDevice.air_log``), so the simulator keeps nothing it was not asked for.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Packet", "Sender", "Silence", "longest_silence"]


class Sender(enum.StrEnum):
    HOST = "host"  # a write on NUS RX
    DEVICE = "device"  # a notification on NUS TX


@dataclass(frozen=True, slots=True)
class Packet:
    #: Seconds on the device's clock (the event loop's: virtual under looptime).
    time: float
    #: The device's connection number (1 for its first link since it was made).
    link: int
    sender: Sender
    #: ATT value bytes.
    size: int


@dataclass(frozen=True, slots=True)
class Silence:
    """The longest gap between two consecutive packets on one link."""

    seconds: float
    #: When it began (the packet before it), and on which link; None without two packets.
    after: float | None = None
    link: int | None = None


def longest_silence(packets: Iterable[Packet], sender: Sender | None = None) -> Silence:
    """The longest time between two consecutive packets on the same link, in either
    direction, or only among those of ``sender``. Time between links (a reset, a
    reconnect) is no silence on a link: there is none then. Packets are taken in time
    order per link, whatever order they are given in."""
    by_link: dict[int, list[float]] = {}
    for packet in packets:
        if sender is None or packet.sender is sender:
            by_link.setdefault(packet.link, []).append(packet.time)
    best = Silence(0.0)
    for link, times in sorted(by_link.items()):
        times.sort()
        for before, after in itertools.pairwise(times):
            if after - before > best.seconds:
                best = Silence(after - before, before, link)
    return best

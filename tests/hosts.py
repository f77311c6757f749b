"""A host on the NUS of a simulated SmartBall through the stock ``BleakClient`` (any bleak
backend onto simulated devices: the in-process radio model or the Bumble central): the
notifications it heard, the messages decoded from them, and its disconnections."""

from __future__ import annotations

import asyncio
from typing import Any

from bleak import BleakClient
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice

from pytest_smartball.contract import codec as p


class NusHost:
    def __init__(
        self, client_backend: type[BaseBleakClient], device: BLEDevice | str, **kwargs: Any
    ) -> None:
        #: The client each disconnection was reported for (bleak passes it) ...
        self.disconnects: list[BleakClient] = []
        #: ... and the loop time it was reported at.
        self.disconnect_times: list[float] = []
        self.decoder = p.FrameDecoder()
        #: Every notification as it arrived, and the messages decoded from them.
        self.chunks: list[bytes] = []
        self.messages: list[p.Message] = []
        self.client = BleakClient(
            device, backend=client_backend, disconnected_callback=self._on_disconnect, **kwargs
        )

    def _on_disconnect(self, client: BleakClient) -> None:
        self.disconnects.append(client)
        self.disconnect_times.append(asyncio.get_running_loop().time())

    def on_notify(self, _char: object, data: bytearray) -> None:
        self.chunks.append(bytes(data))
        for frame in self.decoder.feed(bytes(data)):
            self.messages.append(p.parse_message(frame))

    async def open(self) -> None:
        await self.client.connect()
        await self.client.start_notify(p.NUS_TX_UUID, self.on_notify)

    async def command(self, msg: p.Message) -> None:
        await self.client.write_gatt_char(p.NUS_RX_UUID, p.encode(msg), response=False)

    def types(self) -> list[type]:
        return [type(m) for m in self.messages]


class SimPeer:
    """The host end of a simulated link without bleak (a ``SimDevice`` peer): what it heard,
    decoded, with the loop time each message completed, and each loss of the link."""

    def __init__(self) -> None:
        self.decoder = p.FrameDecoder()
        self.raw: list[bytes] = []
        self.messages: list[p.Message] = []
        self.times: list[float] = []
        #: (loop time, the device's reason) for each loss of the link.
        self.lost: list[tuple[float, str]] = []

    def sim_notification(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self.raw.append(bytes(data))
        for frame in self.decoder.feed(data):
            self.messages.append(p.parse_message(frame))
            self.times.append(now)

    def sim_link_lost(self, reason: str) -> None:
        self.lost.append((asyncio.get_running_loop().time(), reason))

    def timed(self) -> list[tuple[float, p.Message]]:
        return list(zip(self.times, self.messages, strict=True))

    def types(self) -> list[type]:
        return [type(m) for m in self.messages]

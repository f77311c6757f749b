"""The update flow of the original field script, kept on purpose as a test helper.

It connects by bare address, keeps the link "alive" with a CMD_OTA_STATUS write every
3 s while the device erases, and never reconnects. On Linux this is what failed with
``BleakError: Service Discovery has not been performed yet`` when the link dropped during
the erase; tests use it to prove the simulator reproduces that failure.
"""

from __future__ import annotations

import asyncio

from bleak import BleakClient, BleakScanner

from pytest_smartball.contract import codec as p
from pytest_smartball.link import BleBackend

#: The field script's chunk at MTU 247, in whole words as protocol v1 requires (was 234).
CHUNK = 232


async def naive_flash(backend: BleBackend, address: str, image: bytes) -> None:
    """Flash like the original script; raises whatever bleak raises."""
    target = await BleakScanner.find_device_by_address(address, **backend.scanner_kwargs())
    assert target is not None, f"{address} not found"
    decoder = p.FrameDecoder()
    ready = asyncio.Event()
    done = asyncio.Event()

    def on_notify(_char: object, data: bytearray) -> None:
        for frame in decoder.feed(bytes(data)):
            msg = p.parse_message(frame)
            if isinstance(msg, p.MsgOtaReady):
                ready.set()
            elif isinstance(msg, p.MsgOtaDone):
                done.set()

    async with BleakClient(target.address, **backend.client_kwargs()) as client:
        await client.start_notify(p.NUS_TX_UUID, on_notify)
        start = p.CmdOtaStart(len(image), p.crc32(image), CHUNK)
        await client.write_gatt_char(p.NUS_RX_UUID, p.encode(start), response=False)
        for _ in range(40):  # up to 120 s, like the original loop
            try:
                await asyncio.wait_for(ready.wait(), 3.0)
                break
            except TimeoutError:
                # The keepalive that raised in the field once the link had dropped.
                keepalive = p.encode(p.CmdOtaStatus())
                await client.write_gatt_char(p.NUS_RX_UUID, keepalive, response=False)
        else:
            raise TimeoutError("no MSG_OTA_READY within 120 s")
        for offset in range(0, len(image), CHUNK):
            frame = p.encode_data_frame(offset, image[offset : offset + CHUNK])
            await client.write_gatt_char(p.NUS_RX_UUID, frame, response=False)
        await client.write_gatt_char(p.NUS_RX_UUID, p.encode(p.CmdOtaFinish()), response=False)
        await asyncio.wait_for(done.wait(), 15.0)

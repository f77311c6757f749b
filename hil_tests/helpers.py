"""Small protocol steps shared by the HIL tests (they hold on the simulator and hardware)."""

from __future__ import annotations

from pytest_smartball import protocol as p
from pytest_smartball.link import NusLink

#: A session's erase may take 40 s on hardware; progress arrives every page.
ERASE_SILENCE_S = 10.0
#: A full receive buffer is written within a fraction of this (protocol: ACK within 0.5 s).
ACK_WAIT_S = 5.0
MAX_FULL_BUFFER_WAITS = 3


async def start_session(nus: NusLink, image: bytes, crc32: int | None = None) -> p.MsgOtaReady:
    """ABORT anything under way, START a session for ``image``, wait for READY."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    chunk = nus.max_data_chunk
    await nus.send(p.CmdOtaStart(len(image), p.crc32(image) if crc32 is None else crc32, chunk))
    while True:
        msg = await nus.receive(ERASE_SILENCE_S)
        if isinstance(msg, p.MsgOtaReady):
            return msg
        assert not isinstance(msg, p.MsgError), f"START refused: {msg}"


async def send_chunks(
    nus: NusLink, image: bytes, ready: p.MsgOtaReady, start: int = 0, end: int | None = None
) -> int:
    """Stop-and-wait by windows (simple on purpose): returns the device's next offset."""
    chunk = min(ready.max_chunk, nus.max_data_chunk)
    end = len(image) if end is None else end
    offset = start
    full_buffer_waits = 0
    while offset < end:
        before = offset
        stop = min(offset + chunk * ready.window // 2, end)
        while offset < stop:
            size = min(chunk, stop - offset)
            await nus.send(p.CmdOtaData(offset, image[offset : offset + size]))
            offset += size
        status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
        assert isinstance(status, p.MsgOtaStatus), status
        if status.next_expected_offset == before and full_buffer_waits < MAX_FULL_BUFFER_WAITS:
            # STATUS grants no credit (only ACKs do): on a link faster than the flash
            # (Bumble's has no airtime) the receive buffer can be full. The flash frees it
            # and its next ACK says so: send the round again then.
            full_buffer_waits += 1
            await nus.wait_for((p.MsgOtaAck,), ACK_WAIT_S, "MSG_OTA_ACK with the buffer full")
            offset = before
            continue
        assert status.next_expected_offset > before, f"the device took nothing: {status}"
        offset = status.next_expected_offset
        full_buffer_waits = 0
    return offset

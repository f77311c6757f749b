"""Small protocol steps shared by the HIL tests (they hold on the simulator and hardware)."""

from __future__ import annotations

from pytest_smartball import protocol as p
from pytest_smartball.link import NusLink

#: A session's erase may take 40 s on hardware; progress arrives every page.
ERASE_SILENCE_S = 10.0


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
    while offset < end:
        before = offset
        stop = min(offset + chunk * ready.window // 2, end)
        while offset < stop:
            size = min(chunk, stop - offset)
            await nus.send(p.CmdOtaData(offset, image[offset : offset + size]))
            offset += size
        status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
        assert isinstance(status, p.MsgOtaStatus), status
        assert status.next_expected_offset > before, f"the device took nothing: {status}"
        offset = status.next_expected_offset
    return offset

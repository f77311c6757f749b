"""The firmware model driven directly, without a radio (tests/simulator/test_firmware_session.py,
_data, _flash, _decoder and the modules that go deeper into one of its rules): the firmware's
``send`` goes into a host-side FrameDecoder and each decoded message is stamped with the
loop's (virtual, looptime) time."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.codec import (
    CmdInfo,
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaStart,
    CmdOtaStatus,
    MsgError,
    MsgInfo,
    MsgOtaReady,
    MsgOtaStatus,
    OtaState,
)
from smartball_sim.firmware.model import PAGE_SIZE, FirmwareEvent, FlashTimings, SmartBallFirmware
from smartball_sim.make_image import make_image

OLD_IMAGE = bytes(range(256)) * 12  # 3072 bytes, the image the device runs
VERSION = (1, 4, 2)
CAPACITY = 5 * PAGE_SIZE
PAGE_S = 0.085
VERIFY_S_PER_BYTE = 1e-4  # 10 000 bytes verify in 1 s: long enough to observe VERIFYING
# An instant flash write: these tests feed chunks faster than any radio could; the flash
# write time and the receive buffer have tests of their own further down.
TIMINGS = FlashTimings(erase_page_s=PAGE_S, verify_s_per_byte=VERIFY_S_PER_BYTE, write_word_s=0.0)
NEW_IMAGE = make_image(10_000, 7, version=(2, 0, 1))  # 3 pages, version 2.0.1 in its descriptor
NEW_PAGES = math.ceil(len(NEW_IMAGE) / PAGE_SIZE)
CHUNK = 100


def start_for(
    image: bytes, chunk: int = CHUNK, crc: int | None = None, flags: int = 0
) -> CmdOtaStart:
    return CmdOtaStart(len(image), p.crc32(image) if crc is None else crc, chunk, flags)


def error_code(msg: object) -> int:
    assert isinstance(msg, MsgError), msg
    return msg.code


class Harness:
    """The firmware plus a host: decodes what the firmware sends, with loop timestamps."""

    def __init__(self, *, window: int = 4, timings: FlashTimings = TIMINGS, **kwargs: Any) -> None:
        self.decoder = p.FrameDecoder()
        self.log: list[tuple[float, p.Message]] = []
        self.resets: list[float] = []
        self.events: list[FirmwareEvent] = []
        self.loop = asyncio.get_running_loop()
        kwargs.setdefault("staging_capacity", CAPACITY)
        self.fw = SmartBallFirmware(
            active_image=OLD_IMAGE,
            version=VERSION,
            window=window,
            timings=timings,
            send=self._on_send,
            request_reset=lambda: self.resets.append(self.loop.time()),
            observe=self.events.append,
            **kwargs,
        )
        self._taken = 0

    def _on_send(self, frame: bytes) -> None:
        for f in self.decoder.feed(frame):
            self.log.append((self.loop.time(), p.parse_message(f)))

    def now(self) -> float:
        return self.loop.time()

    def send(self, msg: p.Message) -> None:
        self.fw.receive(p.encode(msg))

    def take(self) -> list[p.Message]:
        """Messages sent since the last take()."""
        new = [m for _, m in self.log[self._taken :]]
        self._taken = len(self.log)
        return new

    def ask(self, msg: p.Message) -> p.Message:
        """Send a command that gets exactly one immediate reply; return that reply."""
        self.take()
        self.send(msg)
        replies = self.take()
        assert len(replies) == 1, replies
        return replies[0]

    def status(self) -> MsgOtaStatus:
        self.take()
        self.send(CmdOtaStatus())
        reply = self.take()[0]  # (in RECEIVING an ACK follows it)
        assert isinstance(reply, MsgOtaStatus)
        return reply

    def info(self) -> MsgInfo:
        reply = self.ask(CmdInfo())
        assert isinstance(reply, MsgInfo)
        return reply

    # --- getting to a state ----------------------------------------------------------

    async def start_and_wait_ready(self, image: bytes = NEW_IMAGE, **kwargs: Any) -> MsgOtaReady:
        self.send(start_for(image, **kwargs))
        pages = math.ceil(len(image) / PAGE_SIZE)
        await asyncio.sleep(self.fw.timings.page_erase_time(pages) * pages + 0.001)
        msgs = self.take()
        assert isinstance(msgs[-1], MsgOtaReady), msgs
        assert self.fw.state == OtaState.RECEIVING
        return msgs[-1]

    def send_image(self, image: bytes = NEW_IMAGE, chunk: int = CHUNK, start: int = 0) -> None:
        for offset in range(start, len(image), chunk):
            self.send(CmdOtaData(offset, image[offset : offset + chunk]))

    async def goto(self, state: OtaState) -> None:
        """Bring the firmware into ``state`` with a NEW_IMAGE session where one applies.
        (COMPLETE lasts: this harness records the reset request and does not reset.)"""
        if state == OtaState.IDLE:
            return
        if state == OtaState.ERASING:
            self.send(start_for(NEW_IMAGE))
            await asyncio.sleep(PAGE_S * 1.5)  # one page erased, the second under way
        else:
            crc = p.crc32(NEW_IMAGE) if state != OtaState.ERROR else 0xDEADBEEF
            await self.start_and_wait_ready(NEW_IMAGE, crc=crc)
            if state != OtaState.RECEIVING:
                self.send_image()
                self.send(CmdOtaFinish())
                if state == OtaState.VERIFYING:
                    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE) / 2)
                else:
                    await asyncio.sleep(VERIFY_S_PER_BYTE * len(NEW_IMAGE) + 0.001)
        self.take()
        assert self.fw.state == state


#: A flash that takes the nRF52840's time to write a word (t_WRITE, 41 us), where TIMINGS'
#: writes take none.
SLOW_FLASH = FlashTimings(erase_page_s=PAGE_S, write_word_s=41e-6)

"""The signed-update firmware tests' device and images (docs/protocol.md section 16): the old
and new images, the test keys, a signed update's manifest, and Ball, a provisioned or v1
SmartBallFirmware driven directly on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Any

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.codec import (
    CmdInfo,
    CmdOtaConfirm,
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaManifest,
    CmdOtaStart,
    ErrorCode,
    MsgError,
    MsgInfo,
    MsgOtaReady,
    MsgOtaStatus,
)
from pytest_smartball.contract.manifest import MANIFEST_SIZE, SignedImage
from smartball_sim.firmware.model import PAGE_SIZE, FlashTimings, SmartBallFirmware
from smartball_sim.make_image import make_image

OLD_IMAGE = make_image(6_000, 3, version=(1, 0, 0))
NEW_IMAGE = make_image(10_000, 7, version=(2, 0, 1))
CAPACITY = 5 * PAGE_SIZE
TIMINGS = FlashTimings(erase_page_s=0.085, verify_s_per_byte=1e-6, write_word_s=0.0)
KEY = signing.test_key()
TRUSTED = signing.test_trusted_key()
OTHER_KEY = signing.generate()
CHUNK = 100


def signed(
    image: bytes = NEW_IMAGE,
    counter: int = 5,
    key: Any = KEY,
    version: tuple[int, int, int] = (2, 0, 1),
) -> SignedImage:
    return signing.sign(image, key, version, counter)


def manifest_cmd(head: bytes) -> CmdOtaManifest:
    return CmdOtaManifest(head[:MANIFEST_SIZE], head[MANIFEST_SIZE:])


def start_for(image: bytes) -> CmdOtaStart:
    return CmdOtaStart(len(image), p.crc32(image), CHUNK, 0)


class Ball:
    """The firmware and a host; ``reset()`` is the power cycle (what the device does after
    DONE, or a power cut)."""

    def __init__(self, *, trusted: bool = True, counter: int = 3, **kwargs: Any) -> None:
        self.decoder = p.FrameDecoder()
        self.replies: list[p.Message] = []
        self.reset_requests = 0
        kwargs.setdefault("staging_capacity", CAPACITY)
        kwargs.setdefault("timings", TIMINGS)
        self.fw = SmartBallFirmware(
            active_image=OLD_IMAGE,
            version=(1, 0, 0),
            window=4,
            send=self._on_send,
            request_reset=self._on_reset_request,
            trusted_keys=[TRUSTED] if trusted else [],
            security_counter=counter,
            **kwargs,
        )

    def _on_send(self, frame: bytes) -> None:
        self.replies.extend(p.parse_message(f) for f in self.decoder.feed(frame))

    def _on_reset_request(self) -> None:
        self.reset_requests += 1

    def ask(self, msg: p.Message) -> p.Message:
        self.replies.clear()
        self.fw.receive(p.encode(msg))
        assert len(self.replies) == 1, self.replies
        return self.replies[0]

    def refused(self, msg: p.Message) -> ErrorCode:
        reply = self.ask(msg)
        assert isinstance(reply, MsgError), reply
        assert reply.command == msg.TYPE
        return ErrorCode(reply.code)

    def info(self) -> MsgInfo:
        reply = self.ask(CmdInfo())
        assert isinstance(reply, MsgInfo)
        return reply

    def confirm(self) -> MsgInfo:
        reply = self.ask(CmdOtaConfirm())
        assert isinstance(reply, MsgInfo)
        return reply

    async def transfer(self, image: bytes = NEW_IMAGE) -> list[p.Message]:
        """START (the manifest already accepted), the erase, every chunk, FINISH, verify."""
        self.replies.clear()
        self.fw.receive(p.encode(start_for(image)))
        pages = math.ceil(len(image) / PAGE_SIZE)
        await asyncio.sleep(0.085 * pages + 0.01)
        assert isinstance(self.replies[-1], MsgOtaReady), self.replies
        for offset in range(0, len(image), CHUNK):
            self.fw.receive(p.encode(CmdOtaData(offset, image[offset : offset + CHUNK])))
        self.replies.clear()
        self.fw.receive(p.encode(CmdOtaFinish()))
        await asyncio.sleep(0.1)
        return list(self.replies)

    async def update(self, update: SignedImage | None = None) -> list[p.Message]:
        update = update or signed()
        assert isinstance(self.ask(manifest_cmd(update.head)), MsgOtaStatus)
        return await self.transfer(update.image)

    def reset(self) -> float:
        return self.fw.power_cycle()


def _with_field(head: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(head)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = signed()

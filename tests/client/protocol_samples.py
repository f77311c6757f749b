"""What the tests of the protocol codec share: one or more instances of every message type,
with boundary values.
"""

from __future__ import annotations

from pytest_smartball.contract import codec as protocol
from pytest_smartball.contract.codec import (
    MAX_PAYLOAD,
    SOF,
    CmdInfo,
    CmdOtaAbort,
    CmdOtaConfirm,
    CmdOtaData,
    CmdOtaFinish,
    CmdOtaManifest,
    CmdOtaStart,
    CmdOtaStatus,
    MsgError,
    MsgInfo,
    MsgOtaAck,
    MsgOtaDone,
    MsgOtaProgress,
    MsgOtaReady,
    MsgOtaStatus,
)

U8, U16, U32 = 0xFF, 0xFFFF, 0xFFFF_FFFF

#: One or more instances of every message type, with boundary values.
SAMPLES: list[protocol.Message] = [
    CmdInfo(),
    CmdOtaStart(image_size=323194, image_crc32=0xDEADBEEF, chunk_size=234),
    CmdOtaStart(image_size=U32, image_crc32=U32, chunk_size=U16),
    CmdOtaStart(image_size=0, image_crc32=0, chunk_size=0),
    CmdOtaData(offset=0, data=b"\x00"),
    CmdOtaData(offset=U32, data=bytes(i & 0xFF for i in range(MAX_PAYLOAD - 4))),
    CmdOtaData(offset=1234, data=b""),
    CmdOtaData(offset=7, data=bytes([SOF]) * 20),
    CmdOtaStatus(),
    CmdOtaAbort(),
    CmdOtaFinish(),
    CmdOtaManifest(manifest=bytes(range(56)), signature=bytes(range(64, 128))),
    CmdOtaManifest(manifest=bytes([SOF]) * 56, signature=b"\xff" * 64),
    CmdOtaConfirm(),
    MsgInfo(1, 1, 4, 2, 301568, 0x1C291CA3, 491520),
    MsgInfo(U8, U8, U8, U8, U32, U32, U32),
    MsgInfo(1, 2, 0, 1, 10000, 0x1C291CA3, 491520, 2, 5, 1, 0xA1B2C3D4),
    MsgInfo(U8, U8, U8, U8, U32, U32, U32, U32, U32, U8, U32),
    MsgOtaReady(max_chunk=234, window=16),
    MsgOtaReady(max_chunk=U16, window=U16),
    MsgOtaProgress(phase=1, done=4096, total=323584),
    MsgOtaProgress(phase=2, done=U32, total=U32),
    MsgOtaStatus(state=0, next_expected_offset=0, image_size=0, image_crc32=0),
    MsgOtaStatus(state=5, next_expected_offset=U32, image_size=U32, image_crc32=U32),
    MsgOtaAck(next_expected_offset=U32),
    MsgOtaDone(crc32=0xCBF43926),
    MsgError(code=2, text="bad state"),
    MsgError(code=U8, text=""),
    MsgError(code=8, text="Größe ≠ 0 — 🏐"),
    MsgError(code=1, command=0x11, text="x" * (MAX_PAYLOAD - 2)),
]

"""SmartBall OTA protocol v1: a pure codec (bytes in, typed messages out, and back).

No asyncio and no bleak here: the client and the simulated device both build on this
module, so the two sides cannot drift apart. ``docs/protocol.md`` is the contract the
firmware must match; its worked examples are checked by ``tests/client/test_protocol_messages.py``.

Frame (little-endian)::

    0xA5 | type u8 | length u16 | payload (length bytes, <= 512) | crc16 u16

The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xor-out)
over type + length + payload. ``binascii.crc_hqx`` from the standard library computes
exactly that in C, so no third-party CRC package is needed; CRC-32 of images is
``zlib.crc32`` (IEEE 802.3, the same as the nRF5 SDK's ``crc32_compute``).
"""

from __future__ import annotations

import binascii
import enum
import struct
import zlib
from dataclasses import astuple, dataclass, field, fields
from typing import Any, ClassVar

SOF = 0xA5
MAX_PAYLOAD = 512
HEADER_SIZE = 4  # SOF, type, length u16
CRC_SIZE = 2
FRAME_OVERHEAD = HEADER_SIZE + CRC_SIZE
DATA_HEADER_SIZE = 4  # offset u32 in front of CMD_OTA_DATA's bytes
#: The largest frame on the wire (a 512-byte payload); a decoder's buffer holds one.
MAX_FRAME = MAX_PAYLOAD + FRAME_OVERHEAD
#: The flash is written in 32-bit words: every chunk but the image's last is a multiple of
#: this, so every chunk starts word aligned and no word is written twice.
WORD_SIZE = 4
#: Largest image chunk a device grants (``max_chunk`` in READY). A whole DATA frame must
#: fit one ATT write, and an attribute value is at most 512 bytes: 500 + 10 = 510 <= 512.
MAX_DATA_CHUNK = 500
#: Smallest ``chunk_size`` a START may ask for: one word.
MIN_CHUNK_SIZE = WORD_SIZE
#: Longest MSG_ERROR text a device sends (UTF-8 bytes). Hosts accept any length.
MAX_ERROR_TEXT = 48
#: A receiver discards a partial frame when no byte has arrived for this long (seconds).
DECODER_IDLE_S = 1.0
PROTOCOL_VERSION = 1

NUS_SERVICE_UUID = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
#: Host -> device, write without response.
NUS_RX_UUID = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
#: Device -> host, notify.
NUS_TX_UUID = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
#: The name a SmartBall advertises unless configured otherwise.
DEFAULT_NAME = "SmartBall"

_CRC = struct.Struct("<H")
_IDLE_US = round(DECODER_IDLE_S * 1_000_000)


def whole_words(size: int) -> int:
    """``size`` rounded down to whole 32-bit words (the NVMC writes words, P8)."""
    return size - size % WORD_SIZE


def max_data_chunk(write_size: int) -> int:
    """The host's chunk size: the image bytes one CMD_OTA_DATA frame carries when it fits
    one write of ``write_size`` bytes (the link's MTU - 3), in whole words, at most
    MAX_DATA_CHUNK. MTU 247: 244 - 10 = 234 -> 232; MTU 23: 20 - 10 = 10 -> 8."""
    return whole_words(min(MAX_DATA_CHUNK, write_size - FRAME_OVERHEAD - DATA_HEADER_SIZE))


def granted_max_chunk(chunk_size: int) -> int:
    """The device's ``max_chunk`` for a START asking for ``chunk_size`` (>= MIN_CHUNK_SIZE):
    at most MAX_DATA_CHUNK, rounded down to whole words."""
    return whole_words(min(chunk_size, MAX_DATA_CHUNK))


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE; check value ``crc16_ccitt_false(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE); check value ``crc32(b"123456789") == 0xCBF43926``."""
    return zlib.crc32(data) & 0xFFFFFFFF


class ProtocolError(ValueError):
    """A frame or payload that does not follow protocol v1."""


class MsgType(enum.IntEnum):
    CMD_INFO = 0x01
    CMD_OTA_START = 0x10
    CMD_OTA_DATA = 0x11
    CMD_OTA_STATUS = 0x12
    CMD_OTA_ABORT = 0x13
    CMD_OTA_FINISH = 0x14
    #: Signed updates (docs/protocol.md section 16), on a device advertising SIGNED_IMAGES.
    CMD_OTA_MANIFEST = 0x15
    CMD_OTA_CONFIRM = 0x16
    MSG_INFO = 0x81
    MSG_OTA_READY = 0x90
    MSG_OTA_PROGRESS = 0x91
    MSG_OTA_STATUS = 0x92
    MSG_OTA_ACK = 0x93
    MSG_OTA_DONE = 0x94
    MSG_ERROR = 0xEE


class OtaState(enum.IntEnum):
    IDLE = 0
    ERASING = 1
    RECEIVING = 2
    VERIFYING = 3
    COMPLETE = 4
    ERROR = 5


class OtaPhase(enum.IntEnum):
    ERASE = 1
    VERIFY = 2


class Capability(enum.IntFlag):
    """Bits of ``MsgInfo.capabilities``: what this device can do beyond the v1 baseline.
    A host ignores bits it does not know."""

    NONE = 0
    #: The device erases each staging page just before writing it (see docs/protocol.md).
    PROGRESSIVE_ERASE = 0x1
    #: The device runs only images signed by a key it trusts (docs/protocol.md section 16):
    #: CMD_OTA_MANIFEST before START, SHA-256 of the staged flash at FINISH, a new image
    #: boots in test state and reverts at the next reset unless CMD_OTA_CONFIRM confirms it.
    SIGNED_IMAGES = 0x2


class StartFlag(enum.IntFlag):
    """Bits of ``CmdOtaStart.flags``: what the host asks of the session. A host sets only
    bits whose capability the device advertised; a device ignores bits it does not know."""

    NONE = 0
    PROGRESSIVE_ERASE = 0x1


class ErrorCode(enum.IntEnum):
    BAD_FRAME = 1
    BAD_STATE = 2
    BAD_OFFSET = 3
    TOO_LARGE = 4
    CRC_MISMATCH = 5
    FLASH_ERROR = 6
    UNKNOWN_COMMAND = 7
    BAD_PARAM = 8
    # Signed updates (section 16): a manifest or an image the device will not run.
    BAD_MANIFEST = 9
    UNTRUSTED_KEY = 10
    BAD_SIGNATURE = 11
    DOWNGRADE = 12
    UNSIGNED = 13
    DIGEST_MISMATCH = 14


class ImageState(enum.IntEnum):
    """``MsgInfo.image_state`` on a device with SIGNED_IMAGES: may the running image stay?"""

    #: Confirmed: it runs after every reset.
    CONFIRMED = 0
    #: Booted for the first time after an update; the next reset reverts to the previous
    #: image unless CMD_OTA_CONFIRM comes first.
    TEST = 1
    #: Confirmed, and running because the last boot reverted an unconfirmed image.
    REVERTED = 2


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame whose CRC checked out; its payload is not interpreted yet."""

    type: int
    payload: bytes


# --- messages ---------------------------------------------------------------------------
# Each message class knows its type byte and its fixed payload layout (a struct format);
# the variable tails (DATA's bytes, ERROR's text) are handled in encode/decode below.
#
# Growing the protocol without a new version: a fixed-layout message may gain fields at
# its end. ``OPTIONAL`` names how many of the last fields are such additions; a receiver
# takes their defaults when a shorter (older) payload lacks them, and ignores bytes beyond
# the fields it knows. An encoder leaves trailing optional fields out while they hold their
# defaults, so what an older peer sends and expects stays byte for byte the same.


@dataclass(frozen=True, slots=True)
class CmdInfo:
    TYPE: ClassVar[MsgType] = MsgType.CMD_INFO
    LAYOUT: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class CmdOtaStart:
    TYPE: ClassVar[MsgType] = MsgType.CMD_OTA_START
    LAYOUT: ClassVar[str] = "IIHI"
    OPTIONAL: ClassVar[int] = 1
    image_size: int
    image_crc32: int
    chunk_size: int
    #: StartFlag bits; sent only when not 0.
    flags: int = 0


@dataclass(frozen=True, slots=True)
class CmdOtaData:
    TYPE: ClassVar[MsgType] = MsgType.CMD_OTA_DATA
    LAYOUT: ClassVar[str] = "I"
    offset: int
    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"CmdOtaData(offset={self.offset}, len={len(self.data)})"


@dataclass(frozen=True, slots=True)
class CmdOtaStatus:
    TYPE: ClassVar[MsgType] = MsgType.CMD_OTA_STATUS
    LAYOUT: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class CmdOtaAbort:
    TYPE: ClassVar[MsgType] = MsgType.CMD_OTA_ABORT
    LAYOUT: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class CmdOtaFinish:
    TYPE: ClassVar[MsgType] = MsgType.CMD_OTA_FINISH
    LAYOUT: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class CmdOtaManifest:
    """The signed manifest of the image the next session will carry (section 16): the
    manifest's 56 bytes and the Ed25519 signature over them (``pytest_smartball.contract.manifest``
    reads and builds both)."""

    TYPE: ClassVar[MsgType] = MsgType.CMD_OTA_MANIFEST
    LAYOUT: ClassVar[str] = "56s64s"
    manifest: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    def __repr__(self) -> str:
        head, sig = self.manifest[:8].hex(), self.signature[:4].hex()
        return f"CmdOtaManifest(manifest={head}…, signature={sig}…)"


@dataclass(frozen=True, slots=True)
class CmdOtaConfirm:
    """Keep the running image (section 16): a test image becomes confirmed."""

    TYPE: ClassVar[MsgType] = MsgType.CMD_OTA_CONFIRM
    LAYOUT: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class MsgInfo:
    TYPE: ClassVar[MsgType] = MsgType.MSG_INFO
    LAYOUT: ClassVar[str] = "BBBBIIIIIBI"
    OPTIONAL: ClassVar[int] = 4
    protocol_version: int
    fw_major: int
    fw_minor: int
    fw_patch: int
    active_image_size: int
    active_image_crc32: int
    staging_capacity: int
    #: Capability bits; sent only when not 0.
    capabilities: int = 0
    #: SIGNED_IMAGES: the lowest security counter an image may carry (raised at confirm).
    security_counter: int = 0
    #: SIGNED_IMAGES: an ImageState.
    image_state: int = 0
    #: SIGNED_IMAGES: the key id (pytest_smartball.contract.manifest.key_id) of the key it trusts.
    trusted_key_id: int = 0

    @property
    def signed_only(self) -> bool:
        """Whether this device runs only signed images (it advertises SIGNED_IMAGES)."""
        return bool(self.capabilities & Capability.SIGNED_IMAGES)

    @property
    def firmware_version(self) -> str:
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"

    def runs(self, image_size: int, image_crc32: int) -> bool:
        """Whether the device that answered runs exactly this image (size and CRC-32)."""
        return (self.active_image_size, self.active_image_crc32) == (image_size, image_crc32)


@dataclass(frozen=True, slots=True)
class MsgOtaReady:
    TYPE: ClassVar[MsgType] = MsgType.MSG_OTA_READY
    LAYOUT: ClassVar[str] = "HH"
    max_chunk: int
    window: int


@dataclass(frozen=True, slots=True)
class MsgOtaProgress:
    TYPE: ClassVar[MsgType] = MsgType.MSG_OTA_PROGRESS
    LAYOUT: ClassVar[str] = "BII"
    phase: int
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class MsgOtaStatus:
    TYPE: ClassVar[MsgType] = MsgType.MSG_OTA_STATUS
    LAYOUT: ClassVar[str] = "BIII"
    state: int
    next_expected_offset: int
    image_size: int
    image_crc32: int

    @property
    def state_name(self) -> str:
        try:
            return OtaState(self.state).name.lower()
        except ValueError:
            return f"unknown({self.state})"


@dataclass(frozen=True, slots=True)
class MsgOtaAck:
    TYPE: ClassVar[MsgType] = MsgType.MSG_OTA_ACK
    LAYOUT: ClassVar[str] = "I"
    next_expected_offset: int


@dataclass(frozen=True, slots=True)
class MsgOtaDone:
    TYPE: ClassVar[MsgType] = MsgType.MSG_OTA_DONE
    LAYOUT: ClassVar[str] = "I"
    crc32: int


@dataclass(frozen=True, slots=True)
class MsgError:
    TYPE: ClassVar[MsgType] = MsgType.MSG_ERROR
    LAYOUT: ClassVar[str] = "BB"
    code: int
    #: Type byte of the frame this error answers (0 when it answers none).
    command: int = 0
    text: str = ""

    @property
    def command_name(self) -> str:
        try:
            return MsgType(self.command).name
        except ValueError:
            return f"0x{self.command:02X}"

    @property
    def code_name(self) -> str:
        try:
            return ErrorCode(self.code).name
        except ValueError:
            return f"UNKNOWN({self.code})"


Command = (
    CmdInfo
    | CmdOtaStart
    | CmdOtaData
    | CmdOtaStatus
    | CmdOtaAbort
    | CmdOtaFinish
    | CmdOtaManifest
    | CmdOtaConfirm
)
DeviceMessage = (
    MsgInfo | MsgOtaReady | MsgOtaProgress | MsgOtaStatus | MsgOtaAck | MsgOtaDone | MsgError
)
Message = Command | DeviceMessage

_CLASSES: dict[int, type[Any]] = {
    cls.TYPE: cls
    for cls in (
        CmdInfo,
        CmdOtaStart,
        CmdOtaData,
        CmdOtaStatus,
        CmdOtaAbort,
        CmdOtaFinish,
        CmdOtaManifest,
        CmdOtaConfirm,
        MsgInfo,
        MsgOtaReady,
        MsgOtaProgress,
        MsgOtaStatus,
        MsgOtaAck,
        MsgOtaDone,
        MsgError,
    )
}
_STRUCTS: dict[int, struct.Struct] = {t: struct.Struct("<" + c.LAYOUT) for t, c in _CLASSES.items()}
#: Payload bytes a message of each type must have: its layout without the optional tail.
_REQUIRED_SIZE: dict[int, int] = {
    t: struct.calcsize("<" + c.LAYOUT[: len(c.LAYOUT) - getattr(c, "OPTIONAL", 0)])
    for t, c in _CLASSES.items()
}
_VARIABLE_TAIL = {MsgType.CMD_OTA_DATA, MsgType.MSG_ERROR}
COMMAND_TYPES = frozenset(t for t in _CLASSES if t < 0x80)
#: Commands the device may answer with MSG_ERROR; INFO, STATUS and ABORT are answered in
#: every state, so an error that arrives while waiting for their reply belongs to an
#: earlier command.
REFUSABLE_COMMANDS = frozenset(
    {
        MsgType.CMD_OTA_START,
        MsgType.CMD_OTA_DATA,
        MsgType.CMD_OTA_FINISH,
        MsgType.CMD_OTA_MANIFEST,
        # Answered with MSG_INFO in every state by a signed-only device, and refused with
        # UNKNOWN_COMMAND by a v1 device, which does not know it.
        MsgType.CMD_OTA_CONFIRM,
    }
)


def encode_frame(msg_type: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    if not 0 <= msg_type <= 0xFF:
        raise ProtocolError(f"message type {msg_type} does not fit in a byte")
    body = bytes((msg_type, len(payload) & 0xFF, len(payload) >> 8)) + payload
    return bytes((SOF,)) + body + _CRC.pack(crc16_ccitt_false(body))


def encode_payload(msg: Message) -> bytes:
    fixed = _STRUCTS[msg.TYPE]
    try:
        if isinstance(msg, CmdOtaData):
            return fixed.pack(msg.offset) + bytes(msg.data)
        if isinstance(msg, MsgError):
            return fixed.pack(msg.code, msg.command) + msg.text.encode("utf-8")
        return _drop_default_tail(msg, fixed.pack(*astuple(msg)))
    except (struct.error, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {msg!r}: {exc}") from exc


def _drop_default_tail(msg: Message, payload: bytes) -> bytes:
    """Leave out trailing optional fields that hold their defaults (see OPTIONAL)."""
    optional = getattr(msg, "OPTIONAL", 0)
    if not optional:
        return payload
    names = [f.name for f in fields(msg)]
    keep = len(names)
    while keep > len(names) - optional and getattr(msg, names[keep - 1]) == 0:
        keep -= 1
    return payload[: struct.calcsize("<" + msg.LAYOUT[:keep])]


def encode(msg: Message) -> bytes:
    """The complete frame for one message."""
    return encode_frame(msg.TYPE, encode_payload(msg))


def encode_data_frame(offset: int, data: bytes) -> bytes:
    """Fast path for CMD_OTA_DATA, the one frame sent thousands of times per update."""
    if not 0 <= offset <= 0xFFFFFFFF:
        raise ProtocolError(f"offset {offset} does not fit in u32")
    return encode_frame(MsgType.CMD_OTA_DATA, offset.to_bytes(4, "little") + data)


def parse_message(frame: Frame) -> Message:
    """Interpret a frame's payload; raises ProtocolError for an unknown type or bad length."""
    cls = _CLASSES.get(frame.type)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{frame.type:02X}")
    fixed = _STRUCTS[frame.type]
    payload = frame.payload
    required = _REQUIRED_SIZE[frame.type]
    if len(payload) < required:
        raise ProtocolError(
            f"{cls.TYPE.name} payload is {len(payload)} bytes, needs at least {required}"
        )
    if frame.type in _VARIABLE_TAIL:
        head = fixed.unpack_from(payload)
        tail = payload[fixed.size :]
        if cls is MsgError:
            return MsgError(head[0], head[1], text=tail.decode("utf-8", errors="replace"))
        return CmdOtaData(head[0], bytes(tail))
    if len(payload) < fixed.size:  # an older peer: the optional fields take their defaults
        present = struct.Struct("<" + _present_layout(cls.LAYOUT, len(payload)))
        return cls(*present.unpack_from(payload))
    # Bytes beyond the fields this codec knows are a newer peer's additions: ignored.
    return cls(*fixed.unpack_from(payload))


def _present_layout(layout: str, size: int) -> str:
    """The longest prefix of ``layout`` whose fields fit in ``size`` bytes."""
    for end in range(len(layout), -1, -1):
        if struct.calcsize("<" + layout[:end]) <= size:
            return layout[:end]
    return ""


def decode(frame_bytes: bytes) -> Message:
    """Decode exactly one complete frame (test vectors, tools); raises ProtocolError."""
    decoder = FrameDecoder()
    frames = decoder.feed(frame_bytes)
    if len(frames) != 1 or decoder.buffered or decoder.stats.dropped_bytes:
        raise ProtocolError(f"not exactly one valid frame: {frame_bytes.hex(' ')}")
    return parse_message(frames[0])


@dataclass(slots=True)
class DecoderStats:
    frames: int = 0
    dropped_bytes: int = 0
    bad_crc: int = 0
    bad_length: int = 0


class FrameDecoder:
    """Streaming decoder: frames may be split across packets and packets may hold several.

    On garbage, a bad length or a bad CRC it drops only the SOF that started the bad frame
    and rescans from the next byte, so a real frame that began inside the bad one is found
    again, and one corrupted notification costs one frame, not the link. What it drops is
    counted in ``stats``.

    Given the time of arrival (``feed(data, now)``, seconds on any monotonic clock), it
    also discards a partial frame when no byte has arrived for DECODER_IDLE_S: the rule
    docs/protocol.md makes a MUST for both ends, so a stray SOF or a frame cut by a lost
    write cannot hold back the frames behind it.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.stats = DecoderStats()
        #: When the last byte arrived, in whole microseconds (None: no time given yet).
        self._last_byte_us: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def reset(self) -> None:
        """Forget a partial frame (after a link drop, its tail will never arrive)."""
        self.stats.dropped_bytes += len(self._buffer)
        self._buffer.clear()

    def feed(self, data: bytes, now: float | None = None) -> list[Frame]:
        """Frames completed by ``data``. ``now`` (seconds) enables the idle rule: a partial
        frame older than DECODER_IDLE_S by then is discarded before ``data`` is taken."""
        if now is not None and data:
            now_us = round(now * 1_000_000)
            last = self._last_byte_us
            if self._buffer and last is not None and now_us - last >= _IDLE_US:
                self.reset()
            self._last_byte_us = now_us
        buf = self._buffer
        buf += data
        frames: list[Frame] = []
        while buf:
            if buf[0] != SOF:
                start = buf.find(SOF)
                skipped = len(buf) if start < 0 else start
                self.stats.dropped_bytes += skipped
                del buf[:skipped]
                continue
            if len(buf) < HEADER_SIZE:
                break
            msg_type, length = buf[1], buf[2] | (buf[3] << 8)
            if length > MAX_PAYLOAD:
                self.stats.bad_length += 1
                self._drop_sof()
                continue
            end = HEADER_SIZE + length + CRC_SIZE
            if len(buf) < end:
                break
            body = bytes(buf[1 : HEADER_SIZE + length])
            (received_crc,) = _CRC.unpack_from(buf, HEADER_SIZE + length)
            if crc16_ccitt_false(body) != received_crc:
                self.stats.bad_crc += 1
                self._drop_sof()
                continue
            frames.append(Frame(msg_type, body[HEADER_SIZE - 1 :]))
            self.stats.frames += 1
            del buf[:end]
        return frames

    def _drop_sof(self) -> None:
        self.stats.dropped_bytes += 1
        del self._buffer[:1]

"""What the sessions send: the small images they update with and the frames that carry
them (START, DATA, a signed head and its CMD_OTA_MANIFEST)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import Manifest

# The sessions: a small image (40 bytes, 8-byte chunks, window 4: ACK every 2 chunks) keeps
# the vectors short; one page erases in 85 ms.
IMAGE = bytes((i * 7 + 3) & 0xFF for i in range(40))
CHUNK = 8
EIGHTY = bytes(range(80))
TWO_PAGES = bytes(range(256)) * 20  # 5120 bytes: two pages


def start(
    image: bytes = IMAGE, chunk: int = CHUNK, crc: int | None = None, flags: int = 0
) -> bytes:
    crc = p.crc32(image) if crc is None else crc
    return p.encode(p.CmdOtaStart(len(image), crc, chunk, flags=flags))


def data(offset: int, chunk: bytes) -> bytes:
    return p.encode(p.CmdOtaData(offset, chunk))


def chunks(image: bytes = IMAGE, size: int = CHUNK, first: int = 0) -> Iterator[bytes]:
    for offset in range(first, len(image), size):
        yield data(offset, image[offset : offset + size])


#: The session image of the table's ERASING cells: two pages, so the erase is still under
#: way when a command that arrived during the first page is handled.
ERASING_IMAGE = bytes(8192)


def signed_head(image: bytes = IMAGE, counter: int = 5, **fields: Any) -> bytes:
    """The manifest of ``image`` (fields overridden as given) signed with the test key."""
    kid = signing.test_trusted_key().key_id
    manifest = Manifest.describe(image, (2, 0, 1), counter, kid)
    if fields:
        from dataclasses import replace

        manifest = replace(manifest, **fields)
    body = manifest.encode()
    return body + signing.test_key().sign(body)


def manifest_cmd(head: bytes) -> bytes:
    return p.encode_frame(p.MsgType.CMD_OTA_MANIFEST, head)

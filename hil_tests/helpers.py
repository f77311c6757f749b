"""Small protocol steps shared by the HIL tests (they hold on the simulator and hardware)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from pytest_smartball import contract
from pytest_smartball.contract import Timing
from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import MANIFEST_SIZE, Manifest
from pytest_smartball.link import LinkSettings, NusLink, ResponseTimeout, find_device
from pytest_smartball.targets import Target

if TYPE_CHECKING:
    from pytest_smartball.suite_signer import SuiteSigner

#: A session's erase may take 40 s on hardware; progress arrives every page.
ERASE_SILENCE_S = 10.0
#: A full receive buffer is written within a fraction of this (protocol: ACK within 0.5 s).
ACK_WAIT_S = 5.0
MAX_FULL_BUFFER_WAITS = 3
#: A flash page: what an erase MSG_OTA_PROGRESS counts in (protocol section 5).
PAGE_SIZE = contract.flash_layout().page_size


class SuiteKey:
    """The key this test signs its sessions' manifests with (``smartball_signer``: the
    ``--signing-key``, on the simulator by default the repository's test key). Set for
    each test by hil_tests/conftest.py, so that every helper that opens a session, however
    deep, signs with the run's key."""

    signer: SuiteSigner | None = None


#: What a signed-only device without a key for the suite means (on hardware).
NO_SIGNING_KEY = (
    "the device runs only signed images (it advertises SIGNED_IMAGES) and the suite has "
    "no key to sign this session's manifest with: give it the key the device trusts "
    "with --signing-key PATH"
)


async def present_manifest(
    nus: NusLink,
    image: bytes,
    crc32: int | None = None,
    info: p.MsgInfo | None = None,
    signed_head: bytes | None = None,
) -> p.MsgInfo:
    """What every new session of the release gate sends before CMD_OTA_START: on a device
    that advertises SIGNED_IMAGES, CMD_OTA_MANIFEST for ``image`` announced with ``crc32``
    (signed with the suite's key at the device's security counter), which the device must
    accept with MSG_OTA_STATUS; on a v1 device nothing. Returns the device's MSG_INFO
    (``info`` when the caller has it already). ``signed_head``: the image's own manifest
    and signature (a signed image file's), sent instead of the suite's."""
    if info is None:
        got = await nus.request(p.CmdInfo(), (p.MsgInfo,))
        assert isinstance(got, p.MsgInfo), got
        info = got
    if not info.signed_only:
        return info
    assert info.image_state != p.ImageState.TEST, (
        f"a new session on a device whose image is in TEST state ({info}): the test must "
        "confirm it (CMD_OTA_CONFIRM) or reset it first, the device refuses MANIFEST then"
    )
    if signed_head is not None:
        command = p.CmdOtaManifest(signed_head[:MANIFEST_SIZE], signed_head[MANIFEST_SIZE:])
        signed_by = "its own key"
    else:
        signer = SuiteKey.signer
        assert signer is not None, NO_SIGNING_KEY
        command = signer.manifest_command(image, counter=info.security_counter, crc32=crc32)
        signed_by = f"{signer.source} (key id {signer.key_id:#010x})"
    reply = await nus.request(command, (p.MsgOtaStatus,))
    assert isinstance(reply, p.MsgOtaStatus), (
        f"the device refused the manifest of a {len(image)}-byte session signed by "
        f"{signed_by} (the device trusts key {info.trusted_key_id:#010x}, its counter is "
        f"{info.security_counter}): {reply}"
    )
    return info


async def start_session(nus: NusLink, image: bytes, crc32: int | None = None) -> p.MsgOtaReady:
    """ABORT anything under way, START a session for ``image``, wait for READY."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    await present_manifest(nus, image, crc32)
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


# --- a host that writes what the contract allows, not only what the engine writes -------------


def frames_to_writes(stream: bytes, cuts: list[int], max_write: int) -> list[bytes]:
    """``stream`` cut at ``cuts`` (byte positions), each piece then cut again to at most
    ``max_write`` bytes: one write each. Several frames may share a write, and one frame
    may take several."""
    edges = sorted({0, len(stream), *(c for c in cuts if 0 < c < len(stream))})
    writes: list[bytes] = []
    for start, end in itertools.pairwise(edges):
        writes.extend(stream[k : min(k + max_write, end)] for k in range(start, end, max_write))
    return writes


async def write_pieces(nus: NusLink, writes: list[bytes], gaps: list[float] | None = None) -> None:
    """One ATT write per item (each at most ``nus.max_write`` bytes), ``gaps[k]`` seconds
    before write k (all below the decoder's idle time: the device must reassemble)."""
    for k, piece in enumerate(writes):
        assert len(piece) <= nus.max_write, (len(piece), nus.max_write)
        if gaps and k < len(gaps) and gaps[k] > 0:
            await asyncio.sleep(gaps[k])
        await nus.send_frame(piece)  # at most one write's worth: exactly one write


def same_reply(got: p.DeviceMessage, want: p.DeviceMessage) -> bool:
    """The contract's comparison: every field, but a MSG_ERROR by code and command only
    (its text is for logs)."""
    if isinstance(want, p.MsgError):
        return isinstance(got, p.MsgError) and (got.code, got.command) == (want.code, want.command)
    return got == want


async def expect_replies(
    nus: NusLink, wanted: list[p.DeviceMessage], within_s: float, what: str
) -> None:
    """The next messages are exactly ``wanted``, in order, each within ``within_s`` of the
    previous one, and nothing follows for ``within_s``."""
    got: list[p.DeviceMessage] = []
    for want in wanted:
        try:
            msg = await nus.receive(within_s)
        except ResponseTimeout:
            raise AssertionError(
                f"{what}: expected {wanted}, got only {got} (nothing more within {within_s:g} s)"
            ) from None
        got.append(msg)
        assert same_reply(msg, want), f"{what}: expected {wanted}, got {got}"
    extra = nus.drain()
    if not extra:
        try:
            extra = [await nus.receive(within_s)]
        except ResponseTimeout:
            return
    raise AssertionError(f"{what}: expected {wanted}, then nothing; got {got} then {extra}")


async def back_after_reset(target: Target, limit_s: float) -> tuple[NusLink, float]:
    """Once the device under test reset (its link is gone): the time it took to advertise
    again, measured from now, and a new link. The scan waits ``limit_s`` plus a margin; the
    caller compares the time with the contract's limit."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    sighting = await find_device(
        target.backend, name=target.name, address=target.address, timeout=limit_s + 5.0
    )
    took = loop.time() - began
    link = await NusLink.open(sighting.ble_device, target.backend, LinkSettings())
    return link, took


async def reconnect(target: Target) -> NusLink:
    """A new link to the device under test, once it advertises again (10 s at most)."""
    return (await back_after_reset(target, 5.0))[0]


#: Radio delivery on top of a device obligation (as conformance.RADIO_MARGIN_S).
RADIO_MARGIN_S = 0.25


async def open_session(
    nus: NusLink, image: bytes, crc32: int, chunk_size: int, timing: Timing
) -> p.MsgOtaReady:
    """CMD_OTA_START for a new session (from IDLE or ERROR); every erase MSG_OTA_PROGRESS
    must come within its gap and say exactly the pages erased of ceil(size / 4096), then
    MSG_OTA_READY with the max_chunk this chunk_size is granted."""
    await present_manifest(nus, image, crc32)
    await nus.send(p.CmdOtaStart(len(image), crc32, chunk_size))
    pages = -(-len(image) // PAGE_SIZE)
    for page in range(1, pages + 1):
        msg = await nus.receive(timing.progress_gap_max_s + RADIO_MARGIN_S)
        want = p.MsgOtaProgress(p.OtaPhase.ERASE, page * PAGE_SIZE, pages * PAGE_SIZE)
        assert msg == want, (
            f"START of a {len(image)}-byte image ({pages} pages): expected {want}, got {msg}"
        )
    ready = await nus.receive(timing.ready_after_erase_max_s + RADIO_MARGIN_S)
    assert isinstance(ready, p.MsgOtaReady), f"after the erase: {ready}, not MSG_OTA_READY"
    granted = p.granted_max_chunk(chunk_size)
    assert ready.max_chunk == granted and ready.window >= 1, (
        f"START with chunk_size {chunk_size}: READY {ready}, expected max_chunk {granted}"
    )
    return ready


def ack_interval(window: int) -> int:
    """Chunks per MSG_OTA_ACK (docs/protocol.md 7.4)."""
    return max(1, window // 2)


async def send_in_ack_intervals(
    nus: NusLink,
    image: bytes,
    crc32: int,
    ready: p.MsgOtaReady,
    chunk_sizes: list[int],
    to_writes: Callable[[list[bytes]], list[bytes]],
    hole: int | None = None,
    end: int | None = None,
) -> None:
    """Send ``image[:end]`` (the session is for all of ``image``) an ACK interval at a
    time: chunk k has ``chunk_sizes[k % len]`` bytes (whole words, at most max_chunk; the
    image's last chunk takes what is left), a group's frames go out as ``to_writes`` cuts
    them. After each whole interval, and after the image's last byte, exactly
    MSG_OTA_ACK(the group's end) must come. With ``hole`` the first group is sent without
    its chunk ``hole``: the device must drop what follows it with one MSG_OTA_STATUS at the
    hole, and take the rest once the host rewinds there. Ends with STATUS and its ACK."""
    size, interval = len(image), ack_interval(ready.window)
    end = size if end is None else end
    offset, k = 0, 0
    while offset < end:
        group: list[tuple[int, bytes]] = []
        while len(group) < interval and offset < end:
            step = chunk_sizes[k % len(chunk_sizes)]
            assert step % p.WORD_SIZE == 0 and 0 < step <= ready.max_chunk, step
            group.append((offset, image[offset : min(offset + step, end)]))
            offset, k = offset + len(group[-1][1]), k + 1
        frames = [p.encode(p.CmdOtaData(o, data)) for o, data in group]
        # A hole needs a chunk behind it: the STATUS of 7.4 rule 3 answers a chunk that
        # arrives past the expected offset; with the hole last, nothing ever does.
        if hole is not None and 0 < hole < len(group) - 1:
            await write_pieces(nus, to_writes(frames[:hole] + frames[hole + 1 :]))
            status = await nus.receive(ACK_WAIT_S)
            want = p.MsgOtaStatus(p.OtaState.RECEIVING, group[hole][0], size, crc32)
            assert status == want, (
                f"chunk at {group[hole][0]} withheld, the {len(group) - hole - 1} behind it "
                f"sent: expected one {want} (7.4 rule 3), got {status}"
            )
            frames = frames[hole:]
        hole = None
        await write_pieces(nus, to_writes(frames))
        if len(group) < interval and offset < size:
            break  # a partial interval: no ACK owed; the STATUS below brings one
        ack = await nus.receive(ACK_WAIT_S)
        assert ack == p.MsgOtaAck(offset), (
            f"{len(group)} chunks up to {offset} (an ACK interval at window {ready.window}, "
            f"or the image's end): expected MSG_OTA_ACK({offset}), got {ack}"
        )
    left = nus.drain()
    assert not left, f"after the ACK of {offset} bytes the device also sent {left}"
    status = await nus.request(p.CmdOtaStatus(), (p.MsgOtaStatus,))
    assert status == p.MsgOtaStatus(p.OtaState.RECEIVING, end, size, crc32), status
    ack = await nus.receive(ACK_WAIT_S)
    assert ack == p.MsgOtaAck(end), f"STATUS in RECEIVING must bring an ACK (7.4): {ack}"


# --- tampering: a CRC-32 forgery (the CRC is not a signature), a changed manifest ------------


def changed_manifest(manifest: Manifest, field: str) -> Manifest:
    """``manifest`` with ``field`` changed (after it was signed)."""
    match field:
        case "version":
            return replace(manifest, fw_patch=manifest.fw_patch ^ 1)
        case "counter":
            return replace(manifest, security_counter=manifest.security_counter + 1)
        case "size":
            return replace(manifest, image_size=manifest.image_size + 4)
        case "crc32":
            return replace(manifest, image_crc32=manifest.image_crc32 ^ 1)
        case "key-id":
            return replace(manifest, key_id=manifest.key_id ^ 1)
        case "sha256":
            return replace(
                manifest,
                image_sha256=bytes([manifest.image_sha256[0] ^ 1]) + manifest.image_sha256[1:],
            )
    raise AssertionError(field)

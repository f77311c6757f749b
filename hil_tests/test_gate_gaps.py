"""Rules of docs/protocol.md 7.4 and 7.6 that no other gate test drives to the case where a
firmware most easily gets them wrong (three realistic bugs, written blind from the
contract, passed the gate here):

- a resume with a smaller chunk_size (a reconnect at a smaller MTU): READY's max_chunk
  follows the new START (7.6, command_state.json note [10]);
- a DATA chunk longer than the granted max_chunk but whole words: refused by rule 2, not
  by the words rule (a chunk of max_chunk + 1 bytes cannot tell the two apart);
- the refusal rate limits of rules 1 and 3: a reply for the 1st and the (window + 1)th
  refused DATA only, which needs window + 2 refusals in one run.

Every reply is compared field by field (a MSG_ERROR by code and command). Each refusal
round ends with CMD_INFO as a fence: replies come in command order, so what arrives before
MSG_INFO answers exactly the DATA of that round, with no wait for silence.

The random images are never activated (every session ends in an ABORT), and nothing here
needs a simulator-only fault: the tests hold on a board too.
"""

from __future__ import annotations

import random

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.link import NusLink

from . import conformance as c
from . import helpers as h
from .helpers import RADIO_MARGIN_S

pytestmark = pytest.mark.asyncio

TIMING = contract.timing()
#: A reply within the device's obligation, its radio delivery, and a page's CPU stall (a
#: command that meets an erase is handled between pages, 7.7).
REPLY_S = TIMING.reply_max_s + RADIO_MARGIN_S + 0.1
#: Three pages: quick to erase, several ACK intervals long at any chunk size used here.
IMAGE = random.Random(2020).randbytes(3 * h.PAGE_SIZE - 52)
CRC = p.crc32(IMAGE)


def refused_data() -> p.MsgError:
    return p.MsgError(p.ErrorCode.BAD_STATE, p.MsgType.CMD_OTA_DATA, "")


async def replies_to_round(
    nus: NusLink, commands: list[p.Command], info: p.MsgInfo, what: str
) -> list[p.DeviceMessage]:
    """Send ``commands`` then CMD_INFO; return what came before MSG_INFO (erase
    MSG_OTA_PROGRESS left out: work under way, checked by the monitor). MSG_INFO must be
    the one read before, every field."""
    for cmd in commands:
        await nus.send(cmd)
    await nus.send(p.CmdInfo())
    got: list[p.DeviceMessage] = []
    for _ in range(len(commands) + 64):  # bounded: PROGRESS of an erase at most
        msg = await nus.receive(REPLY_S)
        if isinstance(msg, p.MsgInfo):
            assert msg == info, f"{what}: CMD_INFO answered {msg}, before {info}"
            return got
        if not isinstance(msg, p.MsgOtaProgress):
            got.append(msg)
    raise AssertionError(f"{what}: no MSG_INFO after {got}")


def assert_replies(got: list[p.DeviceMessage], want: list[p.DeviceMessage], what: str) -> None:
    assert len(got) == len(want) and all(map(h.same_reply, got, want)), (
        f"{what}: expected {want}, got {got}"
    )


async def check_rate_limit(
    nus: NusLink,
    refused: list[p.CmdOtaData],
    window: int,
    answer: p.DeviceMessage,
    info: p.MsgInfo,
    rule: str,
) -> int | None:
    """Send ``window + 2`` refused DATA in four fenced rounds (the 1st; the 2nd to the
    window-th; the (window+1)th; the (window+2)th): only the 1st and the (window+1)th may be
    answered, each with exactly ``answer``. Returns None, or how many DATA were sent when
    MSG_OTA_READY came among the replies (an erase ended under the rounds)."""
    assert len(refused) == window + 2, (len(refused), window)
    w = window
    rounds: list[tuple[list[p.CmdOtaData], list[p.DeviceMessage]]] = [
        (refused[:1], [answer]),
        (refused[1:w], []),
        (refused[w : w + 1], [answer]),
        (refused[w + 1 :], []),
    ]
    sent = 0
    for cmds, want in rounds:
        got = await replies_to_round(nus, list(cmds), info, rule)
        sent += len(cmds)
        if any(isinstance(m, p.MsgOtaReady) for m in got):
            return sent
        assert_replies(
            got,
            want,
            f"refused DATA {sent - len(cmds) + 1} to {sent} at window {w} ({rule}: answered "
            f"are the 1st and the {w + 1}th only)",
        )
    return None


async def send_interval(
    nus: NusLink, offset: int, size: int, ready: p.MsgOtaReady, what: str
) -> int:
    """One ACK interval of ``size``-byte chunks from ``offset``; exactly its ACK follows."""
    for _ in range(h.ack_interval(ready.window)):
        await nus.send(p.CmdOtaData(offset, IMAGE[offset : offset + size]))
        offset += size
    await h.expect_replies(
        nus, [p.MsgOtaAck(offset)], TIMING.ack_latency_max_s + RADIO_MARGIN_S, what
    )
    return offset


async def expect_status(nus: NusLink, state: p.OtaState, offset: int, what: str) -> None:
    """STATUS says the session at ``offset``; in RECEIVING its ACK follows (7.4)."""
    await nus.send(p.CmdOtaStatus())
    want: list[p.DeviceMessage] = [p.MsgOtaStatus(state, offset, len(IMAGE), CRC)]
    if state == p.OtaState.RECEIVING:
        want.append(p.MsgOtaAck(offset))
    await h.expect_replies(nus, want, REPLY_S + TIMING.ack_latency_max_s, what)


async def test_a_resume_with_a_smaller_chunk_size_grants_the_new_max_chunk(nus: NusLink) -> None:
    """7.6: a START for the session's image in RECEIVING resumes it; READY's max_chunk is
    recomputed from this START's chunk_size (a reconnect may have a smaller MTU), the offset
    is kept, the ACK count restarts, and chunks of the new size are taken, the old size
    refused (rule 2)."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    big = p.granted_max_chunk(nus.max_data_chunk)
    small = max(p.WORD_SIZE, p.whole_words(big // 2))
    assert small < big, f"the link's chunk {big} leaves no smaller one to resume with"
    ready = await h.open_session(nus, IMAGE, CRC, big, TIMING)
    offset = await send_interval(nus, 0, big, ready, f"an ACK interval of {big}-byte chunks")
    await nus.send(p.CmdOtaStart(len(IMAGE), CRC, small))
    resumed = await nus.receive(REPLY_S + TIMING.ack_latency_max_s)
    assert isinstance(resumed, p.MsgOtaReady), f"a resume START answered {resumed}, not READY"
    assert resumed.max_chunk == p.granted_max_chunk(small) and resumed.window >= 1, (
        f"a resume START with chunk_size {small} (the session opened at {big}) answered "
        f"{resumed}: max_chunk must be {p.granted_max_chunk(small)} (7.6)"
    )
    await expect_status(nus, p.OtaState.RECEIVING, offset, "STATUS after the resume")
    await nus.send(p.CmdOtaData(offset, IMAGE[offset : offset + big]))
    await h.expect_replies(
        nus,
        [p.MsgError(p.ErrorCode.BAD_PARAM, p.MsgType.CMD_OTA_DATA, "")],
        REPLY_S,
        f"a {big}-byte chunk after a resume granting {resumed.max_chunk}",
    )
    end = await send_interval(
        nus, offset, resumed.max_chunk, resumed, f"{resumed.max_chunk}-byte chunks after the resume"
    )
    await expect_status(nus, p.OtaState.RECEIVING, end, "STATUS after chunks at the new size")
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))


async def test_a_whole_word_chunk_longer_than_max_chunk_is_refused(nus: NusLink) -> None:
    """7.4 rule 2: a chunk one word longer than the session's max_chunk (below the
    protocol's 500) at the expected offset gets MSG_ERROR BAD_PARAM, nothing else, and the
    offset stays. The host asks one word less than its link carries, so the frame still
    fits one write."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    chunk = p.whole_words(min(nus.max_data_chunk, p.MAX_DATA_CHUNK) - p.WORD_SIZE)
    assert chunk >= p.WORD_SIZE, nus.max_data_chunk
    ready = await h.open_session(nus, IMAGE, CRC, chunk, TIMING)
    offset = await send_interval(nus, 0, chunk, ready, f"an ACK interval of {chunk}-byte chunks")
    longer = ready.max_chunk + p.WORD_SIZE
    await nus.send(p.CmdOtaData(offset, IMAGE[offset : offset + longer]))
    await h.expect_replies(
        nus,
        [p.MsgError(p.ErrorCode.BAD_PARAM, p.MsgType.CMD_OTA_DATA, "")],
        REPLY_S,
        f"a {longer}-byte chunk at the expected offset {offset}, max_chunk {ready.max_chunk}",
    )
    await expect_status(nus, p.OtaState.RECEIVING, offset, "STATUS after the refused chunk")
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))


async def test_rejected_chunks_get_a_status_for_the_first_and_the_window_plus_first(
    nus: NusLink,
) -> None:
    """7.4 rule 3: window + 2 chunks at a wrong offset (retransmits of chunks already
    ACKed, so the host stays within its credit) are dropped; the 1st and the (window+1)th
    only are answered, with MSG_OTA_STATUS at the offset the device still expects."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo)
    chunk = p.granted_max_chunk(nus.max_data_chunk)
    ready = await h.open_session(nus, IMAGE, CRC, chunk, TIMING)
    offset = await send_interval(nus, 0, chunk, ready, f"an ACK interval of {chunk}-byte chunks")
    behind = [k % (offset // chunk) * chunk for k in range(ready.window + 2)]
    stale = [p.CmdOtaData(o, IMAGE[o : o + chunk]) for o in behind]
    status = p.MsgOtaStatus(p.OtaState.RECEIVING, offset, len(IMAGE), CRC)
    ready_at = await check_rate_limit(nus, stale, ready.window, status, info, "7.4 rule 3")
    assert ready_at is None, f"MSG_OTA_READY among the replies to {ready_at} rejected chunks"
    await expect_status(nus, p.OtaState.RECEIVING, offset, "STATUS after the rejected chunks")
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))


async def test_data_during_the_erase_gets_bad_state_for_the_first_and_the_window_plus_first(
    nus: NusLink,
) -> None:
    """7.4 rule 1: DATA in ERASING (a host that did not wait for READY) gets MSG_ERROR
    BAD_STATE for the 1st and the (window+1)th since the START only. The window is the one
    READY grants: learnt from a short session first, and checked against the READY that
    ends the erase. The erase of the whole staging area (about 10 s on a board) outlasts the
    rounds even on a slow host (ERASE_PAGES' 3.4 s did not, on CI's emulated VM); a device
    that erases faster than a command can be caught is skipped, saying so."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    info = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(info, p.MsgInfo)
    chunk = p.granted_max_chunk(nus.max_data_chunk)
    learnt = await h.open_session(nus, IMAGE, CRC, chunk, TIMING)
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    image = c.erase_image(info.staging_capacity, pages=info.staging_capacity // h.PAGE_SIZE)
    crc = p.crc32(image)
    await h.present_manifest(nus, image, crc, info)
    await nus.send(p.CmdOtaStart(len(image), crc, chunk))
    first = await nus.receive(TIMING.progress_gap_max_s + RADIO_MARGIN_S)
    assert isinstance(first, p.MsgOtaProgress), f"START of a new session answered {first}"
    w = learnt.window
    data = [p.CmdOtaData(0, image[:chunk])] * (w + 2)
    ready_at = await check_rate_limit(nus, data, w, refused_data(), info, "7.4 rule 1")
    if ready_at is not None:
        await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
        pytest.skip(
            f"the erase of {len(image)} bytes ended after {ready_at} DATA: this device erases "
            f"too fast for {w + 2} DATA to meet it in ERASING"
        )
    # No READY came before the last fence: every DATA met the erase. (A STATUS here would
    # race the READY of a quick erase, and its request would drop that READY as stale.)
    pages = -(-len(image) // h.PAGE_SIZE)
    ready = await nus.wait_for(
        (p.MsgOtaReady, p.MsgError),
        pages * TIMING.progress_gap_max_s + TIMING.ready_after_erase_max_s + RADIO_MARGIN_S,
        "MSG_OTA_READY ending the erase",
    )
    assert ready == p.MsgOtaReady(p.granted_max_chunk(chunk), w), (
        f"READY {ready} after the erase: the rounds assumed window {w} (the short session's)"
    )
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))

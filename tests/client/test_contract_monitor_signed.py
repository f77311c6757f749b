"""The contract monitor and signed updates (docs/protocol.md section 16): it knows the two
new commands' replies (MANIFEST: STATUS or a refusal; CONFIRM: INFO; UNKNOWN_COMMAND on a
v1 device), a START refused UNSIGNED, DIGEST_MISMATCH, and that an image in TEST may
revert at a reset; and it still catches a device that breaks those rules."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_smartball import contract
from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import MANIFEST_SIZE

from ..monitor_trace import CHUNK, CRC, IMAGE, STATUS_IDLE, WINDOW, Trace

OLD = (65536, 0x1234)
KEY_ID = signing.test_trusted_key().key_id
HEAD = signing.sign(IMAGE, signing.test_key(), (2, 0, 0), 5).head
MANIFEST = p.CmdOtaManifest(HEAD[:MANIFEST_SIZE], HEAD[MANIFEST_SIZE:])


def info(size_crc: tuple[int, int] = OLD, state: int = 0, counter: int = 3) -> p.MsgInfo:
    return p.MsgInfo(1, 1, 0, 0, *size_crc, 491520, 2, counter, state, KEY_ID)


V1_INFO = p.MsgInfo(1, 1, 0, 0, *OLD, 491520)


def transfer(tr: Trace) -> Trace:
    """START, the erase and every chunk within the ACK credit (as good_update's host; no
    v1 INFO in between, unlike test_contract_monitor.erase)."""
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, CHUNK))
    pages = (len(IMAGE) + 4095) // 4096
    for i in range(pages):
        tr.at(0.085).dev(p.MsgOtaProgress(1, 4096 * (i + 1), pages * 4096))
    tr.dev(p.MsgOtaReady(CHUNK, WINDOW))
    offset, n = 0, 0
    while offset < len(IMAGE):
        size = min(CHUNK, len(IMAGE) - offset)
        tr.host(p.CmdOtaData(offset, IMAGE[offset : offset + size]))
        offset, n = offset + size, n + 1
        if n % (WINDOW // 2) == 0 or offset == len(IMAGE):
            tr.dev(p.MsgOtaAck(offset))
    return tr


def signed_update(tr: Trace) -> Trace:
    """INFO (signed-only), MANIFEST accepted, the transfer, DONE, the reset, INFO in TEST."""
    tr.host(p.CmdInfo()).dev(info())
    tr.host(MANIFEST).dev(STATUS_IDLE)
    transfer(tr)
    tr.host(p.CmdOtaFinish()).dev(p.MsgOtaDone(CRC))
    tr.m.observe_disconnect(tr.at(0.1).t)
    tr.at(5.0).m.observe_connect(tr.t)
    return tr.host(p.CmdInfo()).dev(info((len(IMAGE), CRC), state=p.ImageState.TEST))


def test_a_signed_update_confirmed_breaks_no_rule() -> None:
    tr = signed_update(Trace())
    tr.host(p.CmdOtaConfirm()).dev(info((len(IMAGE), CRC), counter=5))
    tr.m.observe_reset(tr.at(1).t)
    tr.at(5.0).m.observe_connect(tr.t)
    tr.host(p.CmdInfo()).dev(info((len(IMAGE), CRC), counter=5))
    assert tr.rules() == []


def test_a_revert_after_a_reset_in_test_breaks_no_rule() -> None:
    tr = signed_update(Trace())
    tr.m.observe_reset(tr.at(1).t)
    tr.at(5.0).m.observe_connect(tr.t)
    tr.host(p.CmdInfo()).dev(info(OLD, state=p.ImageState.REVERTED))
    assert tr.rules() == []


def test_an_image_in_test_that_survives_a_reset_is_an_activation_violation() -> None:
    tr = signed_update(Trace())
    tr.m.observe_reset(tr.at(1).t)
    tr.at(5.0).m.observe_connect(tr.t)
    tr.host(p.CmdInfo()).dev(info((len(IMAGE), CRC), state=p.ImageState.CONFIRMED))
    assert tr.rules() == ["activation.info"]


def test_a_bootloader_refusal_after_done_may_show_the_old_image_once() -> None:
    tr = Trace()
    tr.host(p.CmdInfo()).dev(info())
    tr.host(MANIFEST).dev(STATUS_IDLE)
    transfer(tr)
    tr.host(p.CmdOtaFinish()).dev(p.MsgOtaDone(CRC))
    tr.m.observe_disconnect(tr.at(0.1).t)
    tr.at(5.0).m.observe_connect(tr.t)
    tr.host(p.CmdInfo()).dev(info(OLD))
    assert tr.rules() == []


def test_the_old_image_after_a_confirmed_one_is_still_an_activation_violation() -> None:
    tr = signed_update(Trace())
    tr.host(p.CmdOtaConfirm()).dev(info((len(IMAGE), CRC), counter=5))
    tr.m.observe_reset(tr.at(1).t)
    tr.at(5.0).m.observe_connect(tr.t)
    tr.host(p.CmdInfo()).dev(info(OLD, state=p.ImageState.REVERTED))
    assert tr.rules() == ["activation.info"]


@pytest.mark.parametrize("code", ["UNTRUSTED_KEY", "BAD_SIGNATURE", "DOWNGRADE"])
def test_a_manifest_refused_by_the_devices_keys_or_counter_is_no_violation(code: str) -> None:
    tr = Trace()
    tr.host(p.CmdInfo()).dev(info())
    tr.host(MANIFEST).dev(p.MsgError(p.ErrorCode[code], p.MsgType.CMD_OTA_MANIFEST, ""))
    tr.host(p.CmdOtaStatus()).dev(STATUS_IDLE)
    assert tr.rules() == []


def test_a_start_refused_unsigned_leaves_no_session() -> None:
    tr = Trace()
    tr.host(p.CmdInfo()).dev(info())
    tr.host(p.CmdOtaStart(len(IMAGE), CRC, 232)).dev(
        p.MsgError(p.ErrorCode.UNSIGNED, p.MsgType.CMD_OTA_START, "")
    )
    tr.at(2.0).host(p.CmdOtaStatus()).dev(STATUS_IDLE)
    assert tr.rules() == []


def test_a_digest_mismatch_ends_the_session_in_error() -> None:
    tr = Trace()
    tr.host(p.CmdInfo()).dev(info())
    tr.host(MANIFEST).dev(STATUS_IDLE)
    transfer(tr)
    tr.host(p.CmdOtaFinish()).dev(
        p.MsgError(p.ErrorCode.DIGEST_MISMATCH, p.MsgType.CMD_OTA_FINISH, "")
    )
    tr.host(p.CmdOtaStatus()).dev(p.MsgOtaStatus(p.OtaState.ERROR, 0, 0, 0))
    assert tr.rules() == []


@pytest.mark.parametrize(
    ("device_info", "command", "reply", "rules"),
    [
        # a v1 device must not know the new commands
        (V1_INFO, p.CmdOtaConfirm(), V1_INFO, ["reply.wrong"]),
        (V1_INFO, MANIFEST, STATUS_IDLE, ["reply.wrong"]),
        (
            V1_INFO,
            MANIFEST,
            p.MsgError(p.ErrorCode.UNKNOWN_COMMAND, p.MsgType.CMD_OTA_MANIFEST, ""),
            [],
        ),
        # a signed-only device accepting a manifest of another format
        (
            info(),
            p.CmdOtaManifest(b"XBM1" + HEAD[4:MANIFEST_SIZE], HEAD[MANIFEST_SIZE:]),
            STATUS_IDLE,
            ["reply.wrong"],
        ),
        # ... or answering CONFIRM with anything but INFO
        (info(), p.CmdOtaConfirm(), STATUS_IDLE, ["reply.wrong"]),
        (info(), p.CmdOtaConfirm(), info(), []),
    ],
    ids=[
        "v1-confirm",
        "v1-manifest",
        "v1-unknown",
        "bad-magic-accepted",
        "confirm-status",
        "confirm-info",
    ],
)
def test_the_new_commands_replies_are_judged(
    device_info: p.MsgInfo, command: p.Command, reply: p.DeviceMessage, rules: list[str]
) -> None:
    tr = Trace()
    tr.host(p.CmdInfo()).dev(device_info)
    tr.host(command).dev(reply)
    assert tr.rules() == rules


# --- the device vectors of signed sessions, through the monitor -----------------------------


def _replay(vector: dict[str, Any]) -> list[str]:
    tr = Trace()
    m = tr.m
    m.observe_host_bytes(0.0, p.encode(p.CmdInfo()))
    capacity = vector["device"]["staging_capacity"]
    first = p.MsgInfo(1, 1, 4, 2, *OLD_VECTOR_IMAGE, capacity, 2, 3, 0, KEY_ID)
    m.observe_device_bytes(0.0, p.encode(first))
    for step in vector["steps"]:
        if step.get("reset"):
            m.observe_reset(step["at_s"])
            m.observe_connect(step["at_s"] + 3.0)
        if "in" in step:
            m.observe_host_bytes(step["at_s"], bytes.fromhex(step["in"]))
        for entry in step["out"]:
            if "event" in entry and not vector["device"]["resets_when_asked"]:
                m.observe_fault(entry["t"], "no-reset")  # the harness keeps it in COMPLETE
                continue
            if "event" in entry:  # the device resets itself after DONE
                m.observe_disconnect(entry["t"] + 0.001)
                m.observe_connect(entry["t"] + 3.0)
                continue
            if entry["type"] == "MSG_ERROR":
                frame = p.encode(
                    p.MsgError(p.ErrorCode[entry["code"]], p.MsgType[entry["command"]], "")
                )
            else:
                frame = bytes.fromhex(entry["hex"])
            m.observe_device_bytes(max(entry["t"], step["at_s"]), frame)
    return [str(v) for v in m.finish(vector["until_s"])]


#: The image the vectors' device runs (bytes(range(256)) * 12).
OLD_VECTOR_IMAGE = (3072, p.crc32(bytes(range(256)) * 12))
SIGNED_VECTORS = [
    v for v in contract.vectors("device.json")["vectors"] if "signed_only" in v["device"]
]


@pytest.mark.parametrize("vector", SIGNED_VECTORS, ids=lambda v: v["name"])
def test_the_signed_device_vectors_break_no_rule(vector: dict[str, Any]) -> None:
    assert _replay(vector) == []

"""What the tests of the OTA engine's decisions share: the image, the device's INFO and STATUS
before and after (plain and signed), records in a given state, and the check that an outcome
says no more than the record knows.
"""

from __future__ import annotations

from dataclasses import replace

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import Manifest
from pytest_smartball.ota import observations as o
from pytest_smartball.ota.decide import decide
from pytest_smartball.ota.record import Commit, ImageId, Limits, Record
from pytest_smartball.ota.states import EventKind, FailureKind, Outcome, State

IMAGE = ImageId(20_000, 0x1234ABCD, "test.bin")
OTHER_CRC = 0xDEADBEEF
LIMITS = Limits()
OLD_INFO = p.MsgInfo(1, 1, 0, 0, 12_000, 0x0BAD0BAD, 480 * 1024)
NEW_INFO = p.MsgInfo(1, 1, 1, 0, IMAGE.size, IMAGE.crc32, 480 * 1024)
PROGRESSIVE_INFO = replace(OLD_INFO, capabilities=p.Capability.PROGRESSIVE_ERASE)
#: A signed-only device (section 16) that trusts the test key, counter 3, before and after.
TEST_KID = 0x5EC0DE01
SIGNED_OLD_INFO = replace(
    OLD_INFO, capabilities=p.Capability.SIGNED_IMAGES, security_counter=3, trusted_key_id=TEST_KID
)
SIGNED_NEW_INFO = replace(
    NEW_INFO, capabilities=p.Capability.SIGNED_IMAGES, security_counter=5, trusted_key_id=TEST_KID
)
#: The same image, signed (counter 5) by the key the device trusts.
SIGNED_IMAGE = replace(
    IMAGE,
    source="test.sbi",
    manifest=Manifest(1, 1, 0, 5, IMAGE.size, IMAGE.crc32, TEST_KID, bytes(32)),
)


def status(
    state: int, offset: int = 0, *, ours: bool = True, crc: int | None = None
) -> p.MsgOtaStatus:
    if state in (p.OtaState.IDLE, p.OtaState.ERROR):
        return p.MsgOtaStatus(state, 0, 0, 0)
    if ours:
        return p.MsgOtaStatus(state, offset, IMAGE.size, IMAGE.crc32)
    return p.MsgOtaStatus(state, offset, 30_000, crc if crc is not None else OTHER_CRC)


def error(code: int, command: int = 0, text: str = "") -> p.MsgError:
    return p.MsgError(code, command, text)


def record(state: State = State.SCANNING, **fields: object) -> Record:
    return replace(Record(IMAGE, LIMITS), state=state, **fields)  # type: ignore[arg-type]


def run(r: Record, *seen: o.Observation) -> Record:
    for observation in seen:
        r, _ = decide(r, observation)
    return r


def notes(r: Record, seen: o.Observation) -> list[EventKind]:
    return [n.kind for n in decide(r, seen)[1]]


def check_honest(r: Record) -> None:
    """An outcome says no more than the record knows."""
    if r.outcome is Outcome.SUCCEEDED:
        assert r.commit is not Commit.NONE and r.info is not None
        assert r.info.runs(IMAGE.size, IMAGE.crc32)
    elif r.outcome is Outcome.UNCONFIRMED:
        assert r.commit is not Commit.NONE and r.failure is None
        # Never that it runs its old image (it may run the new one); a signed-only device's
        # trial ending at its next reset is a fact of the protocol, not a guess.
        said = r.error.replace("still run its old one", "")
        assert "old image" not in said.replace("returns to its old image at its next reset", "")
    elif r.outcome is Outcome.REVERTED:
        # Only after the device verified the new image, reset, and said what it runs.
        assert r.commit is Commit.VERIFIED and r.info is not None and r.failure is None
        assert r.signed_only and "runs its old image" in r.error
    elif r.outcome is Outcome.FAILED:
        assert r.failure is not None and r.error
        if "keeps its old image" in r.error:
            assert r.commit is Commit.NONE
        if r.failure is FailureKind.LINK:
            assert "keeps its old image" in r.error

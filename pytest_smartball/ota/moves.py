"""The moves every decision shares (:mod:`.decide` and :mod:`.signed` make them): end the
update with an outcome and its sentence, give up when a budget is spent, count a link
failure or a re-sync as an attempt, renew the budget when the device got further, and
the small facts they say (which image the device runs, how a session opens). Pure: a
record in, a record and notes out."""

from __future__ import annotations

from dataclasses import replace

from ..contract import codec as p
from .observations import LinkFailed
from .record import Commit, Decision, Note, Record
from .states import EventKind, FailureKind, Outcome, State


def link_failed(r: Record, seen: LinkFailed) -> Decision:
    """Any link failure (or a re-sync too many): RECOVERING, one more attempt."""
    r = replace(
        r,
        state=State.RECOVERING,
        attempts=r.attempts + 1,
        recoveries=r.recoveries + 1,
        last_error=seen.why,
        reconnecting=True,
        fresh_link=False,
        link_closed=False,
        info_answered=False,
    )
    return r, (Note(EventKind.LINK_FAILURE, seen.why),)


def give_up(r: Record, limit: str) -> Decision:
    size = r.image.size
    if r.said is not None:
        said = f"the device last reported offset {r.said.offset} of {size} ({r.said.message})"
    else:
        said = f"the device reported nothing of this image's {size} bytes"
    last = f"; last error: {r.last_error}" if r.last_error else ""
    where = f"{limit}; {said}{last}"
    if r.commit is Commit.NONE:
        holds = "The device keeps its old image; move it closer and run the update again"
        if r.session_opened and r.said is not None and r.said.offset > 0:
            # The session is in RAM: a reset the host could not tell from a drop loses it.
            holds += ": unless it was reset meanwhile, it resumes where the device stopped"
        return end(r, Outcome.FAILED, FailureKind.LINK, f"{where}. {holds}")
    return end(r, Outcome.UNCONFIRMED, None, f"{where}. {unconfirmed_sentence(r)}")


def unconfirmed_sentence(r: Record) -> str:
    crc = f"crc32 {r.image.crc32:08x}"
    if r.commit is Commit.VERIFIED:
        text = (
            f"The device verified the new image ({crc}) and was told to reset into it, but "
            "it could not be reached afterwards to confirm that it runs it; check with "
            "`smartball-ota info`"
        )
        if r.signed_only and r.limits.confirm:
            text += (
                ". If it runs it, it runs it on trial (not confirmed): it returns to its old "
                "image at its next reset unless `smartball-ota confirm` keeps it"
            )
        return text
    return (
        "Every byte was acknowledged and CMD_OTA_FINISH was sent, but no answer came: the "
        f"device may have verified the new image ({crc}) and reset into it, or still run "
        "its old one; check with `smartball-ota info`"
    )


def end(
    r: Record,
    outcome: Outcome,
    failure: FailureKind | None,
    error: str,
    notes: tuple[Note, ...] = (),
) -> Decision:
    state = {
        Outcome.SUCCEEDED: State.SUCCEEDED,
        Outcome.UNCONFIRMED: State.UNCONFIRMED,
        Outcome.REVERTED: State.REVERTED,
        Outcome.FAILED: State.FAILED,
    }[outcome]
    return replace(r, state=state, outcome=outcome, failure=failure, error=error), notes


def progressed(r: Record, rank: int, amount: int) -> Record:
    """Only getting further than ever before renews the budget of fruitless attempts, so a
    device that fails at the same point every time is given up on."""
    if (rank, amount) > r.progress_mark:
        return replace(r, progress_mark=(rank, amount), attempts=0)
    return r


def resync(r: Record, notes: tuple[Note, ...]) -> Decision:
    """Ask the device where it is (INFO, STATUS) on the same link. A re-sync is an attempt:
    a device that keeps refusing without getting further is eventually given up on (by
    way of RECOVERING, which also tries a fresh connection)."""
    if r.attempts >= r.limits.max_attempts_without_progress:
        return link_failed(r, LinkFailed(f"re-synced {r.attempts} times without progress"))
    return replace(r, state=State.QUERYING, attempts=r.attempts + 1), notes


def running_crc(r: Record) -> str:
    return f"{r.info.active_image_crc32:08x}" if r.info else "unknown"


def switch_stuck(r: Record, how: str, notes: tuple[Note, ...]) -> Decision:
    """Give up waiting for a committed switch: the device said it resets and did not."""
    running = f"it still runs crc32 {running_crc(r)}"
    if r.other_commit is not None:
        why = (
            f"the device committed a switch to another image (crc32 {r.other_commit:08x}) and "
            f"{how}; {running}. Power-cycle it (it then runs that image) and run the update again"
        )
        return end(r, Outcome.FAILED, FailureKind.NO_RESET, why, notes)
    why = (
        f"the device verified the new image (crc32 {r.image.crc32:08x}) and committed the "
        f"switch, but {how}; {running}. It switches at its next reset: power-cycle it, then "
        "check with `smartball-ota info`"
    )
    return end(r, Outcome.UNCONFIRMED, None, why, notes)


def opening(r: Record) -> State:
    """How a new session opens: with the signed manifest on a signed-only device."""
    if r.signed_only and r.image.manifest is not None:
        return State.SENDING_MANIFEST
    return State.STARTING


def is_ours(r: Record, status: p.MsgOtaStatus) -> bool:
    return (status.image_size, status.image_crc32) == (r.image.size, r.image.crc32)

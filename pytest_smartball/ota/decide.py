"""The OTA engine's decisions, as a pure function over a small record (h11 style).

No I/O, no clock, no link: :func:`decide` takes the :class:`Record` of one update (what it
has done and what the device has said so far) and one observation (:mod:`.observations`:
what the device said, or what happened to the link) and returns the next record, whose
``state`` is what the engine does next, and the events worth telling.
:class:`~.engine.OtaEngine` does the I/O of each state and feeds what it sees back in; it
decides nothing itself. Every change of state is checked here, in :func:`decide`, against
:data:`~.states.TRANSITIONS` (the table in :mod:`.states` shows them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ..contract import codec as p
from .moves import (
    end,
    give_up,
    is_ours,
    link_failed,
    opening,
    progressed,
    resync,
    running_crc,
    switch_stuck,
)
from .observations import (
    AbortReply,
    Acked,
    AckTimeout,
    AllAcked,
    BackedOff,
    ConfirmReply,
    Connected,
    Desync,
    DeviceError,
    DeviceReset,
    Done,
    EraseProgress,
    FailedLinkClosed,
    FinishSent,
    Found,
    HealthChecked,
    InfoReply,
    LinkFailed,
    ManifestAccepted,
    NotFound,
    Observation,
    Ready,
    ResetNotSeen,
    Rewound,
    Stabilised,
    StartSent,
    StatusReply,
)
from .record import Commit, Decision, ImageId, Limits, Note, Record, Said
from .signed import (
    confirm_reply,
    health_checked,
    manifest_accepted,
    reverted,
    runs_new_signed,
    signed_refusal,
)
from .states import (
    EventKind,
    FailureKind,
    IllegalObservation,
    Outcome,
    State,
    check_transition,
)

__all__ = [
    "Commit",
    "Decision",
    "ImageId",
    "Limits",
    "Note",
    "Record",
    "Said",
    "decide",
]

S = State


# --- the decision -------------------------------------------------------------------------


def decide(record: Record, seen: Observation) -> Decision:
    """The next record (its ``state`` is what to do next) and the events worth telling,
    given what was just ``seen``. Raises :class:`IllegalObservation` for an observation
    the state cannot have made, :class:`IllegalTransition` for a decision
    :data:`TRANSITIONS` does not allow (both are bugs, never the device's doing)."""
    state = record.state
    if state.terminal:
        raise IllegalObservation(f"{type(seen).__name__} after the update ended ({state.name})")
    allowed = _ACCEPTS[state]
    if not isinstance(seen, allowed):
        raise IllegalObservation(f"{type(seen).__name__} cannot happen in {state.name}")
    new, notes = _HANDLERS[type(seen)](record, seen)
    check_transition(state, new.state)
    return new, notes


def _link_closed(r: Record, seen: FailedLinkClosed) -> Decision:
    """RECOVERING, the old link closed: give up when a budget is spent, else back off."""
    if r.link_closed:
        raise IllegalObservation("FailedLinkClosed twice in one recovery")
    r = replace(r, link_closed=True)
    lim = r.limits
    if r.attempts > lim.max_attempts_without_progress:
        return give_up(
            r,
            f"gave up after {r.attempts - 1} attempts in a row without progress (the limit "
            f"is {lim.max_attempts_without_progress}, --max-attempts)",
        )
    if r.recoveries > lim.max_recoveries:
        return give_up(
            r,
            f"gave up after {lim.max_recoveries} recoveries in this update, the cap whatever "
            "the progress",
        )
    note = Note(
        EventKind.RECOVER,
        f"reconnecting in {r.backoff_s:g} s ({r.attempts} of "
        f"{lim.max_attempts_without_progress} attempts since the last progress)",
    )
    return r, (note,)


def _found(r: Record, seen: Found) -> Decision:
    return replace(r, state=State.CONNECTING, seen=True), ()


def _not_found(r: Record, seen: NotFound) -> Decision:
    if not r.seen:
        return end(r, Outcome.FAILED, FailureKind.NOT_FOUND, seen.why)
    return link_failed(r, LinkFailed(seen.why))


def _connected(r: Record, seen: Connected) -> Decision:
    r = replace(
        r,
        state=State.QUERYING,
        connects=r.connects + 1,
        reconnects=r.reconnects + (1 if r.reconnecting else 0),
        reconnecting=False,
        fresh_link=True,
    )
    return r, ()


def _info(r: Record, seen: InfoReply) -> Decision:
    if r.info_answered:
        raise IllegalObservation("a second INFO reply before STATUS")
    info = seen.info
    r = replace(
        r,
        info=info,
        first_info=r.first_info or info,
        capabilities=info.capabilities,
        info_answered=True,
    )
    notes: tuple[Note, ...] = ()
    if not r.fits_checked:
        if seen.too_large is not None:
            return end(r, Outcome.FAILED, FailureKind.BAD_INPUT, seen.too_large)
        r = replace(r, fits_checked=True)
        if r.image.manifest is not None and not info.signed_only:
            notes += (
                Note(
                    EventKind.WARNING,
                    "the device does not advertise SIGNED_IMAGES: it checks no signature and "
                    "runs any image it is sent (protocol v1); the image goes without its "
                    "manifest",
                ),
            )
        if not info.signed_only and (r.limits.health_check or not r.limits.confirm):
            notes += (
                Note(
                    EventKind.WARNING,
                    "the device does not advertise SIGNED_IMAGES: a new image runs for good "
                    "at once, with no trial, so there is no health check and no confirm",
                ),
            )
    runs_ours = info.runs(r.image.size, r.image.crc32)
    if r.commit is Commit.NONE and info.signed_only:
        if info.image_state == p.ImageState.TEST and runs_ours:
            # An earlier update of this image got it running and was not confirmed (it was
            # interrupted, or --no-confirm): what is left of this one is the confirm.
            r = replace(r, commit=Commit.VERIFIED)
            notes += (
                Note(
                    EventKind.WARNING,
                    "the device already runs this image on trial (an earlier update's, not "
                    "confirmed): nothing to send, it is checked and confirmed now",
                ),
            )
        else:
            refusal = signed_refusal(r.image, info)
            if refusal is not None:
                kind, why = refusal
                return end(r, Outcome.FAILED, kind, why, notes)
    if r.commit is not Commit.NONE and runs_ours:
        if info.signed_only:
            return runs_new_signed(r, info, notes)
        note = Note(
            EventKind.VERIFIED,
            f"device runs the new image (crc32 {info.active_image_crc32:08x}, "
            f"firmware {info.firmware_version})",
        )
        return end(r, Outcome.SUCCEEDED, None, "", (*notes, note))
    return r, notes  # on to STATUS


def _status(r: Record, seen: StatusReply) -> Decision:
    if not r.info_answered:
        raise IllegalObservation("a STATUS reply before INFO")
    r = replace(r, info_answered=False)
    status = seen.status
    ours = is_ours(r, status)
    fresh = r.fresh_link
    try:
        state: p.OtaState | None = p.OtaState(status.state)
    except ValueError:
        state = None  # P13: a state this host does not know is "not my session"
    r = replace(r, fresh_link=False, reset_seen=r.reset_seen and state is p.OtaState.COMPLETE)
    notes: tuple[Note, ...] = (
        Note(
            EventKind.STATUS,
            f"{status.state_name}, offset {status.next_expected_offset}, "
            f"{'this' if ours else 'no/another'} image's session",
        ),
    )
    if state is p.OtaState.COMPLETE:
        return _complete(r, status, ours, notes)
    if r.commit is Commit.VERIFIED and r.signed_only:
        # No switch pending and not the new image on trial or confirmed (INFO would have
        # ended the query): the device went back to its old image.
        return reverted(r, notes)
    if r.commit is Commit.VERIFIED and not ours:
        # DONE was said and the device reset, but it still runs its old image: its
        # bootloader did not take the new one. Send it again, a bounded number of times.
        failed = r.failed_activations + 1
        r = replace(r, failed_activations=failed, commit=Commit.NONE)
        if failed >= r.limits.max_failed_activations:
            why = (
                f"the device verified the new image and reset {failed} times, but still runs "
                f"its old image (crc32 {running_crc(r)}): its bootloader does not take this "
                "image. The device keeps its old image"
            )
            return end(r, Outcome.FAILED, FailureKind.REFUSED, why, notes)
    if ours and state is p.OtaState.ERASING:
        return replace(r, state=State.WAITING_READY, commit=Commit.NONE, resume_offset=0), notes
    if ours and state is p.OtaState.RECEIVING:
        offset = status.next_expected_offset
        r = progressed(r, 2, offset)
        # Every byte there (FINISH lost, or the link dropped at the last chunk): FINISH
        # needs no READY, and a START would be one more command to get wrong.
        complete = offset >= r.image.size
        r = replace(
            r,
            state=State.FINISHING if complete else State.STARTING,
            commit=Commit.NONE,
            resume_offset=offset,
            said=Said(offset, "MSG_OTA_STATUS"),
        )
        if fresh:  # a session found on a new connection, not a re-sync on a live one
            r = replace(r, resumes=r.resumes + 1)
            notes += (Note(EventKind.RESUME, f"at offset {offset} of {r.image.size}"),)
        return r, notes
    if ours and state is p.OtaState.VERIFYING:
        return replace(r, state=State.FINISHING, commit=Commit.FINISH_SENT), notes
    # No session, a failed one (ERROR), another image's, or a state this host does not know.
    r = replace(r, commit=Commit.NONE, resume_offset=0)
    if r.session_opened:
        r = replace(r, restarts=r.restarts + 1)
        notes += (Note(EventKind.RESTART, "the device lost this image's session: start over"),)
    elif r.info is not None and r.info.runs(r.image.size, r.image.crc32):
        # A rerun after the switch (the host died after FINISH): nothing is left to resume.
        # Say why this update sends the whole image, to a device that already runs it.
        notes += (
            Note(
                EventKind.WARNING,
                f"the device already runs this image (crc32 {r.image.crc32:08x}) and holds no "
                "session to resume: it switched to it before; sending it again",
            ),
        )
    next_state = opening(r) if state is p.OtaState.IDLE else State.ABORTING
    return replace(r, state=next_state), notes


def _complete(r: Record, status: p.MsgOtaStatus, ours: bool, notes: tuple[Note, ...]) -> Decision:
    """COMPLETE: a switch is committed (P11) and the device will reset into it. START would
    be refused: wait for that reset, ours or not. Still COMPLETE after a reset was seen
    counts as a wait that did not work (a device that never leaves COMPLETE is given up on)."""
    if ours:
        r = progressed(r, 3, 0)
        r = replace(r, commit=Commit.VERIFIED, other_commit=None)
    else:
        r = replace(r, commit=Commit.NONE, other_commit=status.image_crc32)
    if r.reset_seen:
        waits = r.reset_waits + 1
        r = replace(r, reset_waits=waits, reset_seen=False)
        if waits >= r.limits.max_reset_waits:
            return switch_stuck(r, f"reset {waits} times and still reports it pending", notes)
    return replace(r, state=State.REBOOTING), notes


def _aborted(r: Record, seen: AbortReply) -> Decision:
    status = seen.status
    note = Note(EventKind.ABORTED, f"device state {status.state_name}")
    if status.state == p.OtaState.COMPLETE:  # P11: nothing is cancelled under a committed switch
        return _complete(r, status, is_ours(r, status), (note,))
    if status.state in (p.OtaState.IDLE, p.OtaState.ERROR):
        return replace(r, state=opening(r)), (note,)
    return resync(r, (note,))


def _start_sent(r: Record, seen: StartSent) -> Decision:
    # A START goes out only when STATUS showed no switch pending for this image.
    return replace(r, state=State.WAITING_READY, session_opened=True, commit=Commit.NONE), ()


def _erase_progress(r: Record, seen: EraseProgress) -> Decision:
    return progressed(r, 1, seen.done), ()


def _ready(r: Record, seen: Ready) -> Decision:
    ready = seen.ready
    note = Note(EventKind.READY, f"max chunk {ready.max_chunk}, window {ready.window}")
    next_state = State.STABILISING if r.limits.stabilise else State.TRANSFERRING
    return replace(r, state=next_state, ack_timeouts=0, rewinds_since_ack=0), (note,)


def _stabilised(r: Record, seen: Stabilised) -> Decision:
    return replace(r, state=State.TRANSFERRING), ()


def _acked(r: Record, seen: Acked) -> Decision:
    r = progressed(r, 2, seen.offset)
    said = Said(seen.offset, "MSG_OTA_ACK")
    r = replace(r, said=said, resume_offset=seen.offset, ack_timeouts=0, rewinds_since_ack=0)
    return r, ()


def _ack_timeout(r: Record, seen: AckTimeout) -> Decision:
    """No ACK moved forward for the ACK timeout: ask STATUS (P6: the device answers and
    then ACKs what it has), and after a few such waits count the link as failed."""
    waits = r.ack_timeouts + 1
    if waits >= r.limits.max_ack_timeouts:
        why = (
            f"no MSG_OTA_ACK moved forward in {waits} waits of {seen.waited_s:g} s with "
            f"{seen.in_flight} bytes in flight"
        )
        return link_failed(r, LinkFailed(why))
    note = Note(
        EventKind.ACK_TIMEOUT,
        f"no ACK for {seen.waited_s:g} s with {seen.in_flight} bytes in flight; asking STATUS",
    )
    return replace(r, ack_timeouts=waits), (note,)


def _rewound(r: Record, seen: Rewound) -> Decision:
    r = replace(r, said=Said(seen.offset, "MSG_OTA_STATUS"))
    if seen.back <= 0:
        return r, ()
    why = "refused DATA" if seen.refused else "answered STATUS"
    note = Note(EventKind.REWIND, f"device {why}: it expects offset {seen.offset}")
    rewinds = r.rewinds_since_ack + 1
    r = replace(r, rewinds=r.rewinds + 1, rewinds_since_ack=rewinds)
    if rewinds > r.limits.max_rewinds_without_ack:
        why = (
            f"the device moved the transfer back {rewinds} times without an ACK that moves "
            f"forward (it expects offset {seen.offset})"
        )
        failed, notes = link_failed(r, LinkFailed(why))
        return failed, (note, *notes)
    return r, (note,)


def _desync(r: Record, seen: Desync) -> Decision:
    note = Note(EventKind.DESYNC, f"device is {seen.status.state_name} mid-transfer")
    return resync(r, (note,))


def _all_acked(r: Record, seen: AllAcked) -> Decision:
    return replace(r, state=State.FINISHING), ()


def _finish_sent(r: Record, seen: FinishSent) -> Decision:
    return replace(r, commit=Commit.FINISH_SENT), ()


def _done(r: Record, seen: Done) -> Decision:
    if seen.crc32 != r.image.crc32:
        why = (
            f"the device reported crc32 {seen.crc32:08x} for the staged image, expected "
            f"{r.image.crc32:08x}: it verified other bytes than were sent, and may reset into "
            "them; check what it runs with `smartball-ota info`"
        )
        return end(r, Outcome.FAILED, FailureKind.REFUSED, why)
    r = progressed(r, 3, 0)
    note = Note(
        EventKind.DONE, f"device verified crc32 {seen.crc32:08x}; it resets into the new image"
    )
    return replace(r, state=State.REBOOTING, commit=Commit.VERIFIED), (note,)


#: What an error code means to this host (P13: a code it does not know is a refusal).
_RESYNC_CODES = frozenset({p.ErrorCode.BAD_STATE, p.ErrorCode.BAD_OFFSET, p.ErrorCode.BAD_FRAME})
_REFUSAL_HINTS: Mapping[int, str] = {
    p.ErrorCode.TOO_LARGE: "the image does not fit the device's staging area",
    p.ErrorCode.CRC_MISMATCH: "the staged copy does not match the image's CRC-32",
    p.ErrorCode.FLASH_ERROR: "the device's flash failed (it retried once)",
    p.ErrorCode.UNKNOWN_COMMAND: "the device does not know the command",
    p.ErrorCode.BAD_PARAM: "the device rejected a parameter",
    p.ErrorCode.BAD_MANIFEST: "the device cannot read the manifest (its magic or format)",
    p.ErrorCode.UNTRUSTED_KEY: "the image is signed with a key the device does not trust",
    p.ErrorCode.BAD_SIGNATURE: "the signature is not the trusted key's over this manifest",
    p.ErrorCode.DOWNGRADE: "the image's security counter is below the device's",
    p.ErrorCode.UNSIGNED: "the device runs only signed images and holds no manifest for it",
    p.ErrorCode.DIGEST_MISMATCH: "the SHA-256 of the staged flash is not the manifest's",
}
#: Refusals that are a failure of their own (their own exit code), not a plain REFUSED.
_FAILURE_FOR_CODE: Mapping[int, FailureKind] = {
    p.ErrorCode.UNTRUSTED_KEY: FailureKind.UNTRUSTED_KEY,
    p.ErrorCode.DOWNGRADE: FailureKind.DOWNGRADE,
    p.ErrorCode.UNSIGNED: FailureKind.UNSIGNED,
}


def _device_error(r: Record, seen: DeviceError) -> Decision:
    err = seen.error
    answers = err.command or seen.awaiting  # 0: an older device that does not say
    named = p.MsgError(err.code, answers).command_name
    detail = f"{err.code_name} for {named}: {err.text or '(no text)'}"
    if answers != seen.awaiting:
        # An answer to an earlier command (pipelined DATA before a re-sync, say).
        return r, (Note(EventKind.IGNORED, f"stale {detail}"),)
    r = replace(r, commit=Commit.NONE)  # a command refused: no switch is coming from it
    lost_manifest = err.code == p.ErrorCode.UNSIGNED and r.image.manifest is not None
    if err.code in _RESYNC_CODES or (lost_manifest and r.signed_only):
        # UNSIGNED for a signed image: the device no longer holds the manifest it accepted
        # (a reset between MANIFEST and START); the re-sync sends it again.
        return resync(r, (Note(EventKind.DEVICE_ERROR, f"{detail}; re-syncing"),))
    hint = _REFUSAL_HINTS.get(err.code, "an error code this host does not know")
    why = (
        f"device refused {p.MsgType(seen.awaiting).name}: {err.code_name} ({hint}): "
        f"{err.text or '(no text)'}. The device keeps its old image"
    )
    note = Note(EventKind.DEVICE_ERROR, detail)
    kind = _FAILURE_FOR_CODE.get(err.code, FailureKind.REFUSED)
    return end(r, Outcome.FAILED, kind, why, (note,))


def _device_reset(r: Record, seen: DeviceReset) -> Decision:
    return replace(r, state=State.SCANNING, reset_seen=True), ()


def _reset_not_seen(r: Record, seen: ResetNotSeen) -> Decision:
    waits = r.reset_waits + 1
    r = replace(r, reset_waits=waits)
    last = waits >= r.limits.max_reset_waits
    # The note says what comes next: another look at the device, or none (the end).
    next_step = "no more waits" if last else "reconnecting to check its image"
    note = Note(
        EventKind.NO_RESET,
        f"the device did not reset within {seen.waited_s:g} s ({waits} of "
        f"{r.limits.max_reset_waits}); {next_step}",
    )
    if not last:
        return replace(r, state=State.SCANNING), (note,)
    how = f"did not reset within {waits} waits of {seen.waited_s:g} s"
    return switch_stuck(r, how, (note,))


def _backed_off(r: Record, seen: BackedOff) -> Decision:
    if not r.link_closed:
        raise IllegalObservation("BackedOff before FailedLinkClosed")
    return replace(r, state=State.SCANNING, link_closed=False), ()


_HANDLERS: Mapping[type, Callable[[Record, Any], Decision]] = {
    Found: _found,
    NotFound: _not_found,
    Connected: _connected,
    LinkFailed: link_failed,
    InfoReply: _info,
    StatusReply: _status,
    AbortReply: _aborted,
    ManifestAccepted: manifest_accepted,
    HealthChecked: health_checked,
    ConfirmReply: confirm_reply,
    StartSent: _start_sent,
    EraseProgress: _erase_progress,
    Ready: _ready,
    Stabilised: _stabilised,
    Acked: _acked,
    AckTimeout: _ack_timeout,
    Rewound: _rewound,
    Desync: _desync,
    AllAcked: _all_acked,
    FinishSent: _finish_sent,
    Done: _done,
    DeviceError: _device_error,
    DeviceReset: _device_reset,
    ResetNotSeen: _reset_not_seen,
    FailedLinkClosed: _link_closed,
    BackedOff: _backed_off,
}

#: Which observations each state can make.
_ACCEPTS: Mapping[State, tuple[type, ...]] = {
    S.SCANNING: (Found, NotFound),
    S.CONNECTING: (Connected, LinkFailed),
    S.QUERYING: (InfoReply, StatusReply, LinkFailed),
    S.ABORTING: (AbortReply, LinkFailed),
    S.SENDING_MANIFEST: (ManifestAccepted, DeviceError, LinkFailed),
    S.HEALTH_CHECKING: (HealthChecked,),
    S.CONFIRMING: (ConfirmReply, LinkFailed),
    S.STARTING: (StartSent, LinkFailed),
    S.WAITING_READY: (EraseProgress, Ready, DeviceError, LinkFailed),
    S.STABILISING: (Stabilised, LinkFailed),
    S.TRANSFERRING: (Acked, AckTimeout, Rewound, Desync, AllAcked, DeviceError, LinkFailed),
    S.FINISHING: (FinishSent, Done, DeviceError, LinkFailed),
    S.REBOOTING: (DeviceReset, ResetNotSeen),
    S.RECOVERING: (FailedLinkClosed, BackedOff),
}

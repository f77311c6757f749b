"""The decisions of a signed-only device's update (docs/protocol.md section 16): what the
host refuses to send before anything is erased, the manifest, the new image on trial, its
health check and confirm, and the revert. Pure, like :mod:`.decide`, which dispatches to
these."""

from __future__ import annotations

from dataclasses import replace

from ..contract import codec as p
from ..contract.manifest import key_id_text
from .moves import end
from .observations import ConfirmReply, HealthChecked, ManifestAccepted, Observation
from .record import Commit, Decision, ImageId, Note, Record
from .states import EventKind, FailureKind, IllegalObservation, Outcome, State


def signed_refusal(image: ImageId, info: p.MsgInfo) -> tuple[FailureKind, str] | None:
    """Why this image must not be sent to this signed-only device, found before anything is
    erased (docs/protocol.md section 16; the device would refuse it too, but only after the
    host spent a connection on it): unsigned, another key, a lower security counter, or
    an image on trial the user has not decided about. None: send it."""
    m = image.manifest
    device_key = key_id_text(info.trusted_key_id)
    if m is None:
        return FailureKind.UNSIGNED, (
            f"{image.source} is not signed and the device runs only signed images (it trusts "
            f"key {device_key}): sign it with `smartball-ota sign` and flash the .sbi. The "
            "device keeps its old image"
        )
    if m.key_id != info.trusted_key_id:
        return FailureKind.UNTRUSTED_KEY, (
            f"{image.source} is signed with key {key_id_text(m.key_id)}, but the device trusts "
            f"key {device_key}: sign it with the device's key. The device keeps its old image"
        )
    if m.security_counter < info.security_counter:
        return FailureKind.DOWNGRADE, (
            f"{image.source} carries security counter {m.security_counter}, below the "
            f"device's {info.security_counter}: the device runs no image below its counter (a "
            "downgrade); flash an image signed with a counter of at least "
            f"{info.security_counter}. The device keeps its old image"
        )
    if info.image_state == p.ImageState.TEST:
        return FailureKind.TRIAL_PENDING, (
            f"the device runs an image on trial (firmware {info.firmware_version}, crc32 "
            f"{info.active_image_crc32:08x}, not confirmed), and a new update would take the "
            "staging bank its revert needs: keep it with `smartball-ota confirm`, or reset the "
            "device to return to its previous image, then flash again. Nothing was sent"
        )
    return None


def runs_new_signed(r: Record, info: p.MsgInfo, notes: tuple[Note, ...]) -> Decision:
    """A signed-only device runs the new image: on trial, it is checked and confirmed;
    already confirmed, the update is done. In any other state (REVERTED: the old image
    came back, whose CRC this one shares) STATUS decides (a switch may still be pending)."""
    state = info.image_state
    running = f"crc32 {info.active_image_crc32:08x}, firmware {info.firmware_version}"
    if state == p.ImageState.TEST:
        # It runs the new image, so it took it, also when its DONE never reached the host
        # (a reset as DONE left it): the confirm that follows is after the switch.
        r = replace(r, commit=Commit.VERIFIED)
        if not r.limits.confirm:
            note = Note(
                EventKind.VERIFIED,
                f"device runs the new image on trial ({running}), not confirmed (--no-confirm): "
                "it returns to its old image at its next reset unless confirmed",
            )
            return end(r, Outcome.SUCCEEDED, None, "", (*notes, note))
        if r.limits.health_check and not r.healthy:
            note = Note(
                EventKind.VERIFIED, f"device runs the new image on trial ({running}); health check"
            )
            return replace(r, state=State.HEALTH_CHECKING), (*notes, note)
        note = Note(
            EventKind.VERIFIED, f"device runs the new image on trial ({running}); confirming"
        )
        return replace(r, state=State.CONFIRMING), (*notes, note)
    if state == p.ImageState.CONFIRMED:
        return confirmed(r, info, notes)
    return r, notes


def confirmed(r: Record, info: p.MsgInfo, notes: tuple[Note, ...]) -> Decision:
    note = Note(
        EventKind.CONFIRMED,
        f"device runs the new image, confirmed (crc32 {info.active_image_crc32:08x}, firmware "
        f"{info.firmware_version}, security counter {info.security_counter})",
    )
    notes = (*notes, note)
    m = r.image.manifest
    if m is not None and info.security_counter < m.security_counter:
        notes += (
            Note(
                EventKind.WARNING,
                f"the device reports security counter {info.security_counter} after the "
                f"confirm, below the image's {m.security_counter}: it did not raise it (a "
                "firmware fault), so it would still run older images",
            ),
        )
    return end(r, Outcome.SUCCEEDED, None, "", notes)


def reverted(r: Record, notes: tuple[Note, ...]) -> Decision:
    """DONE was said, the device reset, and it runs its old image: REVERTED, in a true
    sentence for each way it can happen (section 16)."""
    info = r.info
    assert info is not None
    new = f"crc32 {r.image.crc32:08x}"
    old = f"firmware {info.firmware_version}, crc32 {info.active_image_crc32:08x}"
    if info.image_state == p.ImageState.REVERTED:
        why = (
            f"the device ran the new image ({new}) on trial and reset before it was confirmed, "
            f"so its bootloader swapped back: it runs its old image ({old}) again. Find why the "
            "new image did not stay up (a crash, a watchdog, a power cut) before flashing it "
            "again"
        )
    else:
        why = (
            f"the device refused the new image ({new}) at boot (its bootloader verifies the "
            "signature, the SHA-256 and the security counter again) and runs its old image "
            f"({old}) again"
        )
    note = Note(EventKind.REVERTED, why)
    return end(r, Outcome.REVERTED, None, why, (*notes, note))


def manifest_accepted(r: Record, seen: ManifestAccepted) -> Decision:
    m = r.image.manifest
    if m is None:
        raise IllegalObservation("a manifest accepted for an image that has none")
    note = Note(
        EventKind.MANIFEST,
        f"device accepted the signed manifest (firmware {m.version}, security counter "
        f"{m.security_counter}, key {key_id_text(m.key_id)})",
    )
    return replace(r, state=State.STARTING), (note,)


def _after_switch(r: Record, seen: Observation) -> None:
    """The health check and the confirm come only after the device took the new image."""
    if r.commit is not Commit.VERIFIED:
        raise IllegalObservation(f"{type(seen).__name__} before the device took the new image")


def health_checked(r: Record, seen: HealthChecked) -> Decision:
    _after_switch(r, seen)
    if seen.healthy:
        note = Note(EventKind.HEALTH_CHECK, f"passed{': ' + seen.why if seen.why else ''}")
        return replace(r, state=State.SCANNING, healthy=True, info_answered=False), (note,)
    old = r.first_info.active_image_crc32 if r.first_info else None
    back = f" (crc32 {old:08x})" if old is not None else ""
    why = (
        f"the health check failed ({seen.why or 'no reason given'}): the new image (crc32 "
        f"{r.image.crc32:08x}) was not confirmed. The device runs it on trial and returns to "
        f"its old image{back} at its next reset: power-cycle it, or keep the new image anyway "
        "with `smartball-ota confirm`"
    )
    note = Note(EventKind.HEALTH_CHECK, f"failed: {seen.why or 'no reason given'}")
    return end(r, Outcome.FAILED, FailureKind.UNHEALTHY, why, (note,))


def confirm_reply(r: Record, seen: ConfirmReply) -> Decision:
    _after_switch(r, seen)
    info = seen.info
    r = replace(r, info=info, capabilities=info.capabilities)
    if info.runs(r.image.size, r.image.crc32):
        if info.image_state == p.ImageState.CONFIRMED:
            return confirmed(r, info, ())
        why = (
            f"the device answered CMD_OTA_CONFIRM still running the new image (crc32 "
            f"{r.image.crc32:08x}) in image state {_image_state_name(info.image_state)}, not "
            "confirmed: it returns to its old image at its next reset; check with "
            "`smartball-ota info` and confirm with `smartball-ota confirm`"
        )
        return end(r, Outcome.UNCONFIRMED, None, why)
    return reverted(r, ())


def _image_state_name(state: int) -> str:
    try:
        return p.ImageState(state).name
    except ValueError:
        return f"unknown ({state})"

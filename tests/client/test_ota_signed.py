"""The OTA engine's decisions for signed updates (docs/protocol.md section 16), pure: what
INFO and the signed image lead to before START, the manifest before a new session, and the
trial, health check, confirm and revert after the reset. No link, no device, no clock."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import Manifest
from pytest_smartball.image import FirmwareImage
from pytest_smartball.image_formats import ImageFormat
from pytest_smartball.ota import HealthCheckFailed, OtaEngine, OtaResult, OtaSettings
from pytest_smartball.ota import observations as o
from pytest_smartball.ota.decide import decide
from pytest_smartball.ota.record import Commit, ImageId, Limits, Record
from pytest_smartball.ota.signed import signed_refusal
from pytest_smartball.ota.states import EventKind, FailureKind, Outcome, State

KID = 0x5EC0DE01
OTHER_KID = 0x0BADC0DE
SIZE, CRC = 20_000, 0x1234ABCD
OLD_CRC = 0x0BAD0BAD
UNSIGNED = ImageId(SIZE, CRC, "fw.bin")
SIGNED = ImageId(SIZE, CRC, "fw.sbi", Manifest(1, 2, 0, 5, SIZE, CRC, KID, bytes(32)))
SIGNED_CAP = p.Capability.SIGNED_IMAGES
LIMITS = Limits()
#: A signed-only device that trusts KID, counter 3, running its old image (confirmed).
OLD = p.MsgInfo(1, 1, 0, 0, 12_000, OLD_CRC, 480 * 1024, SIGNED_CAP, 3, 0, KID)
#: The same device after the swap: the new image on trial.
TRIAL = replace(
    OLD, fw_minor=2, active_image_size=SIZE, active_image_crc32=CRC, image_state=p.ImageState.TEST
)
CONFIRMED = replace(TRIAL, image_state=p.ImageState.CONFIRMED, security_counter=5)
REVERTED = replace(OLD, image_state=p.ImageState.REVERTED)
V1 = p.MsgInfo(1, 1, 0, 0, 12_000, OLD_CRC, 480 * 1024)
IDLE = p.MsgOtaStatus(p.OtaState.IDLE, 0, 0, 0)


def querying(image: ImageId = SIGNED, limits: Limits = LIMITS, **fields: object) -> Record:
    r = replace(Record(image, limits), state=State.QUERYING, seen=True, fresh_link=True)
    return replace(r, **fields)  # type: ignore[arg-type]


def step(r: Record, *seen: o.Observation) -> tuple[Record, list[EventKind]]:
    kinds: list[EventKind] = []
    for observation in seen:
        r, notes = decide(r, observation)
        kinds += [n.kind for n in notes]
    return r, kinds


# --- before START: the refusals (no erase, nothing sent) -------------------------------------


@pytest.mark.parametrize(
    ("image", "info", "kind", "words"),
    [
        (UNSIGNED, OLD, FailureKind.UNSIGNED, "the device runs only signed images"),
        (
            replace(SIGNED, manifest=replace(SIGNED.manifest, key_id=OTHER_KID)),  # type: ignore[type-var]
            OLD,
            FailureKind.UNTRUSTED_KEY,
            "signed with key dec0ad0b, but the device trusts key 01dec05e",
        ),
        (SIGNED, replace(OLD, security_counter=6), FailureKind.DOWNGRADE, "below the device's 6"),
        (
            SIGNED,
            replace(OLD, image_state=p.ImageState.TEST),
            FailureKind.TRIAL_PENDING,
            "the device runs an image on trial",
        ),
    ],
    ids=["unsigned", "another-key", "downgrade", "trial-pending"],
)
def test_what_a_signed_only_device_would_refuse_is_refused_at_its_first_info(
    image: ImageId, info: p.MsgInfo, kind: FailureKind, words: str
) -> None:
    assert signed_refusal(image, info) is not None
    r, _ = step(querying(image), o.InfoReply(info))
    assert r.state is State.FAILED and r.outcome is Outcome.FAILED
    assert r.failure is kind and words in r.error
    assert r.commit is Commit.NONE and not r.session_opened
    assert r.error.count(". ") <= 2  # a sentence, not an essay: what, why, what the device holds


def test_the_refusals_come_in_the_protocols_order() -> None:
    worst = replace(OLD, security_counter=9, image_state=p.ImageState.TEST, trusted_key_id=7)
    assert signed_refusal(UNSIGNED, worst)[0] is FailureKind.UNSIGNED  # type: ignore[index]
    assert signed_refusal(SIGNED, worst)[0] is FailureKind.UNTRUSTED_KEY  # type: ignore[index]
    same_key = replace(worst, trusted_key_id=KID)
    assert signed_refusal(SIGNED, same_key)[0] is FailureKind.DOWNGRADE  # type: ignore[index]


def test_an_equal_counter_is_no_downgrade() -> None:
    assert signed_refusal(SIGNED, replace(OLD, security_counter=5)) is None


def test_a_signed_image_opens_its_session_with_the_manifest() -> None:
    r, kinds = step(querying(), o.InfoReply(OLD), o.StatusReply(IDLE))
    assert r.state is State.SENDING_MANIFEST
    r, kinds = step(r, o.ManifestAccepted(IDLE))
    assert r.state is State.STARTING and EventKind.MANIFEST in kinds


def test_after_an_abort_the_new_session_is_opened_with_the_manifest_again() -> None:
    other = p.MsgOtaStatus(p.OtaState.RECEIVING, 100, 30_000, 0xDEADBEEF)
    r, _ = step(querying(), o.InfoReply(OLD), o.StatusReply(other))
    assert r.state is State.ABORTING
    r, _ = step(r, o.AbortReply(IDLE))
    assert r.state is State.SENDING_MANIFEST


def test_a_resume_of_the_same_session_needs_no_manifest() -> None:
    ours = p.MsgOtaStatus(p.OtaState.RECEIVING, 4096, SIZE, CRC)
    r, _ = step(querying(), o.InfoReply(OLD), o.StatusReply(ours))
    assert r.state is State.STARTING and r.resume_offset == 4096


def test_a_v1_device_gets_a_signed_image_unsigned_with_a_warning() -> None:
    r, kinds = step(querying(), o.InfoReply(V1))
    assert EventKind.WARNING in kinds
    r, _ = step(r, o.StatusReply(IDLE))
    assert r.state is State.STARTING  # no MANIFEST: a v1 device does not know it


def test_an_unsigned_image_to_a_v1_device_is_as_before() -> None:
    r, kinds = step(querying(UNSIGNED), o.InfoReply(V1), o.StatusReply(IDLE))
    assert r.state is State.STARTING and EventKind.WARNING not in kinds


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (p.ErrorCode.UNTRUSTED_KEY, FailureKind.UNTRUSTED_KEY),
        (p.ErrorCode.DOWNGRADE, FailureKind.DOWNGRADE),
        (p.ErrorCode.BAD_SIGNATURE, FailureKind.REFUSED),
        (p.ErrorCode.BAD_MANIFEST, FailureKind.REFUSED),
    ],
)
def test_a_manifest_the_device_refuses_ends_the_update_with_its_reason(
    code: p.ErrorCode, kind: FailureKind
) -> None:
    r = replace(querying(capabilities=SIGNED_CAP), state=State.SENDING_MANIFEST)
    error = p.MsgError(code, p.MsgType.CMD_OTA_MANIFEST, "no")
    r, _ = step(r, o.DeviceError(error, p.MsgType.CMD_OTA_MANIFEST))
    assert r.outcome is Outcome.FAILED and r.failure is kind
    assert "refused CMD_OTA_MANIFEST" in r.error and "keeps its old image" in r.error


def test_start_refused_unsigned_after_the_manifest_was_lost_sends_it_again() -> None:
    r = replace(querying(capabilities=SIGNED_CAP), state=State.WAITING_READY, session_opened=True)
    error = p.MsgError(p.ErrorCode.UNSIGNED, p.MsgType.CMD_OTA_START, "no manifest")
    r, _ = step(r, o.DeviceError(error, p.MsgType.CMD_OTA_START))
    assert r.state is State.QUERYING  # re-sync: INFO, STATUS, then MANIFEST again
    r, _ = step(r, o.InfoReply(OLD), o.StatusReply(IDLE))
    assert r.state is State.SENDING_MANIFEST


def test_a_digest_mismatch_at_finish_is_a_refusal_and_the_device_keeps_its_image() -> None:
    r = replace(querying(capabilities=SIGNED_CAP), state=State.FINISHING)
    error = p.MsgError(p.ErrorCode.DIGEST_MISMATCH, p.MsgType.CMD_OTA_FINISH, "sha")
    r, _ = step(r, o.DeviceError(error, p.MsgType.CMD_OTA_FINISH))
    assert r.failure is FailureKind.REFUSED and "SHA-256 of the staged flash" in r.error


# --- after the reset: trial, health check, confirm, revert -----------------------------------


def after_reset(limits: Limits = LIMITS) -> Record:
    """DONE was said and the device reset; the engine reconnected and asks INFO."""
    return querying(limits=limits, commit=Commit.VERIFIED, capabilities=SIGNED_CAP,
                    first_info=OLD, fits_checked=True)  # fmt: skip


def test_the_new_image_on_trial_is_confirmed_and_that_is_success() -> None:
    r, _ = step(after_reset(), o.InfoReply(TRIAL))
    assert r.state is State.CONFIRMING
    r, kinds = step(r, o.ConfirmReply(CONFIRMED))
    assert r.outcome is Outcome.SUCCEEDED and EventKind.CONFIRMED in kinds
    assert EventKind.WARNING not in kinds


def test_a_confirm_that_did_not_raise_the_counter_is_said() -> None:
    r, _ = step(after_reset(), o.InfoReply(TRIAL))
    r, kinds = step(r, o.ConfirmReply(replace(CONFIRMED, security_counter=3)))
    assert r.outcome is Outcome.SUCCEEDED and EventKind.WARNING in kinds


def test_a_confirm_answered_still_on_trial_is_unconfirmed() -> None:
    r, _ = step(after_reset(), o.InfoReply(TRIAL))
    r, _ = step(r, o.ConfirmReply(TRIAL))
    assert r.outcome is Outcome.UNCONFIRMED and "not confirmed" in r.error


def test_no_confirm_leaves_the_new_image_on_trial_and_says_so() -> None:
    r, kinds = step(after_reset(Limits(confirm=False)), o.InfoReply(TRIAL))
    assert r.outcome is Outcome.SUCCEEDED and r.info is TRIAL
    assert EventKind.VERIFIED in kinds


def test_the_health_check_comes_before_the_confirm_on_a_fresh_link() -> None:
    r, _ = step(after_reset(Limits(health_check=True)), o.InfoReply(TRIAL))
    assert r.state is State.HEALTH_CHECKING
    r, kinds = step(r, o.HealthChecked(True))
    assert r.state is State.SCANNING and r.healthy and EventKind.HEALTH_CHECK in kinds
    r, _ = step(r, o.Found(), o.Connected(), o.InfoReply(TRIAL))
    assert r.state is State.CONFIRMING  # not a second health check


def test_a_failed_health_check_leaves_the_image_unconfirmed_and_says_what_happens() -> None:
    r, _ = step(after_reset(Limits(health_check=True)), o.InfoReply(TRIAL))
    r, _ = step(r, o.HealthChecked(False, "`probe` exited with 1"))
    assert r.outcome is Outcome.FAILED and r.failure is FailureKind.UNHEALTHY
    assert "`probe` exited with 1" in r.error
    assert "runs it on trial and returns to its old image (crc32 0bad0bad)" in r.error


def test_a_device_back_on_its_old_image_after_the_reset_is_reverted() -> None:
    r, _ = step(after_reset(), o.InfoReply(REVERTED), o.StatusReply(IDLE))
    assert r.outcome is Outcome.REVERTED and r.state is State.REVERTED
    assert "reset before it was confirmed" in r.error
    assert "runs its old image (firmware 1.0.0, crc32 0bad0bad) again" in r.error


def test_a_bootloader_that_refused_the_new_image_is_reverted_in_its_own_words() -> None:
    r, _ = step(after_reset(), o.InfoReply(OLD), o.StatusReply(IDLE))
    assert r.outcome is Outcome.REVERTED
    assert "refused the new image (crc32 1234abcd) at boot" in r.error


def test_a_switch_still_pending_is_waited_for_not_called_a_revert() -> None:
    complete = p.MsgOtaStatus(p.OtaState.COMPLETE, SIZE, SIZE, CRC)
    r, _ = step(after_reset(), o.InfoReply(OLD), o.StatusReply(complete))
    assert r.state is State.REBOOTING and r.outcome is None


def test_a_v1_device_after_the_reset_needs_no_confirm() -> None:
    new_v1 = replace(V1, active_image_size=SIZE, active_image_crc32=CRC)
    r = replace(after_reset(), capabilities=0)
    r, _ = step(r, o.InfoReply(new_v1))
    assert r.outcome is Outcome.SUCCEEDED


def test_a_rerun_finds_this_image_on_trial_and_confirms_it() -> None:
    r, kinds = step(querying(), o.InfoReply(TRIAL))
    assert r.state is State.CONFIRMING and r.commit is Commit.VERIFIED
    assert EventKind.WARNING in kinds


def test_a_lost_link_while_confirming_ends_unconfirmed_saying_the_trial() -> None:
    r, _ = step(after_reset(Limits(max_attempts_without_progress=1)), o.InfoReply(TRIAL))
    r, _ = step(r, o.LinkFailed("dropped"), o.FailedLinkClosed(), o.BackedOff(), o.NotFound("gone"))
    r, _ = step(r, o.FailedLinkClosed())
    assert r.outcome is Outcome.UNCONFIRMED
    assert "on trial (not confirmed)" in r.error


# --- the engine against the simulated ball (its firmware model understands MANIFEST) ----------


def _sim(**device_options: object) -> tuple[Any, Any]:
    from pytest_smartball.targets.simulated import make_sim_target

    options = {"trusted_keys": [signing.test_trusted_key()], **device_options}
    target = make_sim_target(**options)  # type: ignore[arg-type]
    assert target.sim is not None
    return target, target.sim


def _image(seed: int, counter: int = 5, *, key: Any = None) -> FirmwareImage:
    data = random.Random(seed).randbytes(20_000 + seed)
    signed = signing.sign(data, key or signing.test_key(), (1, 2, seed % 256), counter)
    return FirmwareImage(data, f"fw-{seed}.sbi", ImageFormat.SIGNED, signed=signed)


async def _flash(target: Any, image: FirmwareImage, **settings: Any) -> OtaResult:
    return await OtaEngine(image, target.backend, settings=OtaSettings(**settings)).run()


@pytest.mark.asyncio
@pytest.mark.sim_only
async def test_a_signed_update_ends_confirmed_with_the_counter_raised() -> None:
    target, sim = _sim(security_counter=2)
    image = _image(1)
    result = await _flash(target, image)
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert sim.firmware.active.data == image.data
    assert result.info_after is not None and result.image_state == "confirmed"
    assert result.info_after.security_counter == 5 and sim.firmware.security_counter == 5


@pytest.mark.asyncio
@pytest.mark.sim_only
async def test_a_downgrade_is_refused_before_anything_is_erased() -> None:
    target, sim = _sim(security_counter=6)
    old = sim.firmware.active.crc32
    erases = sim.firmware.flash.erases
    result = await _flash(target, _image(2, counter=5))
    assert result.outcome is Outcome.FAILED and result.failure is FailureKind.DOWNGRADE
    assert "below the device's 6" in result.error and result.bytes_sent == 0
    assert sim.firmware.active.crc32 == old and sim.firmware.flash.erases == erases


@pytest.mark.asyncio
@pytest.mark.sim_only
async def test_an_unsigned_image_is_refused_before_anything_is_erased() -> None:
    target, sim = _sim()
    erases = sim.firmware.flash.erases
    image = FirmwareImage(random.Random(3).randbytes(20_000), "fw.bin")
    result = await _flash(target, image)
    assert result.failure is FailureKind.UNSIGNED and sim.firmware.flash.erases == erases


@pytest.mark.asyncio
@pytest.mark.sim_only
async def test_a_trial_image_is_left_for_the_user_to_decide_and_a_rerun_confirms_it() -> None:
    target, sim = _sim()
    first = _image(4)
    result = await _flash(target, first, limits=Limits(confirm=False))
    assert result.outcome is Outcome.SUCCEEDED and result.image_state == "test"
    erases = sim.firmware.flash.erases
    refused = await _flash(target, _image(5, counter=6))
    assert refused.failure is FailureKind.TRIAL_PENDING and "on trial" in refused.error
    assert sim.firmware.flash.erases == erases  # the staging bank (the revert's) untouched
    again = await _flash(target, first)  # the same image again: only the confirm is left
    assert again.outcome is Outcome.SUCCEEDED and again.image_state == "confirmed"
    assert again.bytes_sent == 0


@pytest.mark.asyncio
@pytest.mark.sim_only
async def test_a_reset_during_the_health_check_is_reverted_and_said_so() -> None:
    """The health check (the link released) sees the ball reset, as a crashing image does:
    the bootloader swaps back, and the engine says REVERTED."""
    target, sim = _sim()
    old = sim.firmware.active.crc32

    async def crashes(info: p.MsgInfo) -> bool:
        assert info.image_state == p.ImageState.TEST
        sim.reboot()
        return True

    result = await _flash(target, _image(6), health_check=crashes)
    assert result.outcome is Outcome.REVERTED, result.error
    assert "reset before it was confirmed" in result.error
    assert sim.firmware.active.crc32 == old and result.image_state == "reverted"


@pytest.mark.asyncio
@pytest.mark.sim_only
async def test_a_health_check_that_says_no_leaves_the_image_on_trial() -> None:
    target, sim = _sim()

    async def unhealthy(info: p.MsgInfo) -> bool:
        raise HealthCheckFailed("the accelerometer does not answer")

    image = _image(7)
    result = await _flash(target, image, health_check=unhealthy)
    assert result.failure is FailureKind.UNHEALTHY
    assert "the accelerometer does not answer" in result.error
    assert sim.firmware.active.data == image.data and result.image_state == "test"
    sim.reboot()  # what the sentence promises: the next reset returns to the old image
    assert sim.firmware.active.data != image.data


@pytest.mark.asyncio
@pytest.mark.sim_only
async def test_a_health_check_that_hangs_is_bounded() -> None:
    target, _ = _sim()

    async def hangs(info: p.MsgInfo) -> bool:
        await asyncio.sleep(3600)
        return True

    result = await _flash(target, _image(8), health_check=hangs, health_check_timeout_s=5)
    assert result.failure is FailureKind.UNHEALTHY and "within 5 s" in result.error


def test_the_wait_after_a_swap_is_the_devices_obligation_for_the_larger_image() -> None:
    from pytest_smartball import contract
    from pytest_smartball.ota.timeouts import DEFAULT, swap_reappear_s, with_margin

    t = contract.timing()
    assert swap_reappear_s(480 * 1024, 64 * 1024) == with_margin(
        t.reset_to_advertising_after_swap_max_s(120)
    )
    assert swap_reappear_s(100, 8193) == swap_reappear_s(8193, 100)  # 3 pages either way
    assert swap_reappear_s(320_000, 0) > DEFAULT.reappear_s  # a copy's bound is too short


@pytest.mark.parametrize(
    ("signed", "commit", "old_size", "longer"),
    [
        (False, Commit.VERIFIED, 320_000, False),  # a v1 device copies, it does not swap
        (True, Commit.NONE, 320_000, False),  # no switch asked for: no swap at the reset
        (True, Commit.FINISH_SENT, 320_000, True),  # the swap of the larger image
        (True, Commit.VERIFIED, 320_000, True),
        (True, Commit.VERIFIED, 12_000, False),  # two small images swap within the wait
    ],
)
def test_a_vanished_device_is_waited_for_its_swap_only_after_a_switch_on_a_signed_device(
    signed: bool, commit: Commit, old_size: int, longer: bool
) -> None:
    from pytest_smartball.ota.timeouts import DEFAULT, reappear_s, swap_reappear_s

    info = replace(OLD, active_image_size=old_size)
    r = replace(
        Record(SIGNED, LIMITS),
        commit=commit,
        first_info=info,
        capabilities=SIGNED_CAP if signed else 0,
    )
    wait = reappear_s(DEFAULT.reappear_s, r)
    assert wait == (swap_reappear_s(SIZE, old_size) if longer else DEFAULT.reappear_s)
    assert wait >= DEFAULT.reappear_s


@pytest.mark.asyncio
@pytest.mark.sim_only
async def test_a_slow_swap_within_its_obligation_is_waited_for_not_recovered_from() -> None:
    """A ball whose swap of a 320 KB image takes ~38 s (0.49 s a page, within the 0.5 s its
    obligation allows): more than the 34 s a copy may take, so the engine must wait the
    swap's own bound rather than count the device lost."""
    target, _ = _sim(flash_spec="erase_page_s=0.12")
    data = random.Random(9).randbytes(320_000)
    signed = signing.sign(data, signing.test_key(), (1, 3, 0), 5)
    image = FirmwareImage(data, "big.sbi", ImageFormat.SIGNED, signed=signed)
    result = await _flash(target, image)
    assert result.outcome is Outcome.SUCCEEDED, result.error
    kinds = [event.kind for event in result.events]
    assert EventKind.LINK_FAILURE not in kinds and result.reconnects == 0


@pytest.mark.parametrize(
    ("faults", "outcome"),
    [
        (None, Outcome.SUCCEEDED),
        ("reboot@cmd:CMD_OTA_CONFIRM#1", Outcome.REVERTED),
        ("drop@t:1s", Outcome.SUCCEEDED),
    ],
)
def test_the_signed_engine_breaks_no_rule_of_the_contract_monitor(
    faults: str | None, outcome: Outcome
) -> None:
    """Every frame of a signed update (MANIFEST, the session, the trial's INFO, the health
    check's reconnect, CONFIRM; a revert; a drop) through the contract monitor: the
    engine's conversation is one the contract allows."""
    from pytest_smartball import loops
    from pytest_smartball.plugin.monitoring import ContractWatch

    async def healthy(info: p.MsgInfo) -> bool:
        return True

    target, _ = _sim(faults=faults, seed=2)
    watch = ContractWatch()
    watch.start()
    try:
        engine = OtaEngine(_image(10), target.backend, settings=OtaSettings(health_check=healthy))
        result = loops.run(engine.run(), virtual=True)
    finally:
        watch.stop()
    assert result.outcome is outcome, result.error
    assert watch.devices, "the monitor watched no link"
    assert watch.violations() == [], "\n".join(map(str, watch.violations()))


@pytest.mark.parametrize("limits", [Limits(health_check=True), Limits(confirm=False)])
def test_a_health_check_or_no_confirm_for_a_v1_device_is_said_to_do_nothing(
    limits: Limits,
) -> None:
    _, kinds = step(querying(UNSIGNED, limits), o.InfoReply(V1))
    assert kinds == [EventKind.WARNING]
    _, kinds = step(querying(UNSIGNED), o.InfoReply(V1))
    assert kinds == []


def test_the_release_page_knows_every_engine_state_and_outcome() -> None:
    """The new states and the fourth outcome get a label and a colour on the release page
    (a phase it does not know would be an unlabelled grey band)."""
    from pytest_smartball.release_report import model, render

    working = {s.value for s in State if not s.terminal}
    assert working <= set(model.PHASE_LABELS) and working <= set(render.PHASE_COLOURS)
    assert {s.value for s in State if s.terminal} == set(model.TERMINAL_STATES)


def test_a_stale_error_while_the_manifest_is_checked_is_skipped() -> None:
    """A refusal of an earlier command (pipelined DATA before a re-sync) is no answer to
    the manifest: the engine keeps waiting for it (its loop, bounded by the reply timeout)."""
    r = replace(querying(capabilities=SIGNED_CAP), state=State.SENDING_MANIFEST)
    stale = p.MsgError(p.ErrorCode.BAD_OFFSET, p.MsgType.CMD_OTA_DATA, "late")
    r, kinds = step(r, o.DeviceError(stale, p.MsgType.CMD_OTA_MANIFEST))
    assert r.state is State.SENDING_MANIFEST and kinds == [EventKind.IGNORED]

"""SmartBallFirmware's signed updates (docs/protocol.md section 16), on a ball provisioned
with trusted keys: CMD_OTA_MANIFEST and its checks (before anything is erased), START's
need of the accepted manifest, the SHA-256 of the staged flash at FINISH, the bootloader's
second verify and its swap, the TEST state, CMD_OTA_CONFIRM and the revert at a reset.

What survives a reset lives in :class:`SignedState` (the bootloader's settings page): the
image state, the security counter, the swap trailer and what the previous image is. The
accepted manifest is RAM: a reset or an ABORT discards it. Signatures are checked with
:func:`pytest_smartball.contract.signing.verify`, the platform's crypto for this model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pytest_smartball.contract import codec as p
from pytest_smartball.contract.manifest import (
    SIGNED_HEAD_SIZE,
    Manifest,
    ManifestError,
    crc_preserving_flip,
)
from pytest_smartball.contract.signing import SignatureRefused, TrustedKey, verify

from ..make_image import image_version
from .bugs import FirmwareBug as Bug
from .flash import PAGE_SIZE, Flash
from .swap import (
    SwapRecord,
    SwapWear,
    active_bank_of,
    run_swap,
    step_s,
    swap_pages,
)
from .types import (
    FirmwareEvent,
    FirmwareEventKind,
    FlashTimings,
    OtaSession,
    StoredImage,
    _PendingRecord,
)

log = logging.getLogger("sim.firmware")

#: A bound on boots in one power-up: a swap cut by a power failure resumes at the next.
MAX_BOOTS_PER_RESET = 8


@dataclass(slots=True)
class SignedState:
    """What a signed-only ball persists (survives a reset and a power cut)."""

    security_counter: int = 0
    image_state: p.ImageState = p.ImageState.CONFIRMED
    #: The swap under way (its trailer), if a power cut interrupted one.
    swap: SwapRecord | None = None
    #: The manifest of the image running in TEST (its counter is raised at confirm).
    test_manifest: Manifest | None = None
    #: The image the staging bank holds after a swap (size, version): the revert's.
    previous: tuple[int, tuple[int, int, int]] | None = None


@dataclass(slots=True)
class AcceptedManifest:
    """A manifest that passed every check of CMD_OTA_MANIFEST (RAM)."""

    manifest: Manifest
    head: bytes = field(repr=False)


class BootedDevice(Protocol):
    """What the bootloader reads and writes of the device it boots: the provisioning, the
    active image and the pending record, the flash and its timings, the bugs, the boots."""

    trusted_keys: tuple[TrustedKey, ...]
    active: StoredImage
    _pending: _PendingRecord | None
    flash: Flash
    timings: FlashTimings
    bugs: frozenset[Bug]
    boot_count: int


class SignedBootloader:
    """The signed ball's bootloader (section 16.4-16.6) and the faults on its flash: the
    second verify of PENDING, the resumable swap, TEST and the revert. A collaborator of the
    Python model (:class:`~smartball_sim.firmware.model.SmartBallFirmware`, whose application
    side is :class:`SignedUpdates`) and of the C core's simulated platform
    (:class:`~smartball_sim.firmware.c_firmware.CFirmware`): the bootloader is not the
    core's job. It holds the settings page and the swap's wear and faults; the device it
    boots is reached through :class:`BootedDevice` only."""

    def __init__(self, device: BootedDevice, security_counter: int) -> None:
        self._device = device
        #: The settings page: what the bootloader reads and leaves for the application (a
        #: firmware takes its running image state and counter from it once the boot is over).
        self.signed = SignedState(security_counter=security_counter)
        self.swap_wear = SwapWear()
        #: The next swap loses power after this many steps (the ``swap-cut`` fault).
        self.swap_cut_after_steps: int | None = None
        self.swap_resumes = 0
        #: The staging bank's bytes to flip once the transfer is complete (``flip-staged``).
        self.staged_flip: list[int] = []

    def boot(self) -> float:
        """Boot a signed-only ball: the bootloader, again after each power cut inside a
        swap (at most MAX_BOOTS_PER_RESET). Returns the time it took."""
        seconds = 0.0
        for _ in range(MAX_BOOTS_PER_RESET):
            spent, power_failed = self._signed_bootloader()
            seconds += spent
            if not power_failed:
                break
            self._device.boot_count += 1  # the power is back: the bootloader starts again
        return seconds

    @property
    def pending_image(self) -> StoredImage | None:
        """The verified image the bootloader switches to at the next reset, if any."""
        device = self._device
        if device._pending is None:
            return None
        data = device.flash.read(0, device._pending.image_size)
        return StoredImage(data, image_version(data))

    def flip_staged(self, offset: int) -> None:
        """The ``flip-staged`` fault: a staged byte flips (CRC-32 kept) at once when the
        transfer is verified and pending (only the bootloader can tell then), else once the
        transfer is in flash."""
        if self._device._pending is not None:
            self.corrupt_staged(offset)
        else:
            self.staged_flip.append(offset)

    def flip_queued(self, size: int) -> None:
        """The transfer of ``size`` bytes is in flash: the flips queued act now."""
        while self.staged_flip:
            self.corrupt_staged(self.staged_flip.pop(0), size)

    def clear_faults(self) -> None:
        """What a previous fault plan left for the bootloader goes with it."""
        self.staged_flip.clear()
        self.swap_cut_after_steps = None

    def corrupt_staged(self, offset: int, size: int | None = None) -> None:
        """Flip a byte of the staged image, keeping its CRC-32 (a fault: a flash cell or a
        probe, not the firmware). ``size``: the staged image's (default: the pending's)."""
        device = self._device
        if size is None:
            size = device._pending.image_size if device._pending else 0
        if size < 8:
            return
        data = crc_preserving_flip(device.flash.read(0, size), offset)
        device.flash.overwrite(0, data)

    # --- the bootloader ------------------------------------------------------------------

    def _signed_bootloader(self) -> tuple[float, bool]:
        """The bootloader's signed part; (time it took, whether the power failed in it)."""
        device = self._device
        st = self.signed
        seconds = 0.0
        record, device._pending = device._pending, None
        if st.swap is None and record is not None and record.head is not None:
            seconds, ok = self._verify_pending(record.head, record.image_size)
            if ok:
                manifest = Manifest.decode(record.head)
                st.swap = self._new_swap(
                    manifest.image_size,
                    (manifest.fw_major, manifest.fw_minor, manifest.fw_patch),
                    manifest,
                )
        elif st.swap is None and st.image_state == p.ImageState.TEST:
            if Bug.NO_REVERT in device.bugs:
                st.image_state = p.ImageState.CONFIRMED  # TEST taken for confirmed
                st.test_manifest = None
            elif st.previous is not None:
                log.info("boot: the image in TEST was not confirmed; reverting")
                size, version = st.previous
                st.swap = self._new_swap(size, version, None)
        elif st.swap is None and st.image_state == p.ImageState.REVERTED:
            st.image_state = p.ImageState.CONFIRMED  # reported until the next reset
        if st.swap is not None:
            swap_seconds, cut = self._run_swap(st.swap)
            seconds += swap_seconds
            if cut:
                return seconds, True
        return seconds, False

    def _verify_pending(self, head: bytes, size: int) -> tuple[float, bool]:
        """The bootloader's own check of PENDING: signature, SHA-256 of the staging bank,
        counter. Returns (its time, whether the image may run)."""
        device = self._device
        seconds = size * (device.timings.verify_s_per_byte + device.timings.hash_s_per_byte)
        if Bug.BOOTLOADER_TRUSTS_PENDING in device.bugs:
            return seconds, True  # PENDING is believed
        try:
            manifest = verify(head[:SIGNED_HEAD_SIZE], list(device.trusted_keys))
        except SignatureRefused as exc:
            log.warning("boot: PENDING refused (%s); the old image stays active", exc)
            return seconds, False
        digest = hashlib.sha256(device.flash.read(0, size)).digest()
        if (
            manifest.image_size != size or digest != manifest.image_sha256
        ) and Bug.HASH_NOT_COMPARED not in device.bugs:
            log.warning("boot: the staging bank fails its SHA-256; the old image stays active")
            return seconds, False
        if (
            manifest.security_counter < self.signed.security_counter
            and Bug.COUNTER_NOT_ENFORCED not in device.bugs
        ):
            log.warning("boot: PENDING's counter is below the device's; old image stays")
            return seconds, False
        return seconds, True

    def _new_swap(
        self, size: int, version: tuple[int, int, int], manifest: Manifest | None
    ) -> SwapRecord:
        device = self._device
        pages = min(swap_pages(size, len(device.active.data)), device.flash.size // PAGE_SIZE)
        return SwapRecord(
            pages=pages,
            incoming_size=size,
            incoming_version=version,
            incoming_manifest=manifest,
            outgoing_size=len(device.active.data),
            outgoing_version=device.active.version,
            active_bank=active_bank_of(device.active.data, pages),
        )

    def _run_swap(self, record: SwapRecord) -> tuple[float, bool]:
        device = self._device
        if record.steps_done:
            self.swap_resumes += 1
            log.warning("boot: resuming the swap at page %d step %d", record.page, record.step)
        budget, self.swap_cut_after_steps = self.swap_cut_after_steps, None
        ran = run_swap(record, device.flash, self.swap_wear, budget)
        seconds = ran * step_s(device.timings)
        if not record.finished:
            log.warning("boot: the power failed during the swap (after %d steps)", ran)
            return seconds, True
        st = self.signed
        st.swap = None
        device.active = StoredImage(
            bytes(record.active_bank[: record.incoming_size]), record.incoming_version
        )
        st.previous = (record.outgoing_size, record.outgoing_version)
        if record.reverting:
            st.image_state = p.ImageState.REVERTED
            st.test_manifest = None
        else:
            st.image_state = p.ImageState.TEST
            st.test_manifest = record.incoming_manifest
        log.info(
            "boot: swapped %d pages; running %s in %s",
            record.pages,
            ".".join(map(str, record.incoming_version)),
            st.image_state.name,
        )
        return seconds, False


class SignedOwner(Protocol):
    """What the signed updates need of their firmware: its state, its bugs,
    flash and staging capacity, its provisioning and bootloader (the settings page, the
    staged flips), the RAM copies of the image state and counter it reports, and its way
    out (replies, errors, the observer, the session's end)."""

    state: p.OtaState
    bugs: frozenset[Bug]
    flash: Flash
    staging_capacity: int
    trusted_keys: tuple[TrustedKey, ...]
    bootloader: SignedBootloader
    image_state: p.ImageState
    security_counter: int
    _observe: Callable[[FirmwareEvent], None]

    if TYPE_CHECKING:  # read-only on the firmware (a declaration: nothing here runs)

        @property
        def signed_only(self) -> bool: ...

    def status(self) -> p.MsgOtaStatus: ...
    def info(self) -> p.MsgInfo: ...
    def _call_out(self, callback: Callable[..., None], *args: Any) -> None: ...
    def _end_session(self, state: p.OtaState) -> None: ...
    def _reply(self, msg: p.DeviceMessage) -> None: ...
    def _error(self, code: p.ErrorCode, command: int | None = None, **details: Any) -> None: ...


class SignedUpdates:
    """A signed-only ball's application side of signed updates: CMD_OTA_MANIFEST, START's
    need of the accepted manifest, the staged flash's digest at FINISH, CMD_OTA_CONFIRM.
    It holds the accepted manifest (RAM: a reset or an ABORT discards it)."""

    def __init__(self, owner: SignedOwner) -> None:
        self._fw = owner
        self.accepted: AcceptedManifest | None = None

    def forget_manifest(self) -> None:
        """A reset or an ABORT: the accepted manifest, RAM, is gone."""
        self.accepted = None

    # --- CMD_OTA_MANIFEST ----------------------------------------------------------------

    def on_manifest(self, msg: p.CmdOtaManifest) -> None:
        fw = self._fw
        if fw.state not in (p.OtaState.IDLE, p.OtaState.ERROR):
            fw._error(p.ErrorCode.BAD_STATE)
            return
        if fw.image_state == p.ImageState.TEST:
            fw._error(p.ErrorCode.BAD_STATE)  # confirm or reset (revert) first
            return
        self.accepted = None  # a refused manifest leaves none accepted
        head = msg.manifest + msg.signature
        try:
            manifest = Manifest.decode(head)
        except ManifestError as exc:
            fw._error(p.ErrorCode.BAD_MANIFEST, what=str(exc))
            return
        if manifest.image_size == 0:
            fw._error(p.ErrorCode.BAD_PARAM, what="manifest image_size 0")
            return
        if manifest.image_size > fw.staging_capacity:
            fw._error(p.ErrorCode.TOO_LARGE)
            return
        refusal = self._signature_refusal(head, manifest)
        if refusal is not None:
            fw._error(p.ErrorCode[refusal.reason], what=str(refusal))
            return
        if (
            manifest.security_counter < fw.security_counter
            and Bug.COUNTER_NOT_ENFORCED not in fw.bugs
        ):
            fw._error(
                p.ErrorCode.DOWNGRADE,
                what=f"counter {manifest.security_counter} < {fw.security_counter}",
            )
            return
        self.accepted = AcceptedManifest(manifest, head)
        log.info("manifest accepted: %s, counter %d", manifest.version, manifest.security_counter)
        fw._reply(fw.status())

    def _signature_refusal(self, head: bytes, manifest: Manifest) -> SignatureRefused | None:
        """Why the platform's crypto refuses ``head`` (key, then signature), or None."""
        fw = self._fw
        if not any(k.key_id == manifest.key_id for k in fw.trusted_keys):
            return SignatureRefused("UNTRUSTED_KEY", f"key {manifest.key_id:#010x} not trusted")
        if Bug.NO_SIGNATURE_CHECK in fw.bugs:
            return None  # the key id is looked up, the signature never checked
        try:
            verify(head, list(fw.trusted_keys))
        except SignatureRefused as exc:
            return exc
        return None

    # --- START's manifest check ----------------------------------------------------------

    def start_refused_unsigned(self, msg: p.CmdOtaStart) -> bool:
        """For a START that opens a new session on a signed-only ball: refuse it (and say
        so) unless it is the accepted manifest's image; nothing is erased before. On
        success the manifest moves to the session (:meth:`give_manifest_to`)."""
        fw = self._fw
        accepted = self.accepted
        refusal = None
        if fw.image_state == p.ImageState.TEST:
            refusal = p.ErrorCode.BAD_STATE  # the staging bank holds the revert's image
        elif accepted is None or (
            accepted.manifest.image_size,
            accepted.manifest.image_crc32,
        ) != (msg.image_size, msg.image_crc32):
            refusal = p.ErrorCode.UNSIGNED
        if refusal is None:
            return False
        if Bug.ERASE_BEFORE_MANIFEST_CHECK in fw.bugs:
            pages = min(-(-msg.image_size // PAGE_SIZE), fw.flash.size // PAGE_SIZE)
            for page in range(pages):
                fw.flash.erase_page(page)  # the staging bank (the revert's image) is gone
        fw._error(refusal)
        return True

    def give_manifest_to(self, s: OtaSession) -> None:
        fw = self._fw
        if fw.signed_only and self.accepted is not None:
            s.manifest, s.head = self.accepted.manifest, self.accepted.head
            self.accepted = None

    # --- FINISH: the digest of the staged flash ------------------------------------------

    def staged_complete(self, s: OtaSession) -> None:
        """Every byte is in flash: a ``flip-staged`` fault acts now, before the verify."""
        fw = self._fw
        fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.STAGED, total=s.image_size))
        fw.bootloader.flip_queued(s.image_size)

    def digest_refused(self, s: OtaSession) -> bool:
        """After the CRC check: the SHA-256 of the staged flash against the manifest's."""
        fw = self._fw
        if s.manifest is None:
            return False
        if Bug.HASH_OF_STREAM in fw.bugs:
            digest = s.stream_hash.digest()  # the bytes as they arrived, not the flash
        else:
            digest = hashlib.sha256(fw.flash.read(0, s.image_size)).digest()
        if digest == s.manifest.image_sha256 or Bug.HASH_NOT_COMPARED in fw.bugs:
            return False
        fw._end_session(p.OtaState.ERROR)
        fw._error(p.ErrorCode.DIGEST_MISMATCH, command=p.MsgType.CMD_OTA_FINISH)
        fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.VERIFY_FAILED))
        return True

    # --- CMD_OTA_CONFIRM -----------------------------------------------------------------

    def on_confirm(self, msg: p.CmdOtaConfirm) -> None:
        fw = self._fw
        if fw.image_state == p.ImageState.TEST:
            manifest = fw.bootloader.signed.test_manifest
            counter = max(fw.security_counter, manifest.security_counter if manifest else 0)
            fw.image_state = p.ImageState.CONFIRMED
            fw.security_counter = counter
            if Bug.CONFIRM_NOT_PERSISTED not in fw.bugs:
                fw.bootloader.signed.image_state = p.ImageState.CONFIRMED
                fw.bootloader.signed.test_manifest = None
            if Bug.COUNTER_NOT_PERSISTED not in fw.bugs:
                fw.bootloader.signed.security_counter = counter  # else raised in RAM only
            log.info("confirmed; security counter %d", counter)
            fw._call_out(fw._observe, FirmwareEvent(FirmwareEventKind.CONFIRMED))
        fw._reply(fw.info())

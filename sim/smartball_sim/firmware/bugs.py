"""The firmware bugs the simulated SmartBall can be told to have: one switch each.

The catalogue (names, what a real firmware would do wrong, the rule it breaks) is contract
data, ``sim/smartball_sim/firmware/bugs.json``, so that ``--help`` can list it
without loading the simulator. This enum is how the firmware model consults it: each bug
is a small, named deviation in :mod:`smartball_sim.firmware.model` (search for its member), and
the model without bugs is the reference. The HIL suite, run against each bug, must fail
(``tests/gate/kill_table.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from pytest_smartball import contract


class FirmwareBug(enum.StrEnum):
    NO_ERASE_PROGRESS = "no-erase-progress"
    READY_BEFORE_ERASE_DONE = "ready-before-erase-done"
    ERASE_BLOCKS_COMMANDS = "erase-blocks-commands"
    LAST_PAGE_NOT_ERASED = "last-page-not-erased"
    SESSION_LOST_ON_DROP = "session-lost-on-drop"
    OFFSET_AHEAD_AFTER_DROP = "offset-ahead-after-drop"
    RESUME_RESTARTS_ERASE = "resume-restarts-erase"
    START_IGNORES_SESSION = "start-ignores-session"
    ABORT_KEEPS_SESSION = "abort-keeps-session"
    ACK_BEFORE_WRITTEN = "ack-before-written"
    FINAL_ACK_LOST_TO_FINISH = "final-ack-lost-to-finish"
    STATUS_REPORTS_WRITTEN_OFFSET = "status-reports-written-offset"
    WINDOW_EXCEEDS_BUFFER = "window-exceeds-buffer"
    DATA_PAST_END_ACCEPTED = "data-past-end-accepted"
    NO_CRC_CHECK = "no-crc-check"
    DONE_WRONG_CRC = "done-wrong-crc"
    INFO_STALE_AFTER_SWITCH = "info-stale-after-switch"
    UNKNOWN_COMMAND_IGNORED = "unknown-command-ignored"
    PARTIAL_FRAME_KEPT = "partial-frame-kept"
    LATE_RESET = "late-reset"
    SESSION_SURVIVES_RESET = "session-survives-reset"
    ACK_EVERY_WINDOW = "ack-every-window"
    SPLIT_FRAME_LOST = "split-frame-lost"
    MERGED_FRAMES_LOST = "merged-frames-lost"
    IDLE_FROM_FRAME_START = "idle-from-frame-start"
    SLOW_VERIFY = "slow-verify"
    BOOT_ERASES_STAGING = "boot-erases-staging"
    PENDING_PERSISTED_AT_RESET = "pending-persisted-at-reset"
    ABORT_IN_COMPLETE_CANCELS_SWITCH = "abort-in-complete-cancels-switch"
    FLASH_ERROR_STICKY = "flash-error-sticky"
    LONG_FRAME_DROPPED = "long-frame-dropped"
    PROGRESS_IN_IMAGE_BYTES = "progress-in-image-bytes"
    # Signed updates (docs/protocol.md section 16)
    NO_SIGNATURE_CHECK = "no-signature-check"
    HASH_OF_STREAM = "hash-of-stream"
    HASH_NOT_COMPARED = "hash-not-compared"
    COUNTER_NOT_ENFORCED = "counter-not-enforced"
    COUNTER_NOT_PERSISTED = "counter-not-persisted"
    CONFIRM_NOT_PERSISTED = "confirm-not-persisted"
    NO_REVERT = "no-revert"
    BOOTLOADER_TRUSTS_PENDING = "bootloader-trusts-pending"
    ERASE_BEFORE_MANIFEST_CHECK = "erase-before-manifest-check"

    @property
    def what(self) -> str:
        """What a real firmware with this bug does wrong (from the catalogue)."""
        return next(e.what for e in contract.firmware_bugs() if e.name == self.value)


#: The receive buffer of a WINDOW_EXCEEDS_BUFFER firmware (its READY still says 16).
SMALL_RX_BUFFER_CHUNKS = 2
#: How long a LATE_RESET firmware waits after MSG_OTA_DONE before it resets.
LATE_RESET_S = 3.0
#: How fast a SLOW_VERIFY firmware reads the staging bank back (bytes per second): a
#: bitwise CRC-32 over byte reads; the 131 KB release image still verifies within its
#: limit, a full 480 KB staging area does not.
SLOW_VERIFY_BYTES_PER_S = 250_000
#: The frame buffer of a LONG_FRAME_DROPPED firmware: sized for MTU 247's 244-byte writes.
SMALL_FRAME_BUFFER = 256


class UnknownFirmwareBug(ValueError):
    """A bug name that is not in the catalogue; the message lists the ones that are."""


def parse_bugs(names: Iterable[str]) -> frozenset[FirmwareBug]:
    """Bug names (each may be comma-separated) as a set; one sentence for an unknown name."""
    bugs: set[FirmwareBug] = set()
    for item in names:
        for name in filter(None, (n.strip() for n in item.split(","))):
            try:
                bugs.add(FirmwareBug(name))
            except ValueError:
                known = ", ".join(b.value for b in FirmwareBug)
                raise UnknownFirmwareBug(
                    f"no firmware bug {name!r} in the catalogue (one of: {known})"
                ) from None
    return frozenset(bugs)

"""The OTA engine's states, the transitions between them, and what an update can end with.

The engine's decisions (:mod:`.decide`) change state only along :data:`TRANSITIONS`,
checked by :func:`check_transition`; this table shows them exactly (a test reads it back)::

    SCANNING         -> CONNECTING | RECOVERING | FAILED
    CONNECTING       -> QUERYING | RECOVERING
    QUERYING         -> ABORTING | SENDING_MANIFEST | STARTING | WAITING_READY | FINISHING
                      | REBOOTING | HEALTH_CHECKING | CONFIRMING | SUCCEEDED | REVERTED
                      | RECOVERING | FAILED | UNCONFIRMED
    ABORTING         -> SENDING_MANIFEST | STARTING | QUERYING | REBOOTING | RECOVERING
    SENDING_MANIFEST -> STARTING | QUERYING | RECOVERING | FAILED
    STARTING         -> WAITING_READY | RECOVERING
    WAITING_READY    -> STABILISING | TRANSFERRING | QUERYING | RECOVERING | FAILED
    STABILISING      -> TRANSFERRING | RECOVERING
    TRANSFERRING     -> FINISHING | QUERYING | RECOVERING | FAILED
    FINISHING        -> REBOOTING | QUERYING | RECOVERING | FAILED
    REBOOTING        -> SCANNING | UNCONFIRMED | FAILED
    HEALTH_CHECKING  -> SCANNING | FAILED
    CONFIRMING       -> SUCCEEDED | REVERTED | RECOVERING | UNCONFIRMED | FAILED
    RECOVERING       -> SCANNING | FAILED | UNCONFIRMED

The way through, without trouble::

    SCANNING -> CONNECTING -> QUERYING -> STARTING -> WAITING_READY -> (STABILISING) ->
    TRANSFERRING -> FINISHING -> REBOOTING -> SCANNING -> CONNECTING -> QUERYING -> SUCCEEDED

QUERYING asks INFO and STATUS after every connect and every re-sync, and the answer picks
the way on: this image's session receiving → STARTING again (a resume: READY at once),
erasing → WAITING_READY, verifying → FINISHING, complete → REBOOTING (wait for the reset
it promised); no session or another's → (ABORTING) → STARTING; another image's switch
committed (COMPLETE) → REBOOTING (wait for that reset first). Any link failure goes to
RECOVERING, which gives up when a budget is spent.

On a device with SIGNED_IMAGES (docs/protocol.md section 16) a new session is opened by
SENDING_MANIFEST (the image's signed manifest) before STARTING, and after the reset the new
image runs on trial: the optional health check (HEALTH_CHECKING, with the link released),
then CONFIRMING (CMD_OTA_CONFIRM) make it the device's for good; a device that runs its old
image again after the reset ends in REVERTED::

    ... QUERYING -> SENDING_MANIFEST -> STARTING -> ... -> REBOOTING -> SCANNING -> CONNECTING
    -> QUERYING -> (HEALTH_CHECKING -> SCANNING -> CONNECTING -> QUERYING) -> CONFIRMING
    -> SUCCEEDED

Four honest outcomes (:class:`Outcome`): SUCCEEDED (the device was seen running the new
image), FAILED (the device keeps its old image, or holds a session this update can resume),
UNCONFIRMED (the whole image was delivered and the switch asked for, maybe done, but
the device could not be seen running it), and REVERTED (the device took the new image and
reset, and runs its old one again).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Final


class State(enum.Enum):
    SCANNING = "scanning"
    CONNECTING = "connecting"
    QUERYING = "querying"
    ABORTING = "aborting"
    SENDING_MANIFEST = "sending-manifest"
    STARTING = "starting"
    WAITING_READY = "waiting-ready"
    STABILISING = "stabilising"
    TRANSFERRING = "transferring"
    FINISHING = "finishing"
    REBOOTING = "rebooting"
    HEALTH_CHECKING = "health-checking"
    CONFIRMING = "confirming"
    RECOVERING = "recovering"
    SUCCEEDED = "succeeded"
    UNCONFIRMED = "unconfirmed"
    REVERTED = "reverted"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.UNCONFIRMED, State.REVERTED, State.FAILED)


S = State
TRANSITIONS: Final[Mapping[State, frozenset[State]]] = {
    S.SCANNING: frozenset({S.CONNECTING, S.RECOVERING, S.FAILED}),
    S.CONNECTING: frozenset({S.QUERYING, S.RECOVERING}),
    S.QUERYING: frozenset(
        {
            S.ABORTING,
            S.SENDING_MANIFEST,
            S.STARTING,
            S.WAITING_READY,
            S.FINISHING,
            S.REBOOTING,
            S.HEALTH_CHECKING,
            S.CONFIRMING,
            S.SUCCEEDED,
            S.REVERTED,
            S.RECOVERING,
            S.FAILED,
            S.UNCONFIRMED,
        }
    ),
    S.ABORTING: frozenset({S.SENDING_MANIFEST, S.STARTING, S.QUERYING, S.REBOOTING, S.RECOVERING}),
    S.SENDING_MANIFEST: frozenset({S.STARTING, S.QUERYING, S.RECOVERING, S.FAILED}),
    S.STARTING: frozenset({S.WAITING_READY, S.RECOVERING}),
    S.WAITING_READY: frozenset({S.STABILISING, S.TRANSFERRING, S.QUERYING, S.RECOVERING, S.FAILED}),
    S.STABILISING: frozenset({S.TRANSFERRING, S.RECOVERING}),
    S.TRANSFERRING: frozenset({S.FINISHING, S.QUERYING, S.RECOVERING, S.FAILED}),
    S.FINISHING: frozenset({S.REBOOTING, S.QUERYING, S.RECOVERING, S.FAILED}),
    S.REBOOTING: frozenset({S.SCANNING, S.UNCONFIRMED, S.FAILED}),
    S.HEALTH_CHECKING: frozenset({S.SCANNING, S.FAILED}),
    S.CONFIRMING: frozenset({S.SUCCEEDED, S.REVERTED, S.RECOVERING, S.UNCONFIRMED, S.FAILED}),
    S.RECOVERING: frozenset({S.SCANNING, S.FAILED, S.UNCONFIRMED}),
    S.SUCCEEDED: frozenset(),
    S.UNCONFIRMED: frozenset(),
    S.REVERTED: frozenset(),
    S.FAILED: frozenset(),
}


class IllegalTransition(AssertionError):
    """A decision that :data:`TRANSITIONS` does not allow: a bug in this module."""


class IllegalObservation(AssertionError):
    """An observation the current state cannot have made: a bug in the engine."""


def check_transition(old: State, new: State) -> None:
    """The one place where a change of state is checked."""
    if new is not old and new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.name} -> {new.name} is not an allowed transition")


def diagram_transitions(text: str) -> dict[State, frozenset[State]]:
    """The transitions a ``STATE -> NEXT | NEXT`` table in ``text`` shows (a line that
    starts with ``|`` goes on the one before); for the test that keeps the table above
    true."""
    found: dict[State, set[State]] = {}
    current: set[State] | None = None
    for line in text.splitlines():
        m = re.fullmatch(r"\s*([A-Z_]+)\s+->\s+([A-Z_| ]+)", line)
        if m:
            current = found.setdefault(State[m.group(1)], set())
            names = m.group(2)
        elif current is not None and re.fullmatch(r"\s+\|[A-Z_| ]+", line):
            names = line
        else:
            current = None
            continue
        current.update(State[n.strip()] for n in names.split("|") if n.strip())
    return {state: frozenset(nexts) for state, nexts in found.items()}


class Outcome(enum.Enum):
    """What an update ended with, as far as it can honestly say."""

    #: The device was seen running the new image (INFO after the reset).
    SUCCEEDED = "succeeded"
    #: The whole image was delivered and the switch asked for (the device may have verified
    #: it and reset into it), but the device was not seen running it.
    UNCONFIRMED = "unconfirmed"
    #: The device took the new image (verified it, reset into it) and runs its old image
    #: again: its bootloader refused the new one at boot, or the new one ran on trial and
    #: the device reset before it was confirmed (signed-only devices, section 16).
    REVERTED = "reverted"
    #: The update did not get the device to the new image for good: it runs its old image
    #: (or, after a failed health check, the new one on trial until its next reset).
    FAILED = "failed"


class FailureKind(enum.Enum):
    BAD_INPUT = "bad-input"  # the image (or a parameter) cannot be used
    NOT_FOUND = "not-found"  # the device never showed up
    LINK = "link"  # the update could not finish: a budget of attempts was spent
    REFUSED = "refused"  # the device rejected the image (too large, CRC mismatch, ...)
    NO_RESET = "no-reset"  # the device had to reset (another image's switch) and did not
    # Signed-only devices (section 16), each found before anything is erased:
    UNSIGNED = "unsigned"  # an unsigned image for a device that runs only signed ones
    UNTRUSTED_KEY = "untrusted-key"  # signed with a key the device does not trust
    DOWNGRADE = "downgrade"  # a security counter below the device's
    TRIAL_PENDING = "trial-pending"  # the device runs another image on trial: decide first
    UNHEALTHY = "unhealthy"  # the health check failed: the new image was not confirmed


class EventKind(enum.StrEnum):
    """What an update's event log says happened (``OtaEvent.kind``)."""

    START = "start"
    END = "end"
    STATE = "state"
    WARNING = "warning"
    CACHE_CLEARED = "cache-cleared"
    # the link's own (pytest_smartball.link.LinkEvent has the same values)
    CONNECTED = "connected"
    LINK_LOST = "link-lost"
    SERVICES_MISSING = "services-missing"
    CONNECT_ATTEMPT_FAILED = "connect-attempt-failed"
    # the engine's
    LINK_FAILURE = "link-failure"
    STATUS = "status"
    RESUME = "resume"
    RESTART = "restart"
    ABORTED = "aborted"
    READY = "ready"
    ACK_TIMEOUT = "ack-timeout"
    REWIND = "rewind"
    DESYNC = "desync"
    DEVICE_ERROR = "device-error"
    IGNORED = "ignored"
    DONE = "done"
    DEVICE_RESET = "device-reset"
    NO_RESET = "no-reset"
    RECOVER = "recover"
    VERIFIED = "verified"
    MANIFEST = "manifest"
    HEALTH_CHECK = "health-check"
    CONFIRMED = "confirmed"
    REVERTED = "reverted"

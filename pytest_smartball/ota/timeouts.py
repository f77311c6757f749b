"""The client's timeouts, derived from the device's timing obligations (P17).

A device promises to answer within a bound (``pytest_smartball/contract/timing.json``,
rendered in docs/protocol.md); the client waits that bound plus a margin, so a device
that keeps its promise is never given up on, and one that breaks it is noticed after a
time the client can state:

    timeout = obligation + 4 s

The margin is the longest a BLE link may hold a packet back before the stack declares the
link lost: the supervision timeout, 4 s in what a SmartBall asks for (the nRF5 SDK's
default). A silence longer than obligation + margin is therefore not the radio's delay:
either the link is gone (and the stack says so by then) or the device broke its promise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import contract
from .record import Commit, Record

#: Seconds added to each obligation: the link's supervision timeout (see the module's text).
LINK_MARGIN_S = 4.0
#: The largest image the verify timeout has to cover by default: all of the nRF52840's
#: flash (a staging bank holds less).
LARGEST_IMAGE = 1_048_576


def with_margin(obligation_s: float) -> float:
    """The client's wait for something the device promises within ``obligation_s``
    (rounded up to a tenth of a second, so sentences show it plainly)."""
    return math.ceil((obligation_s + LINK_MARGIN_S) * 10 - 1e-9) / 10


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The defaults ``OtaSettings`` takes, from the device's obligations."""

    erase_silence_s: float
    ack_s: float
    reply_s: float
    verify_s: float
    reset_s: float
    reappear_s: float
    #: After a refusal (a device whose buffer is smaller than its window may refuse the
    #: rest of a burst without a word: its STATUS replies are rate-limited, P12): ask
    #: STATUS if no ACK came within the ACK latency obligation itself, not with the margin.
    refusal_probe_s: float

    @classmethod
    def from_contract(cls, timing: contract.Timing | None = None) -> Timeouts:
        t = timing or contract.timing()
        return cls(
            # START → first PROGRESS and between PROGRESS; last PROGRESS → READY
            erase_silence_s=with_margin(max(t.progress_gap_max_s, t.ready_after_erase_max_s)),
            # the chunk that completes an ACK interval (or a STATUS request) → its ACK
            ack_s=with_margin(t.ack_latency_max_s),
            # INFO, STATUS, ABORT → the reply
            reply_s=with_margin(t.reply_max_s),
            # FINISH → DONE, for the largest image
            verify_s=with_margin(t.verify_max_s(LARGEST_IMAGE)),
            # DONE → the device ends the link to reset
            reset_s=with_margin(t.done_to_disconnect_max_s),
            # a reset (after an activation: the bootloader's copy) → advertising again
            reappear_s=with_margin(t.reset_to_advertising_max_s(activation=True)),
            refusal_probe_s=t.ack_latency_max_s,
        )


DEFAULT = Timeouts.from_contract()

#: The flash page a swap moves at a time (docs/protocol.md section 16.4): the flash's page.
SWAP_PAGE = contract.flash_layout().page_size


def swap_reappear_s(new_size: int, old_size: int, timing: contract.Timing | None = None) -> float:
    """How long a signed-only device may take to advertise again after a reset that swaps
    its banks (an activation, or the revert of an unconfirmed image): its obligation for
    the pages of the larger of the two images, with the margin."""
    t = timing or contract.timing()
    pages = -(-max(new_size, old_size) // SWAP_PAGE)
    return with_margin(t.reset_to_advertising_after_swap_max_s(pages))


def reappear_s(base_s: float, r: Record) -> float:
    """The wait for a device that vanished (``base_s``: ``OtaSettings.reappear_timeout_s``);
    on a signed-only device after the switch, at least its obligation for swapping the banks
    (which grows with the images' size)."""
    if r.signed_only and r.commit is not Commit.NONE:
        old = r.first_info.active_image_size if r.first_info else 0
        return max(base_s, swap_reappear_s(r.image.size, old))
    return base_s


class SilenceWatch:
    """A wait for signs of progress, such as the erase's MSG_OTA_PROGRESS before READY: the
    silence allowed restarts only when the work gets further than ever, so a device that
    repeats itself (or sends what nobody waits for) is still silent about the work."""

    def __init__(self, timeout_s: float, now: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = now + timeout_s
        self._furthest = -1

    def progress(self, done: int, now: float) -> None:
        if done > self._furthest:
            self._furthest, self.deadline = done, now + self.timeout_s

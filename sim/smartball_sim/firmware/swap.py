"""The bootloader's swap of the active and staging banks (docs/protocol.md section 16), the
layout that makes a revert possible: the previous image is never erased until the new one
is confirmed, it is only moved into the staging bank.

One 4 KB **scratch page** outside both banks, and a swap **trailer** (a few words in the
bootloader's settings page) that records how far the swap got. Page ``i`` of the swap
moves in three steps, each one page erase and one page write, and the trailer is updated
after each:

1. erase scratch, write staging[i] into it;
2. erase staging[i], write active[i] into it;
3. erase active[i], write scratch into it.

Each step's source is intact while it runs (staging[i] in step 1, active[i] in step 2,
the scratch page in step 3), so a power cut anywhere repeats the interrupted step at the
next boot and finishes the swap: the ball always has a bootable image. The cost per page
is three erases and three page writes (about 3 x 85 ms + 3 x 42 ms = 0.38 s on the
nRF52840), and the scratch page is erased once per page swapped: that page wears first
(10,000 cycles: about 80 swaps of a full 480 KB bank, each update and each revert one).

The banks here are bytes in the model; the staging bank is the firmware's
:class:`~smartball_sim.firmware.flash.Flash` (its erases count), the active bank and the scratch
page count their erases in :class:`SwapWear`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from pytest_smartball.contract.manifest import Manifest

from .flash import PAGE_SIZE, Flash
from .types import FlashTimings

log = logging.getLogger("sim.firmware")

#: Steps per swapped page (see the module's docstring).
STEPS_PER_PAGE = 3


@dataclass(slots=True)
class SwapWear:
    """Page erases the swaps cost outside the staging bank (the staging bank's own are
    counted by its Flash)."""

    active_bank_erases: int = 0
    scratch_erases: int = 0


@dataclass(slots=True)
class SwapRecord:
    """The swap trailer (persisted): which images move, and how far the swap got."""

    pages: int
    #: The image moving into the active bank (its size and version), and its manifest
    #: (None when it is the previous image moving back: a revert).
    incoming_size: int
    incoming_version: tuple[int, int, int]
    incoming_manifest: Manifest | None
    #: The image moving out to the staging bank.
    outgoing_size: int
    outgoing_version: tuple[int, int, int]
    #: The active bank's contents (whole pages) while the swap runs.
    active_bank: bytearray
    page: int = 0
    step: int = 0
    scratch: bytes = field(default=b"", repr=False)

    @property
    def reverting(self) -> bool:
        return self.incoming_manifest is None

    @property
    def steps_done(self) -> int:
        return self.page * STEPS_PER_PAGE + self.step

    @property
    def finished(self) -> bool:
        return self.page >= self.pages


def swap_pages(incoming_size: int, outgoing_size: int) -> int:
    return math.ceil(max(incoming_size, outgoing_size) / PAGE_SIZE)


def step_s(timings: FlashTimings) -> float:
    """One swap step: a page erase and a page write."""
    return timings.erase_page_s + timings.write_time(PAGE_SIZE)


def run_swap(record: SwapRecord, staging: Flash, wear: SwapWear, budget: int | None = None) -> int:
    """Run the swap's steps from where its trailer says, at most ``budget`` of them (None:
    to the end; a budget is where the power fails). Returns the number of steps run."""
    ran = 0
    while not record.finished and (budget is None or ran < budget):
        start = record.page * PAGE_SIZE
        if record.step == 0:
            wear.scratch_erases += 1
            record.scratch = staging.read(start, PAGE_SIZE)
        elif record.step == 1:
            _rewrite(staging, record.page, bytes(record.active_bank[start : start + PAGE_SIZE]))
        else:
            wear.active_bank_erases += 1
            record.active_bank[start : start + PAGE_SIZE] = record.scratch
        ran += 1
        record.step += 1
        if record.step == STEPS_PER_PAGE:
            record.page, record.step = record.page + 1, 0
    return ran


def _rewrite(staging: Flash, page: int, data: bytes) -> None:
    # The bootloader's own flash work is not subject to the fault plan's flash failures
    # (fail_next is the application's): it is modelled as succeeding.
    failing, staging.fail_next = staging.fail_next, 0
    staging.erase_page(page)
    staging.write_words(page * PAGE_SIZE, data)
    staging.fail_next = failing


def active_bank_of(image: bytes, pages: int) -> bytearray:
    """The active bank's first ``pages`` pages holding ``image`` (the rest erased)."""
    size = pages * PAGE_SIZE
    return bytearray(image[:size] + b"\xff" * (size - min(len(image), size)))

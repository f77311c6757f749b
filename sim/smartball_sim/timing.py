"""The lower bound of an update's duration, from the radio and flash models.

Normal mode (the whole staging area erased before READY)::

    erase + max(radio, flash) + verify + reboot + link setup

Progressive erase (P18: each page erased just before its first write, READY at once)::

    max(radio, erase + flash) + verify + reboot + link setup

In the progressive mode the erase shares the transfer with the radio: the flash erases and
writes while the radio keeps sending (the receive buffer holds what arrives meanwhile), so
only whichever of the two is slower counts. Its erase is the pages' CPU stall alone: the
field's slow erase (``FlashTimings.erase_total_s``) is idle time between pages that a
firmware erasing on demand does not have.

*Link setup* is the two connections every confirmed update needs: one to deliver the image,
one after the reset to confirm that the new image runs (E1). ``docs/performance.md`` states
the arithmetic. The bound still leaves out what depends on where the advertising interval
happens to be (the scans) and the request round trips, so the benchmark reports the
efficiency of the whole update against it, with and without the link setup, and of the
transfer phase separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pytest_smartball.contract import codec as p

from .firmware.model import PAGE_SIZE, FlashTimings
from .radio.profiles import RadioProfile


@dataclass(frozen=True, slots=True)
class LowerBound:
    erase_s: float
    radio_s: float
    flash_s: float
    verify_s: float
    reboot_s: float
    chunk: int
    chunks: int
    #: Progressive erase (P18): the erase overlaps the radio instead of preceding it.
    progressive: bool = False
    #: The two connections of a confirmed update (deliver, confirm).
    link_setup_s: float = 0.0

    @property
    def transfer_s(self) -> float:
        """From READY to the last byte in flash: the radio or the flash, whichever is
        slower; in the progressive mode the flash also erases."""
        if self.progressive:
            return max(self.radio_s, self.erase_s + self.flash_s)
        return max(self.radio_s, self.flash_s)

    @property
    def without_link_setup_s(self) -> float:
        """The bound as it was before the link setup counted (the radio and flash alone)."""
        before = 0.0 if self.progressive else self.erase_s
        return before + self.transfer_s + self.verify_s + self.reboot_s

    @property
    def total_s(self) -> float:
        return self.without_link_setup_s + self.link_setup_s


def data_chunk(radio: RadioProfile) -> int:
    """Image bytes per write: one CMD_OTA_DATA frame per write of MTU-3 bytes."""
    return p.max_data_chunk(radio.max_att_value)


def lower_bound(
    image_size: int,
    radio: RadioProfile,
    flash: FlashTimings,
    boot_s: float,
    *,
    progressive: bool = False,
    connect_s: float = 0.0,
) -> LowerBound:
    """The bound of one update of ``image_size`` bytes; ``connect_s`` is what one connection
    costs on this link (connect request to services resolved)."""
    chunk = data_chunk(radio)
    chunks = math.ceil(image_size / chunk)
    # Radio: every chunk is one write of (chunk + 10) bytes; an event carries as many LL
    # packets as fit (exchanges_per_event), a write needing ll_packets() of them.
    packets = chunks * radio.ll_packets(chunk + p.FRAME_OVERHEAD + p.DATA_HEADER_SIZE)
    radio_s = math.ceil(packets / radio.exchanges_per_event()) * radio.connection_interval_s
    flash_s = flash.write_time(image_size)
    pages = math.ceil(image_size / PAGE_SIZE)
    # erasing on demand stalls the CPU per page and has no idle time between pages
    per_page = flash.page_stall_s(pages) if progressive else flash.page_erase_time(pages)
    verify_s = image_size * flash.verify_s_per_byte
    return LowerBound(
        erase_s=pages * per_page,
        radio_s=radio_s,
        flash_s=flash_s,
        verify_s=verify_s,
        # DONE goes on air within a connection event, the link ends at the next one; the
        # bootloader then checks and copies the image before the application boots
        reboot_s=2 * radio.connection_interval_s + flash.activation_s(image_size) + boot_s,
        chunk=chunk,
        chunks=chunks,
        progressive=progressive,
        link_setup_s=2 * connect_s,
    )

"""The lower bound of an update's duration, from the radio and flash models.

    erase + max(radio, flash) for the transfer + verify + reboot (with the bootloader's copy)

``docs/performance.md`` states the arithmetic. The bound ignores what a careful client
adds on purpose (scan, connect, the settle and stabilisation pauses, the check after the
reset), so the benchmark reports the efficiency of the whole update and of the transfer
phase separately.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pytest_smartball import protocol as p

from .firmware import PAGE_SIZE, FlashTimings
from .radio import RadioProfile


@dataclass(frozen=True, slots=True)
class LowerBound:
    erase_s: float
    radio_s: float
    flash_s: float
    verify_s: float
    reboot_s: float
    chunk: int
    chunks: int

    @property
    def transfer_s(self) -> float:
        return max(self.radio_s, self.flash_s)

    @property
    def total_s(self) -> float:
        return self.erase_s + self.transfer_s + self.verify_s + self.reboot_s

    def as_dict(self) -> dict[str, float]:
        out = asdict(self)
        out["transfer_s"] = self.transfer_s
        out["total_s"] = self.total_s
        return out


def data_chunk(radio: RadioProfile) -> int:
    """Image bytes per write: one CMD_OTA_DATA frame per write of MTU-3 bytes."""
    return p.max_data_chunk(radio.max_att_value)


def lower_bound(
    image_size: int, radio: RadioProfile, flash: FlashTimings, boot_s: float
) -> LowerBound:
    chunk = data_chunk(radio)
    chunks = math.ceil(image_size / chunk)
    # Radio: every chunk is one write of (chunk + 10) bytes; an event carries as many LL
    # packets as fit (exchanges_per_event), a write needing ll_packets() of them.
    packets = chunks * radio.ll_packets(chunk + p.FRAME_OVERHEAD + p.DATA_HEADER_SIZE)
    radio_s = math.ceil(packets / radio.exchanges_per_event()) * radio.connection_interval_s
    flash_s = math.ceil(image_size / 4) * flash.write_word_s
    pages = math.ceil(image_size / PAGE_SIZE)
    erase_s = pages * flash.page_erase_time(pages)
    verify_s = image_size * flash.verify_s_per_byte
    return LowerBound(
        erase_s=erase_s,
        radio_s=radio_s,
        flash_s=flash_s,
        verify_s=verify_s,
        # DONE goes on air within a connection event, the link ends at the next one; the
        # bootloader then checks and copies the image before the application boots
        reboot_s=2 * radio.connection_interval_s + flash.activation_s(image_size) + boot_s,
        chunk=chunk,
        chunks=chunks,
    )

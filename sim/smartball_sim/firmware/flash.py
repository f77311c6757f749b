"""The nRF52840's flash, as far as the OTA contract depends on it.

* It is erased a 4 KB page at a time (to 0xFF) and written a 32-bit word at a time,
  word-aligned. A write can only clear bits (NOR flash: the result is the old word AND the
  new one), and a word may be written at most ``MAX_WRITES_PER_WORD`` times between erases
  (nRF52840 Product Specification v1.7, NVMC: n_WRITE = 2). The contract writes each word
  once; the second write is what a retry after a failed read-back may use.
* A page erase (t_ERASEPAGE, 85 ms) and a word write (t_WRITE, 41 us) stall the CPU that
  runs from the same flash: the firmware model (``model.py``) holds what arrives
  meanwhile. The times live in ``FlashTimings`` there; this module holds the contents.
* An operation can be made to fail (``fail_next``), as a worn page or a brown-out would:
  a failed erase leaves the page as it was, a failed write leaves the words unwritten.
  The firmware finds out by reading back, as the real one must (the NVMC reports nothing).

Misuse (a write that is not word-aligned, a third write of a word) raises
:class:`FlashMisuse`: that is a bug in the firmware model, never a device behaviour. A
firmware told to have a bug from the catalogue (``smartball_sim.firmware.bugs``) may write a
word a third time, as a real one with that bug would: with ``strict=False`` the write
then clears bits like any other (the NVMC does not refuse it; the datasheet no longer
promises the bits) instead of raising.
"""

from __future__ import annotations

from pytest_smartball.contract.codec import WORD_SIZE

PAGE_SIZE = 4096
MAX_WRITES_PER_WORD = 2


class FlashMisuse(AssertionError):
    """The firmware used the flash in a way the NVMC forbids."""


class Flash:
    """A region of NOR flash (the staging bank), ``size`` bytes, whole pages."""

    def __init__(self, size: int, *, strict: bool = True) -> None:
        if size % PAGE_SIZE:
            size += PAGE_SIZE - size % PAGE_SIZE
        self.size = size
        self._data = bytearray(b"\xff" * size)
        self._writes = bytearray(size // WORD_SIZE)  # per word, since its page's erase
        #: Operations (page erases or writes) still to fail, next first.
        self.fail_next = 0
        self.erases = 0
        self.strict = strict

    def read(self, offset: int, size: int) -> bytes:
        self._check_range(offset, size)
        return bytes(self._data[offset : offset + size])

    def erase_page(self, page: int) -> bool:
        """Erase one page; False if the operation failed (the page is left as it was)."""
        start = page * PAGE_SIZE
        self._check_range(start, PAGE_SIZE)
        if self._failing():
            return False
        self._data[start : start + PAGE_SIZE] = b"\xff" * PAGE_SIZE
        words = slice(start // WORD_SIZE, (start + PAGE_SIZE) // WORD_SIZE)
        self._writes[words] = bytes(PAGE_SIZE // WORD_SIZE)
        self.erases += 1
        return True

    def is_erased(self, page: int) -> bool:
        start = page * PAGE_SIZE
        return self._data[start : start + PAGE_SIZE] == b"\xff" * PAGE_SIZE

    def write_words(self, offset: int, data: bytes) -> bool:
        """Write whole words at a word-aligned offset; False if the operation failed
        (nothing was written). Each word written counts towards its n_WRITE limit."""
        if offset % WORD_SIZE or len(data) % WORD_SIZE:
            raise FlashMisuse(f"write of {len(data)} bytes at {offset}: not whole words")
        self._check_range(offset, len(data))
        first = offset // WORD_SIZE
        if self.strict:
            for word in range(first, first + len(data) // WORD_SIZE):
                if self._writes[word] >= MAX_WRITES_PER_WORD:
                    raise FlashMisuse(
                        f"word at {word * WORD_SIZE} written more than {MAX_WRITES_PER_WORD} "
                        "times since its page was erased"
                    )
        if self._failing():
            return False
        for word in range(first, first + len(data) // WORD_SIZE):
            self._writes[word] = min(self._writes[word] + 1, 255)
        old = int.from_bytes(self._data[offset : offset + len(data)], "little")
        new = old & int.from_bytes(data, "little")  # NOR: a write only clears bits
        self._data[offset : offset + len(data)] = new.to_bytes(len(data), "little")
        return True

    def overwrite(self, offset: int, data: bytes) -> None:
        """Set bytes whatever the NVMC's rules: what a fault (a cell losing its charge, a
        probe on the bus) does, never the firmware."""
        self._check_range(offset, len(data))
        self._data[offset : offset + len(data)] = data

    def writes_of_word(self, offset: int) -> int:
        return self._writes[offset // WORD_SIZE]

    def _failing(self) -> bool:
        if self.fail_next:
            self.fail_next -= 1
            return True
        return False

    def _check_range(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise FlashMisuse(f"{size} bytes at {offset} are outside the {self.size}-byte flash")

    def clear_faults(self) -> None:
        """A fault plan's failures still to come go with the plan."""
        self.fail_next = 0


def pad_to_words(data: bytes) -> bytes:
    """The last partial word of an image is padded with 0xFF (erased flash)."""
    return data + b"\xff" * (-len(data) % WORD_SIZE)

"""Real firmware files for the image tests, built at test time by the real tools.

A tiny Cortex-M4 program (a full nRF52840 vector table, code, initialised data in flash,
zeroed data in RAM) is compiled and linked by Debian's ``arm-none-eabi-gcc`` at the
SmartBall's application address; ``arm-none-eabi-objcopy`` writes its ``.bin`` and
``.hex``; ``uf2conv`` (PyPI ``adafruit-uf2``, Microsoft's converter) its ``.uf2``;
``adafruit-nrfutil dfu genpkg`` its DFU ``.zip``. So the tests prove that what the real
tools write is accepted, not only what our own test helpers write.

Without the toolchain the tests that need it skip with a sentence saying what to install;
under ``CI=true`` they fail instead (CI installs it: ``.ci/run``), so no proof is skipped
silently in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_smartball import contract

GCC = "arm-none-eabi-gcc"
OBJCOPY = "arm-none-eabi-objcopy"
NRF52840_UF2_FAMILY = "0xADA52840"
#: SoftDevice S140 7.3.0's firmware ID, the SoftDevice a SmartBall's application needs.
S140_7_3_0 = "0x0123"

APP_C = r"""
typedef unsigned int uint32_t; /* no C library needed: builds without newlib */
extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
int main(void);
void Reset_Handler(void) {
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    main();
    for (;;) {}
}
void Default_Handler(void) { for (;;) {} }
/* The nRF52840's vector table: the initial stack, 15 Cortex-M4 exceptions, 48 interrupts. */
__attribute__((section(".isr_vector"), used))
void (*const vectors[16 + 48])(void) = {
    (void (*)(void))&_estack, Reset_Handler, [2 ... 63] = Default_Handler};
volatile uint32_t counter = 42;  /* initialised data: stored in flash after the code */
static volatile uint32_t scratch[8];
#ifdef WITH_UICR
/* What a merged build carries beyond the application: a UICR register's value. */
__attribute__((section(".uicr"), used)) const uint32_t uicr_nfcpins = 0xFFFFFFFE;
#endif
int main(void) {
    for (;;) { counter++; scratch[counter & 7] = counter; }
}
"""

LINKER_SCRIPT = """
MEMORY {{
  FLASH (rx) : ORIGIN = 0x{origin:X}, LENGTH = 0x{length:X}
  RAM (rwx) : ORIGIN = 0x20006000, LENGTH = 0x3A000
  UICR (r) : ORIGIN = 0x1000120C, LENGTH = 4
}}
ENTRY(Reset_Handler)
SECTIONS {{
  .text : {{ KEEP(*(.isr_vector)) *(.text*) *(.rodata*) }} > FLASH
  .data : {data_align}{{ _sdata = .; *(.data*) _edata = .; }} > RAM AT > FLASH
  _sidata = LOADADDR(.data);
  .bss (NOLOAD) : {{ _sbss = .; *(.bss*) *(COMMON) _ebss = .; }} > RAM
  .uicr : {{ KEEP(*(.uicr)) }} > UICR
  _estack = ORIGIN(RAM) + LENGTH(RAM);
}}
"""


@dataclass(frozen=True)
class Build:
    """One program's files, as the real tools wrote them."""

    elf: Path
    bin: Path
    hex: Path

    @property
    def image(self) -> bytes:
        """What objcopy -O binary made: the bytes the device must end up with."""
        return self.bin.read_bytes()


def require_toolchain() -> None:
    """Skip (outside CI) or fail (CI=true) when the ARM toolchain is missing."""
    if shutil.which(GCC) and shutil.which(OBJCOPY):
        return
    _missing(
        f"{GCC} is not installed: install Debian's gcc-arm-none-eabi "
        "(apt-get install gcc-arm-none-eabi) to build the real firmware files these tests read"
    )


def build(
    folder: Path,
    *,
    origin: int | None = None,
    uicr: bool = False,
    data_align: int | None = None,
    name: str = "app",
) -> Build:
    """Compile, link and convert the program, linked at ``origin`` (the application's
    address unless told otherwise); ``uicr`` adds a UICR value, as a merged build has;
    ``data_align`` aligns ``.data`` (in flash too), leaving a gap between it and the code."""
    require_toolchain()
    folder.mkdir(parents=True, exist_ok=True)
    layout = contract.flash_layout()
    origin = layout.application_start if origin is None else origin
    source = folder / f"{name}.c"
    script = folder / f"{name}.ld"
    source.write_text(APP_C)
    align = f"ALIGN({data_align}) " if data_align else ""
    script.write_text(
        LINKER_SCRIPT.format(origin=origin, length=layout.staging_capacity, data_align=align)
    )
    elf = folder / f"{name}.elf"
    flags = ["-DWITH_UICR"] if uicr else []
    _run(
        GCC, "-mcpu=cortex-m4", "-mthumb", "-Os", "-nostdlib", "-ffreestanding", *flags,
        "-T", str(script), "-Wl,--build-id=none", "-o", str(elf), str(source),
    )  # fmt: skip
    binary, hexfile = folder / f"{name}.bin", folder / f"{name}.hex"
    _run(OBJCOPY, "-O", "binary", "--remove-section=.uicr", str(elf), str(binary))
    _run(OBJCOPY, "-O", "ihex", str(elf), str(hexfile))
    return Build(elf, binary, hexfile)


def uf2(
    source: Path, out: Path, *, family: str = NRF52840_UF2_FAMILY, base: int | None = None
) -> Path:
    """``uf2conv -c``: a .bin at ``base`` (the application's address), or a .hex."""
    base = contract.flash_layout().application_start if base is None else base
    command = [_script("uf2conv"), "-c", "-f", family, "-b", hex(base), "-o", str(out)]
    _run(*command, str(source))
    return out


def dfu_zip(out: Path, **parts: Path) -> Path:
    """``adafruit-nrfutil dfu genpkg`` with ``application=``, ``bootloader=`` and/or
    ``softdevice=`` files."""
    args = [f"--{part}={path}" for part, path in parts.items()]
    nrfutil = _script("adafruit-nrfutil")
    _run(nrfutil, "dfu", "genpkg", "--dev-type", "0x0052", "--sd-req", S140_7_3_0, *args, str(out))
    return out


def _script(name: str) -> str:
    """A console script of the test extras (adafruit-uf2, adafruit-nrfutil), beside Python."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        _missing(f"{name} is not installed: install the test extras (pip install -e '.[test]')")
    return str(path)


def _missing(sentence: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{sentence}; CI must run these tests (.ci/run installs it)")
    pytest.skip(sentence)


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")

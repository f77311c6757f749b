"""What the image intake tests (issue 21) share: where the application is linked, the UF2
family of the nRF52840, the committed firmware files, and the one-sentence refusal that
names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_smartball import contract
from pytest_smartball.image import ImageError, load_image

APP = contract.flash_layout().application_start
UF2_FAMILY = 0xADA52840

#: Committed fixtures, for machines without the toolchain: tests/arm_build.py's program,
#: built once by arm-none-eabi-gcc 12.2 (``-Os -s -Wl,-z,max-page-size=0x100``, 1.2 KB) and
#: its ``objcopy -O binary``.
DATA = Path(__file__).parents[1] / "data"


def image_error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message  # every message names the file
    assert "Traceback" not in message and "\n" not in message  # one sentence
    return message

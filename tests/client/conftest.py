"""Fixtures shared by the modules of tests/client/: the tiny ARM program the image intake
tests (test_image_*.py) read in each format the real tools write."""

from __future__ import annotations

import pytest

from .. import arm_build


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> arm_build.Build:
    """The tiny program, built once per session by the real toolchain at 0x27000."""
    return arm_build.build(tmp_path_factory.mktemp("arm"))

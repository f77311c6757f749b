"""Fixtures of the simulator tests: ``lib``, the C reference core loaded through ctypes for the
test_c_core_* modules (a prebuilt one from SMARTBALL_C_CORE_LIB, as CI's sanitizer and
coverage builds, or one built with ``make -C firmware host``)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from .. import c_core


@pytest.fixture(scope="session")  # no state of its own: one build for the four modules
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    prebuilt = os.environ.get(c_core.LIB_ENV)
    if prebuilt:
        return c_core.load(Path(prebuilt))
    try:
        path = c_core.build_library(tmp_path_factory.mktemp("c-core"))
    except c_core.MissingCompiler as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
    return c_core.load(path)

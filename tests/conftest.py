"""Fixtures shared by the modules of tests/ (the repository-wide set-up is the root
conftest.py)."""

from __future__ import annotations

import pytest

from .plugin_sessions import INNER_INI


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".ini", pytest=INNER_INI)
    return pytester

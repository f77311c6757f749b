"""Every release-gate test runs under the contract monitor: each frame both ways on every
link it opens is checked against protocol v1 (docs/protocol.md, section 15), and a device
that breaks a rule fails the test, even when the test's own assertions pass and the OTA
engine recovered from the deviation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_smartball.plugin.monitoring import ContractWatch
from pytest_smartball.suite_signer import SuiteSigner

from .helpers import SuiteKey


@pytest.fixture(autouse=True)
def _contract_monitor(smartball_monitor: ContractWatch) -> ContractWatch:
    return smartball_monitor


@pytest.fixture(autouse=True)
def _suite_key(smartball_signer: SuiteSigner | None) -> Iterator[SuiteSigner | None]:
    """Every session a release-gate test opens on a signed-only device is signed with the
    run's key (helpers.present_manifest reads it)."""
    SuiteKey.signer = smartball_signer
    yield smartball_signer
    SuiteKey.signer = None

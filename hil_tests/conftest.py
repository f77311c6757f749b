"""Every release-gate test runs under the contract monitor: each frame both ways on every
link it opens is checked against protocol v1 (docs/protocol.md, section 15), and a device
that breaks a rule fails the test, even when the test's own assertions pass and the OTA
engine recovered from the deviation."""

from __future__ import annotations

import pytest

from pytest_smartball.monitoring import ContractWatch


@pytest.fixture(autouse=True)
def _contract_monitor(smartball_monitor: ContractWatch) -> ContractWatch:
    return smartball_monitor

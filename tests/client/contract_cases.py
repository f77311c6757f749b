"""What the contract tests of this folder (test_contract_vectors.py, test_contract_table.py,
test_contract_timing.py) read from the packaged contract: the device vectors and the timing
obligations, loaded once."""

from __future__ import annotations

from typing import Any

from pytest_smartball import contract

TIMING = contract.timing()
DEVICE_VECTORS: list[dict[str, Any]] = contract.vectors("device.json")["vectors"]

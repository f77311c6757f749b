"""Fixtures shared by the modules of tests/ (the repository-wide set-up is the root
conftest.py).

tests/ is laid out like the code; a test module goes where what it tests lives:

* ``client/``: the client library (contract and codec, image, link, the OTA engine), the
  ``smartball-ota`` CLI, the pytest plugin and its reports, on a simulated target where they
  need a device;
* ``simulator/``: the simulated SmartBall (its firmware, faults, radio and bleak fronts,
  Bumble, the emulated BlueZ, the VM and virtual-controller machines) and the C core;
* ``system/``: the whole system and the rules of the house: a CLI or plugin run through
  emulated or real stacks (the emulated bluetoothd, labgrid, a VM's BlueZ), the release
  gate and its page, the benchmark, the kill table's and mutation harness's bookkeeping,
  the import and structure rules (test_citizen.py).

Helpers several folders share stay here, beside this file, and are never named ``test_*``
(plugin_sessions.py, firmware_harness.py, monitor_trace.py, hosts.py, c_core.py, ...);
``gate/`` holds the release gate's own measures, run as programs (``python -m
tests.gate.kill_table``, ``python -m tests.gate.mutation``), not collected as tests.
hil_tests/ is the release suite only.
"""

from __future__ import annotations

import pytest

from .plugin_sessions import INNER_INI


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".ini", pytest=INNER_INI)
    return pytester

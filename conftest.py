"""Repository-wide pytest set-up: hypothesis profiles.

The SmartBall fixtures come from the installed plugin (pytest_smartball.plugin, entry
point ``pytest11``), exactly as a user's project gets them.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
# The kill-table runs (tests/gate/kill_table.py): a property that fails under a firmware bug
# has caught it; shrinking the example would only cost time, once per bug.
settings.register_profile(
    "kill",
    settings.get_profile("ci"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

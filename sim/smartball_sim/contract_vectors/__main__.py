"""``python -m smartball_sim.contract_vectors --check`` / ``--write``."""

import sys

from . import main

sys.exit(main())

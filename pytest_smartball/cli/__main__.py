"""``python -m pytest_smartball.cli``: the same as the ``smartball-ota`` script."""

import sys

from . import main

sys.exit(main())

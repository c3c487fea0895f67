"""``python -m prune_cli.report``: the same as ``prune-report``."""

import sys

from prune_cli.report import main

sys.exit(main())

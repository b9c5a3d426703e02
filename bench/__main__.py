"""``python -m bench``: see bench/run.py, or ``python -m bench --help``."""

import sys

from .run import main

sys.exit(main())

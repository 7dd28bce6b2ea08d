"""``python -m apievents``."""

import sys

from apievents.cli import main

sys.exit(main())

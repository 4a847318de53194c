"""`python -m sonic_guard.client --help`."""

import sys

from .cli import main

sys.exit(main())

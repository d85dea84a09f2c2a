"""`python -m streams.cli`: the `trail` command (tests and the demo start it this way)."""

import sys

from streams.cli import main

sys.exit(main())

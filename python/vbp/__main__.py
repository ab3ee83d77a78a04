"""`python -m vbp` runs the `vbp` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m circuitry``: the command line (see :mod:`circuitry.tools.cli`)."""

from __future__ import annotations

import sys

from circuitry.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m benchmarks NAME [options]`: what scripts/bench runs. The package's
`__init__` has loaded the MySQL driver before this module imports anything."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

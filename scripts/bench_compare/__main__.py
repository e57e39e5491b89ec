"""`python3 -m bench_compare` (what scripts/bench-compare runs)."""

import sys

from .run import main

main(sys.argv[1:])

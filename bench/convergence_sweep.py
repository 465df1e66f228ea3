"""Entry point of `python bench/convergence_sweep.py`; the sweep is bench/convergence/sweep.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from bench.convergence.sweep import main

if __name__ == "__main__":
    sys.exit(main())

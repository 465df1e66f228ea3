"""Entry point of `python bench/load.py`; the benchmark lives in the package next to it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from bench.load.cli import main

if __name__ == "__main__":
    sys.exit(main())

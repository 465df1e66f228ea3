"""Entry point of `python bench/trainer.py`; the benchmark lives in the package next to it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from bench.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())

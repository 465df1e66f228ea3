"""Hypothesis profiles for the whole suite. The default is what each test asks for (the fuzzers
in tests/fuzz/ run a few hundred cases in all); `long` runs each fuzzer's long count (12,000
cases in all, see `cases(..., long=...)` in tests/fuzz/):

    .venv/bin/python -m pytest tests/fuzz --hypothesis-profile=long
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("long", max_examples=1000, deadline=None)

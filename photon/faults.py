"""Deterministic crash points for fault-injection tests.

`PHOTON_CRASH_AT=NAME[@N]` makes the process SIGKILL itself the N-th time (default 1st) it
passes a crash point whose name starts with NAME — a real `kill -9` at an exact moment, such as
between writing a checkpoint and renaming it into place. Unset (always, outside tests), a crash
point costs one dictionary lookup.

`PHOTON_FAIL_AT=NAME[@N]` makes a fault point raise OSError(EMFILE) the N-th time and every
time after: resource exhaustion on cue, for the tests of what a daemon does when it runs out.

Crash points: `aggregator.upload_chunk`, `aggregator.update_recorded`, `aggregator.aggregated`,
`fsutil.before_rename:<file name>`, `silo.train_step`, `silo.round_committed`,
`silo.upload_chunk`, `silo.follower_step` (ranks 1..N-1 of a torchrun silo, each step).
Fault points: `aggregator.tick` (each pass of the round driver).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections import Counter

ENV = "PHOTON_CRASH_AT"
FAIL_ENV = "PHOTON_FAIL_AT"
_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition("@")
    if not name.startswith(target):
        return
    _hits[target] += 1
    if _hits[target] >= int(count or 1):
        sys.stderr.write(f'{{"event": "crash_point", "point": "{name}"}}\n')
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def fault_point(name: str) -> None:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    target, _, count = spec.partition("@")
    if not name.startswith(target):
        return
    _hits["fail:" + target] += 1
    if _hits["fail:" + target] >= int(count or 1):
        raise OSError(errno.EMFILE, f"Too many open files (injected at {name})")

"""Load: 200 simulated silos and one hostile member against one real aggregator.

    python bench/load.py --json OUT.json [--quick] [--workdir DIR]

Keys: silos, rpc_p99_ms_honest (honest members' unary RPCs while under attack),
rounds_completed, updates_lost (honest updates of closed rounds missing from the journal),
aggregator_peak_rss_mib, open_fds_peak; plus the hostile member's tally per attack and
whether any of its poisoned updates was accepted. Targets: every round completes, 0 lost,
honest p99 <= 1 s, descriptors bounded by configuration.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.load.run import FULL, QUICK, run
from photon.fsutil import atomic_write_bytes
from photon.logs import configure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--quick", action="store_true", help="fewer rounds (about 7 minutes)")
    p.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temp dir)")
    args = p.parse_args(argv)
    configure("console")
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="photon-load-") as tmp:
        out = run(args.workdir or Path(tmp), plan)
    atomic_write_bytes(args.json, json.dumps(out, indent=2).encode())
    print(json.dumps({k: v for k, v in out.items() if k != "hostile"}, indent=2))
    return 0

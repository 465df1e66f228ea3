"""Daemon logs are JSON lines that stay whole when several processes share one file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import sys
from photon import logs
logs.configure("json", stream=sys.stderr)
log = logs.get_logger("t")
for i in range(3000):
    log.info("tick", writer=sys.argv[1], i=i, pad="x" * 200)
"""


def test_two_processes_sharing_a_log_file_never_splice_lines(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    with path.open("ab") as out:
        procs = [
            subprocess.Popen([sys.executable, "-c", WRITER, name], stderr=out)
            for name in ("a", "b")
        ]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    events = [json.loads(line) for line in path.read_text().splitlines()]
    for name in ("a", "b"):
        mine = [e["i"] for e in events if e["writer"] == name]
        assert mine == list(range(3000))

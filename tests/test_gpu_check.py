"""tools/gpu_check.sh on a machine without a GPU: one JSON summary that says so, exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run the check")
def test_without_a_gpu_the_check_fails_cleanly_with_json() -> None:
    done = subprocess.run(
        [str(ROOT / "tools" / "gpu_check.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] is False
    assert summary["gpu"]["available"] is False
    assert set(summary["steps"]) == {"autocast", "ddp", "fsdp", "bench", "local"}
    assert {s["status"] for s in summary["steps"].values()} == {"skipped"}

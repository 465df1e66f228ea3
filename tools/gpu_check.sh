#!/usr/bin/env bash
# The CUDA path end to end on a machine with GPUs (CI has none); one JSON summary on stdout.
#
#   tools/gpu_check.sh [--out DIR] [--skip autocast|ddp|fsdp|bench|local ...]
#
# Steps: bf16 autocast training, a silo under torchrun on every GPU (DDP, NCCL), the same with
# [silo] parallelism = "fsdp",
# bench/trainer.py --quick --device cuda, and a short `photon local` with silos on CUDA.
# Exit 0 when no step failed; 1 when one failed or there is no GPU ("gpu": {"available": false}).
# PYTHON picks the interpreter (default: the README's .venv, else python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found; asking torch anyway" >&2
fi
default_python=python3
[ -x .venv/bin/python ] && default_python=.venv/bin/python
exec "${PYTHON:-$default_python}" tools/gpu_check.py "$@"

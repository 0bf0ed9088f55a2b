#!/usr/bin/env bash
# One prepared check for a lent GPU (under 8 minutes): the tests that apply, CPU-vs-GPU game
# trajectories, and throughput at 64, 256 and 1,024 agents. Writes its figures to $OUT (or
# benchmarks/) as gpu_throughput.json. Nothing in the test suite depends on a GPU.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}"
python3 -m pip install -q -r requirements.txt 2>/dev/null || true
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
timeout 150 python3 -m pytest -q -x tests/test_games.py tests/test_network.py tests/test_masks.py
timeout 60 python3 benchmarks/gpu_trajectories.py
timeout 240 python3 benchmarks/throughput.py --device cuda --populations 64 256 1024 --archs spatial \
    --agent-steps 200000 --json "$out/gpu_throughput.json"

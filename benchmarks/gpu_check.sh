#!/usr/bin/env bash
# One prepared check for a lent GPU (about 8 minutes): the Triton kernels' tests on the GPU,
# throughput of spatial agents (learned at 64 and 1,024 agents, three ways; frozen at 256 and
# 1,024), CPU-vs-GPU game trajectories, a profile of one 1,024-agent frame, the host's calls per
# frame, the sparse layer's kernels alone against the masked-dense matmul, whether a population's
# size changes an agent's bits (reported, not a failure), and the game tests (batched games
# against minatar) under that machine's torch. Each step has its own time limit, a failing step does not stop the next, and
# the script exits 1 if any failed.
# Figures go to $OUT (or benchmarks/): gpu_throughput_now.json, gpu_throughput_float-observations.json
# and gpu_throughput_torch-games.json (1,024 and 64 learned agents as training runs, and without
# each of the bits and the Triton games), gpu_throughput_frozen.json, gpu_profile.txt,
# gpu_host_calls.txt (torch calls and launches per frame), gpu_triton_layer.json and gpu_check.log.
# Nothing in the test suite depends on a GPU.
#   bash benchmarks/gpu_check.sh
# A lent machine that cannot reach PyPI takes MinAtar from wheels in .whl/ (see the README).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
else
    python3 -m pip install -q -r requirements.txt
fi
failed=0
step() {  # step SECONDS COMMAND...: run with a limit, log it, remember a failure
    local limit=$1; shift
    echo "== $* (limit ${limit} s)"
    local start=$SECONDS
    timeout "$limit" "$@" || { echo "== FAILED ($?): $*"; failed=1; }
    echo "== $((SECONDS - start)) s"
}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
    step 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_triton.py
    # training as it is, and without each of the last two changes: the update's batches as floats
    # (not bits), the games in torch ops (not Triton kernels)
    for variant in now float-observations torch-games; do
        step 90 python3 benchmarks/throughput.py --device cuda --envs space_invaders breakout --archs spatial \
            --regimes learned --populations 1024 64 --agent-steps 200000 --json "$out/gpu_throughput_$variant.json" \
            $([ $variant != now ] && echo --$variant)
    done
    step 75 python3 benchmarks/gpu_trajectories.py
    step 60 python3 benchmarks/triton_layer.py --agents 1024 --repeats 10 --json "$out/gpu_triton_layer.json"
    step 40 python3 benchmarks/profile_frame.py --device cuda --env space_invaders --agents 1024 --frames 60 \
        --out "$out/gpu_profile.txt"
    step 30 python3 benchmarks/host_calls.py --env space_invaders --rows 100 --out "$out/gpu_host_calls.txt"
    timeout 60 python3 benchmarks/population_bits.py --device cuda --frames 2000 || echo "== (a report)"
    step 60 python3 benchmarks/throughput.py --device cuda --envs space_invaders breakout --archs spatial \
        --regimes frozen --populations 1024 256 --agent-steps 200000 --json "$out/gpu_throughput_frozen.json"
    step 80 python3 -m pytest -q -x -p no:cacheprovider tests/test_games.py
    echo "== failed steps: $failed"
    exit "$failed"
} 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"

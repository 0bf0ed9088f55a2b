#!/usr/bin/env bash
# One prepared check for a lent GPU, inside one 10-minute call: the limits of its steps add up to
# 540 s. The most important measurement first: learned spatial agents at 1,024 and 64 on the GPU
# path as it is; then the same without each of the last two GPU changes (the update's batches as
# floats, not bits; the games in torch ops, not Triton kernels), the Triton kernels' tests on the
# GPU, CPU-vs-GPU game trajectories, the sparse layer's kernels alone, the host's calls per frame,
# a profile of one 1,024-agent frame, and whether a population's size changes an agent's bits
# (reported, not a failure). Each step has its own time limit, a failing step does not stop the
# next, and the script exits 1 if any failed.
# Figures go to $OUT (or benchmarks/): gpu_throughput_{now,float-observations,torch-games}.json,
# gpu_triton_layer.json, gpu_host_calls.txt, gpu_profile.txt and gpu_check.log.
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
    # learned spatial agents at 1,024 and 64, as training runs them
    learned="python3 benchmarks/throughput.py --device cuda --envs space_invaders breakout --archs spatial
             --regimes learned --populations 1024 64 --agent-steps 200000"
    step 90 $learned --json "$out/gpu_throughput_now.json"
    step 70 $learned --json "$out/gpu_throughput_float-observations.json" --float-observations
    step 70 $learned --json "$out/gpu_throughput_torch-games.json" --torch-games
    step 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_triton.py
    step 60 python3 benchmarks/gpu_trajectories.py
    step 40 python3 benchmarks/triton_layer.py --agents 1024 --repeats 10 --json "$out/gpu_triton_layer.json"
    step 30 python3 benchmarks/host_calls.py --env space_invaders --rows 100 --out "$out/gpu_host_calls.txt"
    step 40 python3 benchmarks/profile_frame.py --device cuda --env space_invaders --agents 1024 --frames 60 \
        --out "$out/gpu_profile.txt"
    timeout 40 python3 benchmarks/population_bits.py --device cuda --frames 1500 || echo "== (a report)"
    echo "== failed steps: $failed"
    exit "$failed"
} 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"

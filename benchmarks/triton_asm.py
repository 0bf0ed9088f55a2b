"""What the GPU's Triton kernels compile to, without a GPU. Each launch that training makes
(sparse_triton's wrappers, called on CPU tensors of a population's shapes, with the launch
recorded instead of run) is compiled ahead of time for a CUDA target, with the specialisations a
real launch gets (16-byte alignment, integers divisible by 16, integers equal to 1), and its SASS
counted: loads (LDG), stores (STG), warp shuffles (SHFL), barriers (BAR), float multiply-adds
(FFMA), all instructions, registers and local memory (spills).

It checks that the kernels compile (Triton's interpreter, which the tests use on the CPU, accepts
code that the compiler rejects), and gives a first look at what a change costs before a GPU is
lent; only a GPU's timing says what it saves (benchmarks/triton_layer.py).

    python benchmarks/triton_asm.py [--arch 90] [--agents 4] [--json FILE]
"""
import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402
from engine import triton_kernels as sparse_triton  # noqa: E402

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
COUNTED = ("LDG", "STG", "SHFL", "BAR", "FFMA")


def launches(wrapper, *args) -> list[tuple[JITFunction, tuple, dict]]:
    """The kernel launches wrapper(*args) makes, recorded and not run."""
    made = []

    def record(kernel, *a, grid, warmup, **kw):
        made.append((kernel, a, kw))

    original = JITFunction.run
    JITFunction.run = record
    try:
        wrapper(*args)
    finally:
        JITFunction.run = original
    return made


def compile_launch(kernel: JITFunction, args: tuple, kwargs: dict, target: GPUTarget):
    """The launch compiled as a real one would be: each argument specialised by Triton's own rule."""
    values = dict(zip(kernel.arg_names, args)) | {k: v for k, v in kwargs.items() if k in kernel.arg_names}
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        kind, key = native_specialize_impl(BaseBackend, value, False, True, True)
        if kind == "constexpr":  # an integer equal to 1
            signature[param.name], constexprs[param.name] = "constexpr", key
        else:
            signature[param.name] = kind
            if key == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=target, options={"num_warps": kwargs.get("num_warps", 4)})


def sass_counts(compiled) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([TOOLS / "cuobjdump", "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([TOOLS / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    ops = collections.Counter(op.split(".")[0] for op in re.findall(
        r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M))
    resources = dict(re.findall(r"(REG|LOCAL|SHARED):(\d+)", usage))
    return {**{op: ops[op] for op in COUNTED}, "instructions": sum(ops.values()),
            "registers": int(resources["REG"]), "local bytes": int(resources["LOCAL"])}


def cases(agents: int) -> dict:
    """name -> the launches of one use of the kernels: the layer at the update's batch (32) and
    acting's (1), for spatial masks (one table for every agent), the optimiser and the games."""
    made = {}
    for env in ("breakout", "space_invaders"):
        cfg = sd.Config(env=env, arch="spatial")
        units, k = cfg.layer_shape
        d = cfg.input_size
        index = sd.build_mask(cfg, 0)[0].to(torch.int32).unsqueeze(0)
        w, bias = torch.zeros(agents, units, k), torch.zeros(agents, units)
        bools = torch.zeros(agents, 32, d, dtype=torch.bool)
        out = torch.zeros(agents, units, 32)
        grad = torch.zeros(agents, 32, units).transpose(1, 2)  # as the head's backward hands it over
        made[f"{env} forward, bools"] = launches(sparse_triton.sparse_relu_forward, bools, w, bias, index)
        made[f"{env} forward, floats"] = launches(sparse_triton.sparse_relu_forward, bools.float(), w, bias, index)
        made[f"{env} acting, batch 1"] = launches(sparse_triton.sparse_relu_forward, bools[:, :1].float(), w, bias,
                                                  index)
        bits = torch.zeros(agents, d, 1, dtype=torch.int32)
        made[f"{env} gradients, bools"] = launches(sparse_triton.sparse_relu_backward, bits, index, out, grad)
        xt = torch.zeros(agents, d, 32)
        made[f"{env} gradients, floats"] = launches(sparse_triton.sparse_relu_backward, xt, index, out, grad)
        made[f"{env} optimiser step"] = launches(sparse_triton.centred_rmsprop_step, w, w, w, w, 2.5e-4, 0.95, 0.01)
        game = sd.GAMES[env](agents, native=False)
        if env == "breakout":
            made["breakout game step"] = launches(
                sparse_triton.breakout_step, game.ball_x, game.ball_y, game.ball_dir, game.pos, game.last_x,
                game.last_y, game.strike, game.bricks, game.last_action)
            made["breakout observation"] = launches(sparse_triton.breakout_observe, game.ball_x, game.ball_y,
                                                    game.pos, game.last_x, game.last_y, game.bricks)
            made["breakout reset"] = launches(
                sparse_triton.breakout_reset, game.ball_x, game.ball_y, game.ball_dir, game.pos, game.last_x,
                game.last_y, game.strike, game.bricks, game.strike, torch.zeros(agents))
        else:
            made["space_invaders game step"] = launches(
                sparse_triton.space_invaders_step, game.pos, game.alien_dir, game.move_interval, game.move_timer,
                game.alien_shot_timer, game.shot_timer, game.ramp_index, game.aliens, game.f_bullets,
                game.e_bullets, game.last_action, True)
            made["space_invaders observation"] = launches(sparse_triton.space_invaders_observe, game.pos,
                                                          game.alien_dir, game.aliens, game.f_bullets, game.e_bullets)
            made["space_invaders reset"] = launches(
                sparse_triton.space_invaders_reset, game.pos, game.alien_dir, game.move_interval, game.move_timer,
                game.alien_shot_timer, game.shot_timer, game.ramp_index, game.aliens, game.f_bullets,
                game.e_bullets, game.f_bullets[:, 0, 0])
    return made


def compile_all(arch: int = 90, agents: int = 4) -> dict:
    """name -> {kernel name: SASS counts}, for every case."""
    target = GPUTarget("cuda", arch, 32)
    return {name: {kernel.__name__: sass_counts(compile_launch(kernel, a, kw, target)) for kernel, a, kw in made}
            for name, made in cases(agents).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability: 90 is an H100 or H200")
    parser.add_argument("--agents", type=int, default=4, help="population size (changes no code, only offsets)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = compile_all(args.arch, args.agents)
    columns = list(next(iter(next(iter(results.values())).values())))
    print(f"{'case':38s} {'kernel':18s} " + " ".join(f"{c:>12s}" for c in columns))
    for name, kernels in results.items():
        for kernel, counts in kernels.items():
            print(f"{name:38s} {kernel:18s} " + " ".join(f"{counts[c]:12d}" for c in columns))
    if args.json:
        args.json.write_text(json.dumps({"target": f"sm_{args.arch}", "triton": triton.__version__,
                                         "command": "python " + " ".join(sys.argv), "results": results}, indent=1))


if __name__ == "__main__":
    main()

"""The engine that makes sparse_dqn fast: batched games (engine.games), counter-based random
streams (engine.streams), the replay buffer (engine.replay) and the backends of the sparse layer,
the head and the optimiser (engine.backends: C++ kernels on the CPU, sparse_kernels.cpp; Triton
kernels on a GPU, triton_kernels.py). Each fast path computes the same bits as the pure-torch
reference in sparse_dqn.py and is tested against it; SPARSE_DQN_KERNELS=torch turns them all off.

Imported before torch: it sets OpenMP's wait policy and glibc's memory reuse for the process."""
import ctypes
import os
import sys

# torch's OpenMP threads spin while they wait for work. Where another process shares the cores (a
# background sweep beside the book), spinning threads slow each other down many times over:
# measured here, a one-agent learned-L1 run at 18 frames/s instead of 250. Waiting passively
# costs nothing measurable on an idle machine. OpenMP reads this once, when torch loads it, so it
# takes effect where this package is imported before torch; a setting of your own wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _keep_freed_memory():
    """glibc hands freed blocks of over 128 KiB back to the system, so each new tensor of a frame's
    update (megabytes, at 64 agents) page-faults on first touch: measured here with torch.profiler
    (benchmarks/profile_frame.py), zeroing the weight gradient of 64 Breakout agents took 5.0 ms a
    learning frame against 0.5 ms in a loop of its own. Keeping freed blocks for reuse (up to
    glibc's 32 MiB ceiling) took it to 1.9 ms, and changes no result. A
    MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ of your own wins."""
    if sys.platform != "linux" or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


_keep_freed_memory()


_keep_freed_memory()

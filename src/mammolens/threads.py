"""CPU threads that stay proportional on a shared machine.

Why training collapsed when the CPU was shared (measured in BENCHMARKS.md, "shared CPU"): torch's
OpenMP runtime (libgomp in the pip wheels) spins in every barrier by default, and the small ops of a
CPU training step hit a barrier many times per step. With other busy processes on the cores, a
descheduled thread holds the barrier while its sibling burns its time slice spinning, so a 2x fair
share became a 5-26x slowdown. Three settings keep the slowdown near the CPU share:

- ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning. It is read once, when the
  OpenMP runtime loads (``import torch``), so ``mammolens`` sets it (if unset) when the package is
  imported before torch; a launcher that imports torch first must set it itself.
- intra-op threads = the cores this process may use (``os.sched_getaffinity``) minus the loader
  workers, at least 1 (``configure_threads``);
- one intra-op thread in each DataLoader worker (``worker_threads``), instead of every worker
  starting as many threads as there are cores.

``OMP_NUM_THREADS`` set by the user wins over ``configure_threads``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["PASSIVE_ENV", "available_cores", "configure_threads", "passive_openmp_env", "worker_threads"]

PASSIVE_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
"""Environment for sleeping (not spinning) OpenMP waits: libgomp reads the first, Intel's runtime the second."""


def passive_openmp_env(environ: dict | None = None) -> dict[str, str]:
    """Set ``PASSIVE_ENV`` where unset, if torch (its OpenMP runtime) is not loaded yet; returns what was set.

    A value the user exported is kept. Once torch is imported the runtime has read its settings, so
    nothing is changed then (setting them would only mislead child processes' readers of the env).
    """
    env = os.environ if environ is None else environ
    if "torch" in sys.modules and environ is None:
        return {}
    done = {}
    for key, value in PASSIVE_ENV.items():
        if key not in env:
            env[key] = value
            done[key] = value
    return done


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def configure_threads(workers: int = 0) -> int:
    """Set torch's intra-op threads to the available cores minus ``workers`` loader processes (>= 1).

    Loader workers each use a core of their own while they decode batches; giving torch every core as
    well oversubscribes the machine. ``OMP_NUM_THREADS`` set in the environment is respected.

    Returns:
        The number of intra-op threads now in use.
    """
    import torch

    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}; pass the DataLoader's num_workers")
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        n = max(1, available_cores() - int(workers))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def worker_threads(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn`` part: one intra-op thread per worker process (they are many already)."""
    import torch

    torch.set_num_threads(1)

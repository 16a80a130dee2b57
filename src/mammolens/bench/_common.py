"""What every benchmark shares: machine description, median timing, peak memory, thread scoping."""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

from mammolens.threads import available_cores

GPU_TRAIN_TARGET = 2400.0
"""img/s the full ``mammolens train`` path must reach on one H100 (issue 6); the loader must feed at least this."""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, library versions, threads, GPU (if any), date and command line."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
    }
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)  # a loaded machine makes timings noisy
    except OSError:
        pass
    for mod in ("open_clip", "pydicom", "numpy", "PIL"):
        with contextlib.suppress(Exception):
            info[mod] = __import__(mod).__version__
    from mammolens._version import __version__

    info["mammolens"] = __version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def median_rate(fn: Callable[[], int], repeats: int, warmup: bool = True) -> dict[str, Any]:
    """Run ``fn`` (returns the number of items it processed); median items/s over ``repeats``."""
    if warmup:
        fn()
    rates, times = [], []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        rates.append(n / dt)
    return {"items_per_s": statistics.median(rates), "runs_items_per_s": rates, "seconds": statistics.median(times)}


class PeakRSS:
    """Peak resident memory (MiB) of this process while the block runs.

    Linux: the kernel's high-water mark (``VmHWM``) reset through ``/proc/self/clear_refs``; elsewhere a
    sampling thread. ``delta_mib`` is the peak minus the RSS at entry; ``children_max_mib`` is the largest
    ``ru_maxrss`` of any finished child process so far (worker pools).
    """

    def __enter__(self) -> PeakRSS:
        self._hwm = self._reset_hwm()
        self.start_mib = self._rss()
        self.peak_mib = self.start_mib
        self._stop = threading.Event()
        if not self._hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
        except (OSError, ValueError):
            return None
        return None

    def _reset_hwm(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return self._status("VmHWM") is not None
        except OSError:
            return False

    def _rss(self) -> float:
        v = self._status("VmRSS")
        if v is not None:
            return v
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 1024.0 if sys.platform != "darwin" else r / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mib = max(self.peak_mib, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._hwm:
            self.peak_mib = self._status("VmHWM") or self._rss()
        else:
            self._thread.join()
        import resource

        ch = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self.children_max_mib = ch / 1024.0 if sys.platform != "darwin" else ch / 2**20

    def as_dict(self) -> dict[str, float]:
        return {"peak_rss_mib": round(self.peak_mib, 1), "delta_mib": round(self.peak_mib - self.start_mib, 1),
                "children_max_rss_mib": round(self.children_max_mib, 1)}


def measure(fn: Callable[[], int], repeats: int, **extra) -> dict[str, Any]:
    """``_median_rate`` plus the peak memory of the whole measurement (warm-up included)."""
    with PeakRSS() as mem:
        rate = median_rate(fn, repeats)
    return {**rate, **extra, **mem.as_dict()}


def fastest(variants: dict[str, dict[str, Any]]) -> str:
    """The key of the ``_measure`` result with the most items per second."""
    return max(variants, key=lambda k: variants[k]["items_per_s"])


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch intra-op threads set to ``n`` inside the block."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def eval_transform(size: int = 224):
    """open_clip's eval transform: the naive pipelines' preprocessing."""
    import open_clip

    return open_clip.image_transform(size, is_train=False)


def interleaved(fns: dict[str, Callable[[], int]], repeats: int, warmup: bool = True) -> dict[str, dict[str, Any]]:
    """Time several functions (each returns the items it processed) in interleaved rounds.

    One warm-up call each, then ``repeats`` rounds in which every function runs once, the order rotating
    from round to round, so that a change in the machine's load hits all of them alike. Per function:
    ``items_per_s`` (median), ``runs_items_per_s`` (per round, in round order), ``seconds`` (median) and the
    largest ``peak_rss_mib`` of its calls. ``paired_ratio(a, b)`` of the result is the median per-round ratio.
    """
    names = list(fns)
    if warmup:
        for name in names:
            fns[name]()
    out: dict[str, dict[str, Any]] = {n: {"runs_items_per_s": [], "runs_seconds": [], "peak_rss_mib": 0.0}
                                      for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                n = fns[name]()
                dt = time.perf_counter() - t0
            rec = out[name]
            rec["runs_items_per_s"].append(n / dt)
            rec["runs_seconds"].append(dt)
            rec["peak_rss_mib"] = max(rec["peak_rss_mib"], round(mem.peak_mib, 1))
    for rec in out.values():
        rec["items_per_s"] = statistics.median(rec["runs_items_per_s"])
        rec["seconds"] = statistics.median(rec["runs_seconds"])
    return out


def paired_ratio(runs: dict[str, dict[str, Any]], a: str, b: str) -> float:
    """Median over the rounds of ``interleaved`` of a's rate over b's in the same round."""
    return statistics.median(x / y for x, y in zip(runs[a]["runs_items_per_s"], runs[b]["runs_items_per_s"]))

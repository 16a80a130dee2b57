"""Fuzz the image reader: N hostile files through ``mammolens.io.read_image``, one at a time, each in a worker
process with a per-file timeout and a memory cap, and count what happened.

Outcomes per file: ``ok`` (a legitimate read: finite [0, 1] pixels of the declared size, for a file that
may be read), ``clean_error`` (``ImageReadError``), ``other_exception`` (any other exception, incl.
``BaseException`` such as a decoder panic), ``hang`` (over ``--timeout`` s), ``crash`` (the worker died:
segfault, abort, over the memory cap), ``wrong_image`` (pixels returned that are non-finite, outside
[0, 1], not of the declared size, or returned for a file the corpus says must be refused).

Usage (the corpus is generated with the worktree's ``mammolens.data.fuzz``; ``--corpus DIR`` with an existing
``DIR/corpus.csv`` reuses it, so another reader can be measured on the very same files)::

    PYTHONPATH=src python experiments/fuzz.py --corpus /tmp/fuzz --n 300 --json after.json
    PYTHONPATH=/tmp/orig/src python experiments/fuzz.py --corpus /tmp/fuzz --json before.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

OUTCOMES = ("ok", "clean_error", "other_exception", "hang", "crash", "wrong_image")


def _worker(conn, mem_limit: int) -> None:
    """Read paths sent on ``conn``; answer (outcome detail dict) per path."""
    import numpy as np

    from mammolens.io import ImageReadError, read_image

    if mem_limit:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    while True:
        job = conn.recv()
        if job is None:
            return
        path, rows, cols = job
        t = time.perf_counter()
        try:
            img = read_image(path)
            px = img.pixels
            finite = bool(np.isfinite(px).all())
            res = {"result": "image", "shape": list(px.shape), "finite": finite,
                   "in_range": bool(finite and px.size and px.min() >= 0 and px.max() <= 1)}
        except ImageReadError as exc:
            res = {"result": "clean_error", "detail": str(exc)[-300:]}
        except BaseException as exc:  # noqa: BLE001 - a panic is exactly what is being counted
            if isinstance(exc, KeyboardInterrupt):
                raise
            res = {"result": "other_exception", "detail": f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]}"}
        res["seconds"] = round(time.perf_counter() - t, 3)
        res["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        conn.send(res)


class _Reader:
    """One worker process, replaced after a hang or a crash."""

    def __init__(self, mem_limit: int):
        self.mem_limit, self.proc = mem_limit, None

    def start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.mem_limit), daemon=True)
        self.proc.start()

    def read(self, path: str, rows: int, cols: int, timeout: float) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.conn.send((path, rows, cols))
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        else:
            self.proc.kill()
            self.proc.join()
            self.proc = None
            return {"result": "hang", "seconds": timeout}
        self.proc.join()
        code = self.proc.exitcode
        self.proc = None
        return {"result": "crash", "detail": f"worker exit code {code}"}

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)


def classify(row, res: dict) -> str:
    """One of ``OUTCOMES`` for a file's corpus row and its read result."""
    if res["result"] != "image":
        return res["result"]
    shape = tuple(res["shape"][-2:])
    if not (res["finite"] and res["in_range"]) or row["expect"] == "error":
        return "wrong_image"
    if row["rows"] > 0 and shape != (row["rows"], row["columns"]):
        return "wrong_image"
    return "ok"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="/tmp/mammolens_fuzz", help="corpus folder (generated when corpus.csv is absent)")
    ap.add_argument("--n", type=int, default=300, help="mutants to generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per file before it counts as a hang")
    ap.add_argument("--mem-gib", type=float, default=6.0, help="address-space cap of the reading process (0: none)")
    ap.add_argument("--json", default=None, help="write counts and per-file outcomes here")
    args = ap.parse_args()

    import pandas as pd

    corpus = Path(args.corpus)
    if (corpus / "corpus.csv").is_file():
        df = pd.read_csv(corpus / "corpus.csv")
    else:
        from mammolens.data.fuzz import make_fuzz_corpus

        df = make_fuzz_corpus(corpus, n=args.n, seed=args.seed)
    reader = _Reader(int(args.mem_gib * 2**30))
    outcomes, files = {k: 0 for k in OUTCOMES}, []
    t0 = time.perf_counter()
    for row in df.to_dict("records"):
        res = reader.read(row["path"], row["rows"], row["columns"], args.timeout)
        outcome = classify(row, res)
        outcomes[outcome] += 1
        files.append({"path": Path(row["path"]).name, "mutation": row["mutation"], "expect": row["expect"],
                      "outcome": outcome, **{k: v for k, v in res.items() if k != "result"}})
    reader.close()
    wall = time.perf_counter() - t0
    good = [f for f in files if f["expect"] == "ok"]
    summary = {"tried": len(files), **outcomes, "good_files": len(good),
               "good_read": sum(f["outcome"] == "ok" for f in good), "wall_s": round(wall, 1),
               "max_file_s": max(f.get("seconds", 0) for f in files),
               "max_rss_mib": max(f.get("maxrss_mib", 0) for f in files)}
    import mammolens

    summary["mammolens"] = str(Path(mammolens.__file__).parent)
    print(" | ".join(f"{k} {v}" for k, v in summary.items()))
    by_mut = pd.DataFrame(files).groupby(["mutation", "outcome"]).size().unstack(fill_value=0)
    bad = by_mut.drop(columns=[c for c in ("ok", "clean_error") if c in by_mut], errors="ignore")
    bad = bad[bad.sum(axis=1) > 0] if len(bad.columns) else bad.iloc[0:0]
    if len(bad):
        print("mutations with other outcomes than ok / clean_error:\n" + bad.to_string())
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "files": files}, indent=1))


if __name__ == "__main__":
    main()

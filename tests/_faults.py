"""Faulty-file hooks for pool tests: a file whose name says ``hang``, ``crash``, ``segv`` or ``panic``
hangs, kills its worker, segfaults or raises a BaseException (as a Rust decoder panic does). Forked
workers inherit a monkeypatched module attribute, so these run inside the real workers."""

import ctypes
import os
import time
from pathlib import Path


class FakePanic(BaseException):
    """Stands in for pyo3's PanicException (a BaseException subclass)."""


def misbehave(path) -> None:
    name = Path(str(path)).name
    if "hang" in name:
        time.sleep(600)
    if "crash" in name:
        os._exit(1)
    if "segv" in name:
        ctypes.string_at(0)
    if "panic" in name:
        raise FakePanic("decoder panicked")


def copies(src: Path, folder: Path, suffix: str) -> list[Path]:
    """Copies of a good file named after each fault (the content is fine; the name triggers the fault)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for kind in ("hang", "crash", "segv", "panic"):
        p = folder / f"{kind}{suffix}"
        p.write_bytes(Path(src).read_bytes())
        out.append(p)
    return out


REASONS = {
    "hang": "timed out after 3 s (worker stopped and replaced)",
    "crash": "worker crashed (exit code 1) while reading this file",
    "segv": "worker crashed (exit code -11, SIGSEGV) while reading this file",
    "panic": "FakePanic: decoder panicked",
}

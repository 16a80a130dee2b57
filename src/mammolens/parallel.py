"""One robust process pool for per-file jobs (ingest headers, preprocess rows, Predictor loading).

``run_tasks(fn, items, workers)`` yields ``(index, result, error)`` per item: ``error`` is None when
``fn(item)`` returned, else a one-line reason. One bad file never stops the job:

- any exception raised by ``fn`` (``BaseException`` included, e.g. the ``PanicException`` a Rust decoder
  raises; ``KeyboardInterrupt``/``SystemExit`` excepted) becomes that item's error;
- a worker that dies (segfault, ``os._exit``, the out-of-memory killer) is replaced and its item is
  reported as ``worker crashed (exit code -11, SIGSEGV) while reading this file``;
- an item that runs longer than ``timeout`` seconds (default ``MAMMOLENS_FILE_TIMEOUT`` or 120) has
  its worker killed and replaced and is reported as ``timed out after 120 s``.

Each worker holds one item at a time, so the parent always knows which item a dead worker held; at
most ``max_in_flight`` results wait in the parent (bounded memory). pydicom's log records and warnings
raised while an item runs are kept off the terminal; when the item fails they end its reason.
Workers ignore Ctrl-C; the parent stops and kills them. Workers die with their parent, even after a
``kill -9`` of it: ``PR_SET_PDEATHSIG`` on Linux plus a parent-pid watchdog thread (``_die_with_parent``).
No torch here: low in the import order.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any

__all__ = ["DEFAULT_FILE_TIMEOUT", "NothingReadError", "capture_messages", "file_timeout", "run_tasks", "describe_error"]

DEFAULT_FILE_TIMEOUT = 120.0
TIMEOUT_ENV = "MAMMOLENS_FILE_TIMEOUT"
_QUIET_LOGGERS = ("pydicom", "highdicom", "PIL")  # libraries that print to the terminal (UIDs, names) on their own


class NothingReadError(ValueError):
    """A job found no input it could read at all (empty folder, no file matched, every file failed)."""


def file_timeout(timeout: float | None = None) -> float | None:
    """Per-file timeout in seconds: ``timeout`` if given, else ``$MAMMOLENS_FILE_TIMEOUT``, else 120;
    0 or a negative value means none."""
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        try:
            timeout = float(raw) if raw else DEFAULT_FILE_TIMEOUT
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    return float(timeout) if timeout and timeout > 0 else None


def describe_error(exc: BaseException, notes: Iterable[str] = ()) -> str:
    """One line ``Type: message`` (the file's path dropped when the error carries it: tables name the
    file already), followed by up to two library messages logged while the file was read."""
    msg = str(exc)
    path = getattr(exc, "path", None)
    if path is not None:
        msg = msg.replace(f"{path}: ", "")
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    extra = list(dict.fromkeys(n for n in notes if n))[:2]
    if extra:
        text += " [" + "; ".join(x[:200] for x in extra) + "]"
    return " ".join(text.split())


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.sink.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def capture_messages(sink: list[str]) -> Iterator[None]:
    """Route the log records of pydicom, highdicom and PIL (their warnings quote UIDs and patient names) and
    every Python warning into ``sink`` (one line each) instead of the terminal, for one file; the caller
    decides what, scrubbed, reaches a table (``run_tasks`` appends them to a failed item's reason)."""
    saved = []
    for name in _QUIET_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.handlers[:], lg.propagate))
        lg.handlers, lg.propagate = [_Collect(sink)], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        sink.extend(f"{w.category.__name__}: {w.message}" for w in caught)


_STDERR: Any = None  # in a worker: the file its fd 2 goes to (decoder panics print there, not on the terminal)


def _stderr_lines(start: int) -> list[str]:
    """Lines written to the worker's captured fd 2 since ``start`` (a Rust panic's message, say)."""
    if _STDERR is None:
        return []
    _STDERR.seek(start)
    text = _STDERR.read(8192).decode("utf-8", "replace")
    _STDERR.seek(0, os.SEEK_END)
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(" ")][:2]


def _call(fn: Callable[[Any], Any], item: Any) -> tuple[Any, str | None]:
    notes: list[str] = []
    start = _STDERR.seek(0, os.SEEK_END) if _STDERR is not None else 0
    try:
        with capture_messages(notes):
            return fn(item), None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 — Rust panics derive from BaseException; recorded, job goes on
        return None, describe_error(exc, notes + _stderr_lines(start))
    finally:
        if _STDERR is not None and _STDERR.tell() > 1 << 20:  # keep the capture file small
            _STDERR.truncate(0)
            _STDERR.seek(0)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WATCHDOG_S = 0.5


def _set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die_with_parent(parent_pid: int | None, use_prctl: bool) -> None:
    """A worker never outlives the job's process (``kill -9`` of it runs no ``finally``): the kernel kills
    it (``PR_SET_PDEATHSIG``, set only when the pool was made by the main thread: the signal follows the
    thread that forked) and a watchdog thread exits it once its parent pid changes (every other case)."""
    if parent_pid is None:
        return
    if use_prctl:
        _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(_WATCHDOG_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="mammolens-parent-watchdog", daemon=True).start()


def _worker_main(conn, fn, initializer, initargs, parent_pid: int | None = None, use_prctl: bool = True) -> None:
    _die_with_parent(parent_pid, use_prctl)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills the workers
    faulthandler.disable()  # a crash is reported as one error row, not a stack dump on the terminal
    global _STDERR
    _STDERR = tempfile.TemporaryFile()  # decoders (Rust panics, C libraries) write to fd 2 directly
    os.dup2(_STDERR.fileno(), 2)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 — told to the parent, which stops the job
            conn.send((-1, None, describe_error(exc)))
            return
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg is None:
            return
        i, item = msg
        conn.send((i, *_call(fn, item)))


def _death_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed, often by the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"worker crashed (exit code {code}, {name}){hint} while reading this file"
    return f"worker crashed (exit code {code}) while reading this file"


class _Worker:
    def __init__(self, ctx, fn, initializer, initargs):
        self.conn, child = ctx.Pipe()
        main = threading.current_thread() is threading.main_thread()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, initializer, initargs, os.getpid(), main),
                                daemon=True)
        self.proc.start()
        child.close()
        self.task: int | None = None  # index of the item it holds
        self.deadline = float("inf")

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(None if kill else 5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_tasks(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int,
    *,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    timeout: float | None = None,
    ordered: bool = False,
    max_in_flight: int | None = None,
) -> Iterator[tuple[int, Any, str | None]]:
    """Run ``fn`` on every item; yield ``(index, result, error)`` (see the module docstring).

    Args:
        fn: a module-level function of one item (it runs in forked worker processes).
        items: the inputs; read lazily, so a generator keeps memory flat.
        workers: processes; 0 or 1 runs in this process (exceptions still become errors; no timeout).
        initializer: called as ``initializer(*initargs)`` once per worker (replacements included) or
            once here when ``workers <= 1``.
        timeout: seconds per item; None reads ``MAMMOLENS_FILE_TIMEOUT`` (default 120); 0 = none.
        ordered: yield in input order (else as finished).
        max_in_flight: items handed out but not yet yielded (default ``4 * workers``).

    Raises:
        RuntimeError: the initializer failed in a worker.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for i, item in enumerate(items):
            yield (i, *_call(fn, item))
        return

    limit = file_timeout(timeout)
    window = max(workers, max_in_flight or 4 * workers)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = [_Worker(ctx, fn, initializer, initargs) for _ in range(workers)]
    source = enumerate(items)
    held: set[int] = set()  # indices of the items the workers hold
    done: dict[int, tuple[Any, str | None]] = {}  # finished, not yet yielded (ordered mode)
    next_out, exhausted = 0, False

    def replace(w: _Worker) -> None:
        w.stop(kill=True)
        pool[pool.index(w)] = _Worker(ctx, fn, initializer, initargs)

    try:
        while True:
            for w in pool:  # hand out items to idle workers, within the window
                while w.task is None and not exhausted and len(held) + len(done) < window:
                    try:
                        i, item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    held.add(i)
                    w.task, w.deadline = i, time.monotonic() + (limit or float("inf"))
                    try:
                        w.conn.send((i, item))
                    except OSError:  # the worker just died: its sentinel reports it below
                        pass
            if not held and exhausted and not done:
                return
            finished: list[tuple[int, Any, str | None]] = []
            busy = [w for w in pool if w.task is not None]
            if busy:
                now = time.monotonic()
                wait_s = max(0.0, min(w.deadline for w in busy) - now) if limit else None
                ready = set(wait([w.conn for w in pool] + [w.proc.sentinel for w in pool], wait_s))
                for w in list(pool):
                    if w.conn in ready and w.conn.poll():
                        try:
                            i, res, err = w.conn.recv()
                        except (EOFError, OSError):  # died while sending: treated as a crash below
                            pass
                        else:
                            if i < 0:
                                raise RuntimeError(f"a worker process could not start: {err}")
                            finished.append((i, res, err))
                            held.discard(i)
                            w.task = None
                            continue
                    if w.proc.sentinel in ready or not w.proc.is_alive():
                        w.proc.join()
                        if w.task is not None:
                            finished.append((w.task, None, _death_reason(w.proc.exitcode)))
                            held.discard(w.task)
                        replace(w)
                    elif w.task is not None and time.monotonic() > w.deadline:
                        finished.append((w.task, None, f"timed out after {limit:g} s (worker stopped and replaced)"))
                        held.discard(w.task)
                        replace(w)
            if not ordered:
                yield from finished
                continue
            for i, res, err in finished:
                done[i] = (res, err)
            while next_out in done:
                yield (next_out, *done.pop(next_out))
                next_out += 1
    finally:
        for w in pool:
            w.stop(kill=bool(held) or w.task is not None)

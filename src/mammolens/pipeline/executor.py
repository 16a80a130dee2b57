"""``Executor``: run one function over many items, one bad item never stopping the job.

Every per-file job (the cache builder's rows, ``Predictor``'s loading, ingest's headers) goes through
``Executor.map``, so that where the work runs is one choice made in one place::

    from mammolens.pipeline.executor import get_executor

    ex = get_executor("local", workers=8, initializer=init, initargs=(...))
    for i, result, error in ex.map(fn, items, ordered=True, timeout=120, window=32):
        ...  # error is None when fn(items[i]) returned, else a one-line reason

``map`` yields ``(index, result, error)`` per item. The contract every backend keeps:

- crash isolation: an exception in ``fn``, a worker that dies (segfault, out-of-memory killer) or an
  item that runs past ``timeout`` seconds becomes that item's ``error``; the job goes on;
- ``ordered=True`` yields in input order, else as finished;
- at most ``window`` items are handed out but not yet yielded (memory stays flat on any number of items);
- items are read lazily (a generator is fine).

``prefetch(ex.map(...), depth)`` runs the map in a background thread, up to ``depth`` results ahead, so that
the workers keep preparing while this process computes (``Predictor``: the model runs on one batch while the
next ones are read; each local worker holds one item at a time and would otherwise wait for the consumer).

``LocalExecutor`` (kind ``"local"``) is today's process pool, ``mammolens.parallel.run_tasks``: forked
worker processes (``workers <= 1`` runs in this process, without a timeout). A new backend (e.g. Ray)
is a subclass of ``Executor`` registered with ``register_executor("ray", RayExecutor)``; callers that
take ``get_executor(kind, ...)`` need no change. No torch here: low in the import order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mammolens.parallel import run_tasks

__all__ = ["Executor", "LocalExecutor", "get_executor", "list_executors", "prefetch", "register_executor"]


class Executor:
    """Runs ``fn`` over items with crash isolation, a per-item timeout, a bounded window and input order.

    Subclasses implement ``map``; ``workers`` is the parallelism they use (0 or 1: in this process).
    """

    kind = ""

    def __init__(self, workers: int = 0):
        self.workers = max(0, int(workers))

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True,
            timeout: float | None = None, window: int | None = None) -> Iterator[tuple[int, Any, str | None]]:
        """Yield ``(index, result, error)`` for every item (see the module docstring).

        Args:
            fn: a module-level function of one item (it may run in another process).
            items: the inputs, read lazily.
            ordered: yield in input order (else as finished).
            timeout: seconds per item; None reads ``MAMMOLENS_FILE_TIMEOUT`` (default 120); 0 = none.
            window: items handed out but not yet yielded (backend default when None).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"


class LocalExecutor(Executor):
    """Worker processes on this machine (``mammolens.parallel.run_tasks``).

    Args:
        workers: processes; 0 or 1 runs in this process (exceptions still become errors; no timeout).
        initializer: called as ``initializer(*initargs)`` once per worker (replacements included) or once
            here when ``workers <= 1``, at the start of every ``map``.
        initargs: its arguments.
    """

    kind = "local"

    def __init__(self, workers: int = 0, initializer: Callable[..., None] | None = None, initargs: tuple = ()):
        super().__init__(workers)
        self.initializer = initializer
        self.initargs = tuple(initargs)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True,
            timeout: float | None = None, window: int | None = None) -> Iterator[tuple[int, Any, str | None]]:
        return run_tasks(fn, items, self.workers, initializer=self.initializer, initargs=self.initargs,
                         timeout=timeout, ordered=ordered, max_in_flight=window)


_BACKENDS: dict[str, type[Executor]] = {"local": LocalExecutor}


def register_executor(kind: str, cls: type[Executor], overwrite: bool = False) -> None:
    """Make ``get_executor(kind, ...)`` build ``cls(...)`` (a subclass of ``Executor``)."""
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise TypeError(f"executor backend {kind!r} must be a subclass of Executor, got {cls!r}")
    if kind in _BACKENDS and _BACKENDS[kind] is not cls and not overwrite:
        raise ValueError(f"executor backend {kind!r} is already registered; pass overwrite=True to replace it")
    _BACKENDS[kind] = cls


def list_executors() -> list[str]:
    """The registered backend kinds."""
    return sorted(_BACKENDS)


def get_executor(kind: str = "local", **kw: Any) -> Executor:
    """An ``Executor`` of backend ``kind`` built with ``kw`` (``LocalExecutor``: ``workers``, ``initializer``,
    ``initargs``).

    Raises:
        ValueError: no backend of that kind is registered.
    """
    cls = _BACKENDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown executor {kind!r}; registered: {list_executors()}")
    return cls(**kw)


_END = object()


def prefetch(results: Iterator[Any], depth: int) -> Iterator[Any]:
    """Yield what ``results`` yields, computed in a background thread up to ``depth`` items ahead.

    The consumer's time (a model's forward pass, which releases the GIL) overlaps the producer's (handing
    out items and collecting the workers' results). An exception in the producer is raised here, at its
    place in the sequence; when the consumer stops early (``break``, an exception, ``close()``), the producer
    is closed (its workers stopped) before this generator returns.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for item in results:
                if not put((None, item)):
                    break
            else:
                put((None, _END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((exc, None))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=feed, name="mammolens-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()

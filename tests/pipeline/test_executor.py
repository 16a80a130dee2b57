"""pipeline.executor: input order, per-item timeout, crash isolation, the backend registry."""

import os
import time

import pytest

from mammolens.pipeline.executor import Executor, LocalExecutor, get_executor, list_executors, register_executor


def _work(x):
    if x == "crash":
        os._exit(3)  # the worker dies: no Python exception reaches the parent
    if x == "hang":
        time.sleep(60)
    if x == "raise":
        raise ValueError("bad item")
    if isinstance(x, int):
        time.sleep(0.05 * (x % 3))  # finish out of order
        return x * 10
    return x


_INIT: dict = {}


def _init(value):
    _INIT["v"] = value


def _read_init(_):
    return _INIT["v"]


def test_local_executor_keeps_input_order_and_isolates_crash_hang_and_exception():
    items = [0, 1, "crash", 2, "hang", 3, "raise", 4]
    got = list(get_executor("local", workers=2).map(_work, items, ordered=True, timeout=3, window=3))
    assert [i for i, _, _ in got] == list(range(len(items)))
    res = {i: (r, e) for i, r, e in got}
    assert [res[i][0] for i in (0, 1, 3, 5, 7)] == [0, 10, 20, 30, 40]
    assert all(res[i][1] is None for i in (0, 1, 3, 5, 7))
    assert res[2][0] is None and "worker crashed (exit code 3)" in res[2][1]
    assert res[4][0] is None and res[4][1].startswith("timed out after 3 s")
    assert res[6] == (None, "ValueError: bad item")


def test_local_executor_in_process_and_initializer():
    ex = LocalExecutor(0, initializer=_init, initargs=("here",))
    assert [(i, r, e) for i, r, e in ex.map(_work, [1, "raise"])] == [(0, 10, None), (1, None, "ValueError: bad item")]
    assert {r for _, r, _ in LocalExecutor(2, initializer=_init, initargs=("w",)).map(_read_init, range(4))} == {"w"}
    assert {r for _, r, _ in ex.map(_read_init, range(2))} == {"here"}


def test_get_executor_registry_lets_a_backend_plug_in_without_touching_callers():
    class Serial(Executor):
        kind = "serial-test"

        def map(self, fn, items, ordered=True, timeout=None, window=None):
            for i, x in enumerate(items):
                yield i, fn(x), None

    assert "local" in list_executors()
    with pytest.raises(ValueError, match="unknown executor 'serial-test'"):
        get_executor("serial-test")
    register_executor("serial-test", Serial)
    try:
        ex = get_executor("serial-test", workers=4)
        assert isinstance(ex, Serial) and ex.workers == 4
        assert list(ex.map(_work, [1, 2])) == [(0, 10, None), (1, 20, None)]
        with pytest.raises(ValueError, match="already registered"):
            register_executor("serial-test", type("Other", (Executor,), {}))
        with pytest.raises(TypeError):
            register_executor("bad", object)
    finally:
        from mammolens.pipeline import executor

        executor._BACKENDS.pop("serial-test", None)


def _slow_square(x):
    time.sleep(0.01)
    return x * x


def test_prefetch_runs_ahead_keeps_order_and_raises_in_place():
    from mammolens.pipeline.executor import prefetch

    assert list(prefetch(iter(range(20)), 3)) == list(range(20))
    out = [r for _, r, _ in prefetch(get_executor("local", workers=2).map(_slow_square, range(12), window=4), 8)]
    assert out == [x * x for x in range(12)]

    def boom():
        yield 1
        raise KeyError("producer failed")

    it = prefetch(boom(), 2)
    assert next(it) == 1
    with pytest.raises(KeyError, match="producer failed"):
        next(it)


def test_prefetch_closes_the_producer_when_the_consumer_stops():
    from mammolens.pipeline.executor import prefetch

    closed = []

    def producer():
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    it = prefetch(producer(), 4)
    assert next(it) == 0
    it.close()
    assert closed == [True]

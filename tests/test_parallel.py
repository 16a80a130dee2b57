"""The robust pool: crashes, hangs and BaseExceptions become per-item errors; the job finishes."""

import os
import time

import pytest

from _faults import misbehave
from mammolens.parallel import describe_error, file_timeout, run_tasks


def _task(x):
    misbehave(x)
    if x == "value":
        raise ValueError("bad value")
    return x * 2


def _collect(items, workers, **kw):
    return {i: (res, err) for i, res, err in run_tasks(_task, items, workers, **kw)}


@pytest.mark.timeout(60)
def test_run_tasks_survives_crash_hang_and_panic():
    items = [1, "hang", 2, "crash", 3, "segv", 4, "panic", 5, "value"] + list(range(6, 30))
    t0 = time.monotonic()
    out = _collect(items, 3, timeout=2)
    assert time.monotonic() - t0 < 30
    assert sorted(out) == list(range(len(items)))
    good = {i: r for i, (r, e) in out.items() if e is None}
    assert good == {i: x * 2 for i, x in enumerate(items) if isinstance(x, int)}
    assert out[1][1] == "timed out after 2 s (worker stopped and replaced)"
    assert out[3][1] == "worker crashed (exit code 1) while reading this file"
    assert out[5][1].startswith("worker crashed (exit code -11, SIGSEGV)")
    assert out[7][1] == "FakePanic: decoder panicked"
    assert out[9][1] == "ValueError: bad value"


@pytest.mark.timeout(60)
def test_run_tasks_ordered_with_bounded_window():
    items = list(range(40))
    got = [(i, r) for i, r, e in run_tasks(_task, items, 2, ordered=True, max_in_flight=3)]
    assert got == [(i, 2 * i) for i in items]


def test_run_tasks_in_process_turns_base_exceptions_into_errors():
    out = _collect([1, "panic", "value", 2], 0)
    assert out == {0: (2, None), 1: (None, "FakePanic: decoder panicked"), 2: (None, "ValueError: bad value"), 3: (4, None)}


def _init_ok(v):
    os.environ["POOL_TEST_INIT"] = v


def _read_env(_):
    return os.environ.get("POOL_TEST_INIT")


def _init_fail():
    raise ValueError("no disk")


@pytest.mark.timeout(60)
def test_run_tasks_initializer_runs_in_workers_and_failure_stops_job(monkeypatch):
    monkeypatch.delenv("POOL_TEST_INIT", raising=False)
    assert {r for _, r, _ in run_tasks(_read_env, range(6), 2, initializer=_init_ok, initargs=("x",))} == {"x"}
    assert "POOL_TEST_INIT" not in os.environ  # ran in the workers, not here
    with pytest.raises(RuntimeError, match="no disk"):
        list(run_tasks(_read_env, range(6), 2, initializer=_init_fail))


def _warn_and_fail(x):
    import logging
    import warnings

    logging.getLogger("pydicom").warning("Invalid value for VR UI: 'x'")
    warnings.warn("pixel data ends early", stacklevel=1)
    if x:
        raise ValueError("broken")
    return "ok"


def test_run_tasks_keeps_pydicom_noise_off_the_terminal(capfd):
    out = {i: (r, e) for i, r, e in run_tasks(_warn_and_fail, [0, 1], 0)}
    cap = capfd.readouterr()
    assert "Invalid value" not in cap.err + cap.out and "ends early" not in cap.err + cap.out
    assert out[0] == ("ok", None)
    assert out[1][1] == "ValueError: broken [pydicom: Invalid value for VR UI: 'x'; UserWarning: pixel data ends early]"


def test_file_timeout_env(monkeypatch):
    monkeypatch.delenv("MAMMOLENS_FILE_TIMEOUT", raising=False)
    assert file_timeout() == 120.0 and file_timeout(5) == 5.0 and file_timeout(0) is None
    monkeypatch.setenv("MAMMOLENS_FILE_TIMEOUT", "7.5")
    assert file_timeout() == 7.5
    monkeypatch.setenv("MAMMOLENS_FILE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MAMMOLENS_FILE_TIMEOUT"):
        file_timeout()


def test_describe_error_drops_the_path():
    from mammolens.io import ImageReadError

    e = ImageReadError("/a/b.dcm", "truncated\nfile")
    assert describe_error(e) == "ImageReadError: truncated file"


def test_run_tasks_ctrl_c_stops_the_job_and_its_workers(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import multiprocessing as mp, time\n"
        "from mammolens.parallel import run_tasks\n"
        "def hang(x):\n"
        "    time.sleep(600)\n"
        "try:\n"
        "    print('started', flush=True)\n"
        "    list(run_tasks(hang, range(8), 2, timeout=0))\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted, workers left:', len(mp.active_children()), flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.5)  # the workers are running (hung)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "interrupted, workers left: 0" and time.monotonic() - t0 < 10


def _writes_fd2_then_panics(x):
    os.write(2, b"thread '<unnamed>' panicked at src/lib.rs:487:24:\n  stack frame detail\n")
    raise RuntimeError("decoder failed")


def test_run_tasks_worker_fd2_goes_to_the_reason_not_the_terminal(capfd):
    out = {i: err for i, _, err in run_tasks(_writes_fd2_then_panics, [1, 2], 2, timeout=30)}
    assert out[0] == "RuntimeError: decoder failed [thread '<unnamed>' panicked at src/lib.rs:487:24:]"
    assert "panicked" not in capfd.readouterr().err  # what a Rust decoder prints never reaches the terminal


def _children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (read from /proc: psutil may not be installed)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


_JOBS = {
    "run_tasks": "for _ in par.run_tasks(slow, range(8), 3, timeout=0):\n    pass\n",
    # a preprocess over many slow files (a reader that never returns), as `mammolens preprocess` runs it
    "preprocess": (
        "import pandas as pd\n"
        "from mammolens.data.cache import build_cache\n"
        "rows = [dict(image_path=f'/nowhere/{i}.dcm', patient_id=f'p{i}', study_id=f's{i}', laterality='L',\n"
        "             view='CC', modality='DM', manufacturer='', density='') for i in range(12)]\n"
        "build_cache(pd.DataFrame(rows), sys.argv[1], {'size': 16}, workers=3, progress=False, reader=slow,\n"
        "            timeout=0)\n"),
}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("job, watchdog_only", [("run_tasks", False), ("run_tasks", True), ("preprocess", False)])
def test_workers_die_with_a_killed_parent(tmp_path, job, watchdog_only):
    """kill -9 of the main process (no finally, no atexit) leaves no worker behind: PR_SET_PDEATHSIG, and
    the parent-pid watchdog where prctl is unavailable."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import os, sys, time\n"
        "import mammolens.parallel as par\n"
        + ("par._set_parent_death_signal = lambda: False\n" if watchdog_only else "")
        + "def slow(x, **kw):\n"
        "    time.sleep(600)\n"
        "print('started', flush=True)\n"
        + _JOBS[job]
    )
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 60
    while len(_children_of(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = _children_of(proc.pid)
    assert len(workers) == 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 8
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for w in left:  # never leave them behind, whatever the result
        os.kill(w, signal.SIGKILL)
    assert not left, f"{len(left)} worker(s) survived their parent"

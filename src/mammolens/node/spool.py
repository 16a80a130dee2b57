"""The node's spool: received objects on disk first, and a journal that survives ``kill -9``.

Layout of ``SPOOL/``::

    journal.jsonl                      one JSON event a line, appended and fsync'ed before a peer hears "success"
    studies/<key>/mammo/<sop>.dcm      objects of a mammography storage SOP class (predicted)
    studies/<key>/other/<sop>.dcm      every other object (stored, not predicted, reported)
    results/<key>/<run>/*.dcm          the answer of one run for one study (deterministic UIDs)
    tmp/                               partial writes (``os.replace`` moves a complete file into place)
    status.json                        queue / done / failed, without patient identity

``<key>`` is the study's pseudonym (``inference.study_key``), ``<sop>`` a hash of the SOP Instance UID (a
resend of one object replaces its file). Events: ``received`` (study key and UID, SOP class, mammo or not),
``answered`` (run, the number of objects the answer covers, result files), ``sent`` (run, count, destination),
``failed`` (run, count, reason), ``not_predicted`` (count, reason). Replaying them gives every study's state, so
a restarted node answers what was received but not answered and sends what was answered but not sent — once per
study, run and set of received objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Spool", "StudyState", "atomic_write"]


def atomic_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``path`` so that a reader (or a restart after a crash) sees all of it or nothing."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.{threading.get_ident()}.part"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class StudyState:
    """One study as the journal tells it."""

    key: str
    uid: str = ""
    mammo: set[str] = field(default_factory=set)  # SOP hashes
    other: dict[str, str] = field(default_factory=dict)  # SOP hash -> SOP class UID
    last: float = 0.0  # time of the last object received
    answered: dict[str, int] = field(default_factory=dict)  # run -> objects covered
    results: dict[str, list[str]] = field(default_factory=dict)  # run -> result files (relative to the spool)
    sent: dict[str, dict[str, int]] = field(default_factory=dict)  # run -> {destination: objects covered}
    failed: dict[str, tuple[int, str]] = field(default_factory=dict)  # run -> (objects covered, reason)
    not_predicted: int = -1  # objects covered by the last not_predicted event

    @property
    def n(self) -> int:
        return len(self.mammo) + len(self.other)

    def needs_answer(self, run: str) -> bool:
        if not self.mammo:
            return False
        if self.failed.get(run, (-1, ""))[0] == self.n:
            return False
        return self.answered.get(run) != self.n

    def unsent(self, run: str, destinations: list[str]) -> list[str]:
        if self.answered.get(run) != self.n or self.failed.get(run, (-1, ""))[0] == self.n:
            return []
        done = self.sent.get(run, {})
        return [d for d in destinations if done.get(d) != self.n]


class Spool:
    """Received objects, results and the journal under one folder (thread-safe)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for sub in ("studies", "results", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for part in (self.root / "tmp").iterdir():  # a write or a predict pass cut short by a crash
            shutil.rmtree(part, ignore_errors=True) if part.is_dir() and not part.is_symlink() else part.unlink(missing_ok=True)
        self.journal_path = self.root / "journal.jsonl"
        self._lock = threading.RLock()
        self.studies: dict[str, StudyState] = {}
        self._replay()
        self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115 — held open for appends

    # ------------------------------------------------------------------------------ journal
    def _replay(self) -> None:
        if not self.journal_path.is_file():
            return
        raw = self.journal_path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1]:  # a line cut by kill -9 mid-write: drop it (its object was never acknowledged)
            with open(self.journal_path, "r+b") as f:
                f.truncate(len(raw) - len(lines[-1]))
            lines = lines[:-1]
        for ln in lines:
            if ln.strip():
                self._apply(json.loads(ln))

    def _apply(self, e: dict[str, Any]) -> None:
        s = self.studies.setdefault(e["study"], StudyState(e["study"]))
        ev = e["ev"]
        if ev == "received":
            s.uid = e.get("uid", s.uid)
            (s.mammo.add(e["sop"]) if e["mammo"] else s.other.__setitem__(e["sop"], e.get("sop_class", "")))
            s.last = max(s.last, float(e["t"]))
        elif ev == "answered":
            s.answered[e["run"]] = int(e["n"])
            s.results[e["run"]] = list(e.get("files", []))
            s.failed.pop(e["run"], None)
        elif ev == "sent":
            s.sent.setdefault(e["run"], {})[e["dest"]] = int(e["n"])
        elif ev == "failed":
            s.failed[e["run"]] = (int(e["n"]), str(e.get("reason", "")))
        elif ev == "not_predicted":
            s.not_predicted = int(e["n"])

    def log(self, ev: str, study: str, **kw) -> None:
        """Append one event (fsync'ed: it survives a crash once this returns) and apply it."""
        e = {"t": round(time.time(), 3), "ev": ev, "study": study, **kw}
        line = json.dumps(e, separators=(",", ":")) + "\n"
        with self._lock:
            self._journal.write(line)
            self._journal.flush()
            os.fsync(self._journal.fileno())
            self._apply(e)

    # ------------------------------------------------------------------------------ objects
    def store(self, data: bytes, study_key: str, study_uid: str, sop_uid: str, sop_class: str, mammo: bool) -> Path:
        """Write one received object (file-format bytes), then journal it."""
        sop = hashlib.sha256(sop_uid.encode()).hexdigest()[:24]
        path = self.study_dir(study_key) / ("mammo" if mammo else "other") / f"{sop}.dcm"
        atomic_write(path, data, self.root / "tmp")
        self.log("received", study_key, uid=study_uid, sop=sop, sop_class=sop_class, mammo=mammo)
        return path

    def study_dir(self, key: str) -> Path:
        return self.root / "studies" / key

    def result_dir(self, key: str, run: str) -> Path:
        return self.root / "results" / key / run

    def mammo_files(self, key: str) -> list[Path]:
        return sorted((self.study_dir(key) / "mammo").glob("*.dcm"))

    def snapshot(self) -> dict[str, StudyState]:
        """A copy of every study's state (for the scheduler and the status)."""
        import copy

        with self._lock:
            return copy.deepcopy(self.studies)

    def disk(self) -> tuple[float, float]:
        """(fraction of the spool's file system used, free MiB)."""
        u = shutil.disk_usage(self.root)
        return (u.used / u.total if u.total else 1.0), u.free / 2**20

    def close(self) -> None:
        with self._lock:
            self._journal.close()

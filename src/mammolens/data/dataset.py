"""Torch Dataset over a preprocessed cache, and a DataLoader helper.

A sample is ``{"image": float32 [1, S, S] in [0, 1], "label": int64 (-1 unlabelled), "index": int
(cache row), "modality": int (index into constants.MODALITIES, -1 unknown)}``. Labels are encoded once
at construction; the memmap is opened lazily in each DataLoader worker (the dataset pickles small).
"""

from __future__ import annotations

from os import PathLike
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from mammolens.constants import KEY_IMAGE, KEY_INDEX, KEY_LABEL, KEY_MODALITY, MODALITIES
from mammolens.data.cache import Cache, open_cache
from mammolens.threads import worker_threads

__all__ = ["MammoDataset", "ExamDataset", "exam_sentences", "make_loader", "sample_weights"]


def _modality_codes(values: pd.Series) -> np.ndarray:
    lut = {m.lower(): i for i, m in enumerate(MODALITIES)}
    return np.array([lut.get(str(v).strip().lower(), -1) for v in values.fillna("")], dtype=np.int64)


class MammoDataset(Dataset):
    """Samples of a cache for one task.

    Args:
        cache: an opened ``Cache`` or its folder.
        task: a ``mammolens.tasks.Task``, a task name, or any object with ``label_column`` and
            ``encode(values) -> int array`` (-1 = unlabelled). None: every label is -1.
        rows: cache rows to use (default all rows whose status is ``done``).
        filter: keep only index rows for which this returns True (``f(index_df) -> bool mask``),
            applied after ``rows``; e.g. ``lambda d: d["modality"] == "DM"``.
        drop_unlabelled: drop rows whose label is -1.
    """

    def __init__(
        self,
        cache: Cache | str | PathLike,
        task: Any = None,
        rows: Sequence[int] | np.ndarray | None = None,
        filter: Callable[[pd.DataFrame], Any] | None = None,  # noqa: A002 — the contract's name
        drop_unlabelled: bool = False,
    ):
        self.cache = cache if isinstance(cache, Cache) else open_cache(cache)
        if isinstance(task, str):
            from mammolens.tasks import get_task

            task = get_task(task)
        self.task = task
        index = self.cache.index
        ok = (index["status"] == "done").to_numpy() if "status" in index else np.ones(len(index), bool)
        if rows is None:
            rows_arr = np.flatnonzero(ok)
        else:
            rows_arr = np.asarray(rows, dtype=np.int64).ravel()
            if rows_arr.size and (rows_arr.min() < 0 or rows_arr.max() >= len(index)):
                raise IndexError(f"rows must be cache rows in [0, {len(index)}), got {rows_arr.min()}..{rows_arr.max()}")
            bad = rows_arr[~ok[rows_arr]]
            if bad.size:
                raise ValueError(
                    f"{bad.size} requested row(s) failed preprocessing (e.g. row {int(bad[0])}: "
                    f"{index['error'].iat[int(bad[0])]!r}); see {self.cache.path / 'errors.csv'}"
                )
        if filter is not None:
            keep = np.asarray(filter(index.iloc[rows_arr]), dtype=bool)
            if keep.shape != rows_arr.shape:
                raise ValueError(f"filter must return one bool per row ({rows_arr.size}), got shape {keep.shape}")
            rows_arr = rows_arr[keep]
        if task is None:
            labels = np.full(len(index), -1, dtype=np.int64)
        else:
            col = task.label_column
            if col not in index.columns:
                raise KeyError(
                    f"task {getattr(task, 'name', '')!r} needs column {col!r}, which the cache index "
                    f"({self.cache.path}) lacks; columns: {list(index.columns)}"
                )
            labels = np.asarray(task.encode(index[col]), dtype=np.int64)
        if drop_unlabelled:
            rows_arr = rows_arr[labels[rows_arr] >= 0]
        self.rows = rows_arr
        self.labels_all = labels
        self.modality_all = _modality_codes(index["modality"]) if "modality" in index else np.full(len(index), -1)

    @property
    def labels(self) -> np.ndarray:
        """Labels of this dataset's samples, in sample order ``[len(self)]``."""
        return self.labels_all[self.rows]

    @property
    def modalities(self) -> np.ndarray:
        return self.modality_all[self.rows]

    @property
    def frame(self) -> pd.DataFrame:
        """The index rows of this dataset's samples, in sample order."""
        return self.cache.index.iloc[self.rows]

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        img = torch.from_numpy(np.array(self.cache.images[r], dtype=np.float32))  # [S, S]
        img.mul_(1.0 / 65535.0)
        return {
            KEY_IMAGE: img.unsqueeze(0),  # [1, S, S]
            KEY_LABEL: torch.tensor(self.labels_all[r], dtype=torch.int64),
            KEY_INDEX: r,
            KEY_MODALITY: int(self.modality_all[r]),
        }


SENTENCE_SIDES = ("L", "R", "B", "")  # codes 0..3 of ``sentence_side`` in exam batches
_LATERALITY_CODES = {"L": 0, "R": 1}


def exam_sentences(texts: Sequence[object], laterality: Sequence[int] | np.ndarray) -> list[tuple[str, str]]:
    """The sentences of one exam, with their sides, from the report text of each of its rows.

    Every distinct text of the exam's rows is split (``reports.split_sentences``) and its sentences kept in
    row order, each ``(text, side)`` pair once. A sentence's side is what it names ("L", "R", "B") or, when
    it names none, that of its report if the report is a per-breast one: a text found only on rows of one
    known laterality while the exam's rows carry more than one distinct text (mini-MIAS writes one report
    per film, so "Background tissue is fatty." in the left film's report is about the left breast). A text
    shared by both breasts' rows keeps its side-less sentences at the exam level ("").

    Args:
        texts: the report cell of each row (NaN / empty: no text).
        laterality: ``[R]`` 0 L, 1 R, -1 unknown, per row.

    Returns:
        ``[(sentence, side)]`` with side one of ``SENTENCE_SIDES``.
    """
    from mammolens.reports import split_sentences

    lat = np.asarray(laterality, dtype=np.int64)
    where: dict[str, set[int]] = {}
    for t, side in zip(texts, lat):
        if t is None or (isinstance(t, float) and np.isnan(t)) or not str(t).strip():
            continue
        where.setdefault(str(t), set()).add(int(side))
    per_breast = len(where) > 1
    out: dict[tuple[str, str], None] = {}
    for text, sides in where.items():
        own = "LR"[next(iter(sides))] if per_breast and len(sides) == 1 and -1 not in sides else ""
        for s in split_sentences(text):
            out[(s.text, s.side or own)] = None
    return list(out)


class ExamDataset(Dataset):
    """Exams of an image dataset: all views of one exam and its report's sentences (report training).

    A sample is ``{"image": [V, 1, S, S], "label": [V], "modality": [V], "laterality": [V] (0 L, 1 R,
    -1 unknown), "index": [V], "sentences": list[str], "sentence_side": [M] (index into
    ``SENTENCE_SIDES``)}``; V is 1..``max_views`` (views missing from an exam are simply absent). The
    sentences are those of every report row of the exam (:func:`exam_sentences`): a report written on one
    breast's rows only (mini-MIAS: one report per film) is about that breast.
    :meth:`collate` puts exams of different sizes into one flat batch (see there).

    Args:
        images: the ``MammoDataset`` whose rows are grouped; an exam is one ``(patient_id, study_id)``.
        report_column: the index column holding the report text: one text repeated on the exam's views, or
            one text per view or breast (see :func:`exam_sentences` for how they combine).
        max_views: at most this many views per exam (in laterality, view, modality order).
        max_sentences: at most this many sentences per report (memory; the rest are dropped).
        tokenize: the text tower's tokenizer (``list[str] -> [M, L]``); samples then also carry
            ``sentence_tokens`` (tokenised in the loader's workers, not in the training step).

    Raises:
        ValueError: a column is missing (the message names it and how to add it).
    """

    def __init__(self, images: MammoDataset, report_column: str = "report", max_views: int = 8,
                 max_sentences: int = 32, tokenize: Callable[[list[str]], torch.Tensor] | None = None):
        frame = images.frame
        missing = [c for c in ("patient_id", "study_id", report_column) if c not in frame.columns]
        if missing:
            raise ValueError(f"exam batches need the index column(s) {missing}, which {images.cache.path} lacks; "
                             f"write reports into the manifest's {report_column!r} column (one text per exam, "
                             "repeated on its views) and preprocess again, or set data.report_column")
        if max_views < 1 or max_sentences < 1:
            raise ValueError(f"max_views and max_sentences must be >= 1, got {max_views} and {max_sentences}")
        self.images, self.tokenize = images, tokenize
        order = frame.assign(_pos=np.arange(len(frame))).sort_values(
            ["patient_id", "study_id", "laterality", "view", "modality"], kind="stable")
        lat_all = frame["laterality"].astype(str).str.upper() if "laterality" in frame else pd.Series([""] * len(frame))
        self.laterality = np.array([_LATERALITY_CODES.get(v, -1) for v in lat_all], dtype=np.int64)
        self.exams: list[np.ndarray] = []
        self.sentences: list[list[str]] = []
        self.sides: list[list[int]] = []
        for _, group in order.groupby(["patient_id", "study_id"], sort=False):
            pos = group["_pos"].to_numpy()
            self.exams.append(pos[:max_views])
            sents = exam_sentences(group[report_column].tolist(), self.laterality[pos])[:max_sentences]
            self.sentences.append([t for t, _ in sents])
            self.sides.append([SENTENCE_SIDES.index(side) for _, side in sents])

    def __len__(self) -> int:
        return len(self.exams)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pos = self.exams[i]
        views = [self.images[int(j)] for j in pos]
        return {
            KEY_IMAGE: torch.stack([v[KEY_IMAGE] for v in views]),  # [V, 1, S, S]
            KEY_LABEL: torch.stack([v[KEY_LABEL] for v in views]),  # [V]
            KEY_MODALITY: torch.tensor([v[KEY_MODALITY] for v in views], dtype=torch.int64),
            KEY_INDEX: torch.tensor([v[KEY_INDEX] for v in views], dtype=torch.int64),
            "laterality": torch.from_numpy(self.laterality[pos]),
            "sentences": list(self.sentences[i]),
            "sentence_side": torch.tensor(self.sides[i], dtype=torch.int64),
            **({} if self.tokenize is None else {"sentence_tokens": self._tokens(self.sentences[i])}),
        }

    def _tokens(self, sentences: list[str]) -> torch.Tensor:
        if sentences:
            return self.tokenize(sentences)  # [M, L], each sentence truncated on its own
        return self.tokenize([""])[:0]  # [0, L]: an exam without report text

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        """Exams → one flat batch of their N views and M sentences.

        Returns:
            ``image [N, 1, S, S]``, ``label [N]``, ``modality [N]``, ``index [N]``, ``laterality [N]``,
            ``view_exam [N]`` (exam of each view, 0..E-1), ``exam_views [E]`` (views per exam),
            ``sentences`` (M strings), ``sentence_exam [M]``, ``sentence_side [M]`` and, with a tokenizer,
            ``sentence_tokens [M, L]``.
        """
        keys = (KEY_IMAGE, KEY_LABEL, KEY_MODALITY, KEY_INDEX, "laterality", "sentence_side", "sentence_tokens")
        out: dict[str, Any] = {k: torch.cat([it[k] for it in items]) for k in keys if k in items[0]}
        counts = torch.tensor([len(it[KEY_LABEL]) for it in items], dtype=torch.int64)
        out["exam_views"] = counts
        out["view_exam"] = torch.repeat_interleave(torch.arange(len(items)), counts)
        out["sentences"] = [s for it in items for s in it["sentences"]]
        out["sentence_exam"] = torch.repeat_interleave(
            torch.arange(len(items)), torch.tensor([len(it["sentences"]) for it in items], dtype=torch.int64))
        return out


def sample_weights(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Per-sample weights ``1 / count(class)`` (unlabelled samples get weight 0) for a balanced sampler."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(num_classes if num_classes is not None else (labels.max() + 1 if labels.size else 0))
    counts = np.bincount(labels[labels >= 0], minlength=k).astype(np.float64)
    w = np.zeros(labels.shape, dtype=np.float64)
    lab = labels >= 0
    w[lab] = 1.0 / counts[labels[lab]]
    return w


def _seed_worker(worker_id: int) -> None:
    worker_threads(worker_id)  # n workers x n cores threads would oversubscribe a shared CPU
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    shuffle: bool = False,
    workers: int = 0,
    pin_memory: bool | None = None,
    drop_last: bool = False,
    seed: int = 0,
    balanced: bool = False,
    num_samples: int | None = None,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """A DataLoader with sensible defaults for a cache-backed dataset.

    Args:
        dataset: usually a ``MammoDataset``.
        batch_size, shuffle, drop_last: as in ``DataLoader``.
        workers: worker processes (each opens the memmap itself).
        pin_memory: default True when CUDA is available.
        seed: seeds the shuffling/sampling generator (reproducible order).
        balanced: draw with a ``WeightedRandomSampler`` (weights 1/class frequency; needs
            ``dataset.labels``); replaces ``shuffle``.
        num_samples: samples per epoch for the balanced sampler (default ``len(dataset)``).
        persistent_workers: default True when ``workers > 0``.
    """
    g = torch.Generator()
    g.manual_seed(int(seed))
    sampler = None
    if balanced:
        labels = getattr(dataset, "labels", None)
        if labels is None:
            raise ValueError("balanced=True needs a dataset with a .labels array (e.g. MammoDataset)")
        w = sample_weights(np.asarray(labels))
        if not (w > 0).any():
            raise ValueError("balanced=True but no sample has a label")
        sampler = WeightedRandomSampler(
            torch.as_tensor(w, dtype=torch.double), num_samples or len(dataset), replacement=True, generator=g
        )
        shuffle = False
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=g,
        worker_init_fn=_seed_worker if workers > 0 else None,
        persistent_workers=persistent_workers,
    )

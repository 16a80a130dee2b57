"""Tests of mammolens.data.fuzz, and the reader run over its corpus (issue 10: hostile files)."""

import hashlib
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mammolens.data.fuzz import EXPECTS, make_fuzz_corpus
from mammolens.io import ImageReadError, read_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_fuzz_corpus(tmp_path_factory.mktemp("fuzz"), n=200, seed=0)


def test_make_fuzz_corpus_rows_and_kinds(corpus):
    assert len(corpus) == 200 + (corpus["mutation"] == "none").sum()
    assert set(corpus["expect"]) <= set(EXPECTS) and corpus["path"].map(lambda p: Path(p).is_file()).all()
    kinds = set(corpus["mutation"])
    for kind in ("rows_zero", "slope_nan", "window_width_inf", "pixel_data_short", "ts_jpeg2000_as_jpeg_baseline",
                 "png_bomb_13000", "rows_columns_65535", "truncate", "pixel_flip"):
        assert kind in kinds
    src = corpus[corpus["mutation"] == "none"]
    assert len(src) >= 10 and (src["expect"] == "ok").all() and (src["rows"] == 48).all()


def test_make_fuzz_corpus_deterministic(tmp_path):
    def digest(df):
        return [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in df["path"][df["mutation"] != "none"]]

    a = make_fuzz_corpus(tmp_path / "a", n=40, seed=3, sources=None)
    b = make_fuzz_corpus(tmp_path / "b", n=40, seed=3)
    assert list(a["mutation"]) == list(b["mutation"]) and digest(a) == digest(b)


def test_read_image_over_fuzz_corpus_only_images_or_image_read_errors(corpus):
    """Every outcome is a finite [0, 1] image of the declared size or an ImageReadError; no other exception."""
    tracemalloc.start()
    t = time.perf_counter()
    failures = []
    for row in corpus.to_dict("records"):
        try:
            img = read_image(row["path"])
        except ImageReadError as exc:
            assert exc.path == row["path"]
            if row["expect"] == "ok":
                failures.append((row["mutation"], row["path"], str(exc)))
            continue
        except BaseException as exc:  # noqa: BLE001 - exactly what must not happen
            failures.append((row["mutation"], row["path"], f"{type(exc).__name__}: {exc}"))
            continue
        px = img.pixels
        if row["expect"] == "error":
            failures.append((row["mutation"], row["path"], "read although it must be refused"))
        elif not (np.isfinite(px).all() and px.min() >= 0 and px.max() <= 1 and px.shape[-2:] == (row["rows"], row["columns"])):
            failures.append((row["mutation"], row["path"], f"wrong image {px.shape}"))
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert failures == []
    assert elapsed < 60 and peak < 256 * 2**20  # no hang; the bombs are refused before allocating

"""Issue 19's one read path: ``read_dicom(lazy=True)`` (stored values + value table), the band-by-band reduced
copy, the OpenCV table lookup and the source reference carried in the read meta."""

import numpy as np
import pytest

from mammolens.data.synthetic import write_dicom
from mammolens.io import read_image
from mammolens.io import dicom as D
from mammolens.io.dicom import StoredImage, read_dicom
from mammolens.io.dicom_out import read_source_reference
from mammolens.transforms.breast import block_mean, reduce_image


def _breastish(h: int, w: int, seed: int = 0, hi: int = 4095) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    body = np.exp(-(((yy - h / 2) / (0.4 * h)) ** 2 + (xx / (0.7 * w)) ** 2))
    return np.clip(body * 0.8 * hi + rng.normal(0, 0.02 * hi, (h, w)), 0, hi).astype(np.uint16)


@pytest.mark.parametrize("kw", [dict(window=(2048, 3000)), dict(window=(1500, 2500), photometric="MONOCHROME1"),
                                dict(sop_class="dm_processing"), dict()])
def test_lazy_read_is_the_eager_image_and_reduces_bit_identically(tmp_path, kw):
    # 1001 x 907: neither side a multiple of the factors, so the dropped remainder rows/columns are exercised
    path = write_dicom(tmp_path / "a.dcm", _breastish(1001, 907), bits_stored=12, laterality="L", view="CC", **kw)
    eager, lazy = read_dicom(path), read_dicom(path, lazy=True)
    assert isinstance(lazy, StoredImage) and lazy._pixels is None and lazy.shape == eager.shape
    assert lazy.conversion == eager.conversion and lazy.meta == eager.meta
    for size in (64, 100, 224, 600):  # 600: factor 1, the working copy is the image itself
        a, b = reduce_image(eager.pixels, size), reduce_image(lazy, size)
        assert (a.scale, a.orig_shape) == (b.scale, b.orig_shape)
        assert a.work.dtype == b.work.dtype == np.float32 and np.array_equal(a.work, b.work), size
        if size == 224:
            assert lazy._pixels is None  # reducing never made the full-resolution float32 image
    assert np.array_equal(lazy.pixels, eager.pixels) and lazy.pixels.dtype == np.float32


def test_lazy_read_falls_back_to_an_eager_image_where_no_table_applies(tmp_path):
    frames = np.stack([_breastish(40, 30, k) for k in range(4)])
    dbt = write_dicom(tmp_path / "dbt.dcm", frames, sop_class="dbt", bits_stored=12, window=(2048, 4096))
    img = read_dicom(dbt, lazy=True)
    assert not isinstance(img, StoredImage) and np.array_equal(img.pixels, read_dicom(dbt).pixels)
    frame = read_dicom(dbt, lazy=True, frame=1)  # one frame of a stack: not the native single-frame layout
    assert np.array_equal(np.asarray(frame.pixels), read_dicom(dbt, frame=1).pixels)


def test_gather_opencv_and_numpy_agree(monkeypatch):
    rng = np.random.default_rng(1)
    table = rng.random(65536, dtype=np.float32)
    raw = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    fast = D._gather(table, raw)
    monkeypatch.setattr(D, "_CV2", [None])  # no OpenCV: numpy's blocked take
    slow = D._gather(table, raw)
    assert np.array_equal(fast, table[raw]) and np.array_equal(slow, table[raw])
    t8 = rng.random(256, dtype=np.float32)
    r8 = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    assert np.array_equal(D._gather(t8, r8), t8[r8])


def test_read_meta_carries_the_source_reference(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", _breastish(64, 48), bits_stored=12, laterality="R", view="MLO",
                       window=(2048, 4096))
    ref = read_image(path).meta["source_reference"]
    assert ref == read_source_reference(path) and ref["ImageLaterality"] == "R" and ref.get("SOPInstanceUID")


def test_reduce_bands_matches_block_mean_on_any_band_height():
    from mammolens.transforms import breast

    rng = np.random.default_rng(2)
    table = rng.random(4096, dtype=np.float32)
    raw = rng.integers(0, 4096, (517, 463), dtype=np.uint16)
    img = StoredImage(raw, np.pad(table, (0, 65536 - 4096)), meta={}, conversion={})
    want = block_mean(np.pad(table, (0, 65536 - 4096))[raw], 463 // (2 * 64))
    for rows in (1, 7, 48, 1000):
        breast._BAND_ROWS = rows
        try:
            got = reduce_image(img, 64).work
        finally:
            breast._BAND_ROWS = 48
        assert np.array_equal(got, want), rows

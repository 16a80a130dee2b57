import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from mammolens.constants import MODALITIES
from mammolens.data.cache import PreprocessCfg, build_cache, open_cache
from mammolens.transforms.quality import QualityCfg
from mammolens.data.dataset import MammoDataset, make_loader, sample_weights

S = 16


class DensityTask:  # the duck-typed task interface: label_column + encode
    label_column = "density"
    name = "density"

    def encode(self, values):
        lut = {c: i for i, c in enumerate("ABCD")}
        return np.array([lut.get(str(v), -1) for v in values], dtype=np.int64)


def array_reader(path, **kw):
    """Tests' picklable reader: the file name's number sets a flat grey level; 'bad' files fail."""
    if "bad" in str(path):
        raise ValueError(f"{path}: unreadable")
    k = int(str(path).rsplit("_", 1)[1])
    return np.full((20, 20), (k + 1) / 10, dtype=np.float32)


@pytest.fixture()
def cache(tmp_path):
    df = pd.DataFrame({
        "image_path": [f"img_{i}" for i in range(6)] + ["bad_9"],
        "patient_id": list("aabbccd"), "study_id": list("aabbccd"), "laterality": ["L"] * 7, "view": ["CC"] * 7,
        "modality": ["DM", "s2D", "DBT", "DM", "", "DM", "DM"], "manufacturer": ["X"] * 7,
        "density": ["A", "B", "", "D", "A", "A", "C"],
    })
    cfg = PreprocessCfg(size=S, crop=False, mask_background=False, flip="none")
    # flat 20x20 test images: the quality gate would refuse them all, and is not what these tests are about
    return open_cache(build_cache(df, tmp_path / "c", cfg, workers=0, progress=False, reader=array_reader,
                                  quality=QualityCfg(enabled=False)))


def test_mammo_dataset_sample_contract(cache):
    ds = MammoDataset(cache, DensityTask())
    assert len(ds) == 6  # the failed row is left out
    s = ds[3]
    assert set(s) == {"image", "label", "index", "modality"}
    assert s["image"].shape == (1, S, S) and s["image"].dtype == torch.float32
    torch.testing.assert_close(s["image"], torch.full((1, S, S), 0.4), atol=1e-4, rtol=0)
    assert s["label"].dtype == torch.int64 and int(s["label"]) == 3
    assert s["index"] == 3 and s["modality"] == MODALITIES.index("DM")
    assert int(ds[2]["label"]) == -1 and ds[1]["modality"] == MODALITIES.index("s2D")
    assert ds[4]["modality"] == -1
    np.testing.assert_array_equal(ds.labels, [0, 1, -1, 3, 0, 0])


def test_mammo_dataset_rows_filter_and_unlabelled(cache):
    ds = MammoDataset(cache, DensityTask(), rows=[5, 0, 2], filter=lambda d: d["modality"] != "DBT")
    assert [ds[i]["index"] for i in range(len(ds))] == [5, 0]
    assert len(MammoDataset(cache, DensityTask(), drop_unlabelled=True)) == 5
    with pytest.raises(ValueError, match="failed preprocessing"):
        MammoDataset(cache, DensityTask(), rows=[6])
    with pytest.raises(IndexError):
        MammoDataset(cache, DensityTask(), rows=[99])


def test_mammo_dataset_missing_label_column(cache):
    class T:
        label_column, name = "nope", "t"

        def encode(self, v):
            return np.zeros(len(v), int)

    with pytest.raises(KeyError, match="nope"):
        MammoDataset(cache, T())


def test_mammo_dataset_with_registered_task(cache):
    pytest.importorskip("mammolens.tasks")
    ds = MammoDataset(cache.path, "density")
    assert ds.task.name == "density"
    np.testing.assert_array_equal(ds.labels, [0, 1, -1, 3, 0, 0])


def test_mammo_dataset_pickles_small_and_loads_in_workers(cache):
    ds = MammoDataset(cache, DensityTask())
    _ = ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 50_000  # no image data travels to workers
    loader = make_loader(ds, batch_size=4, workers=2, shuffle=False)
    batches = list(loader)
    assert batches[0]["image"].shape == (4, 1, S, S)
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3, 4, 5]


def test_make_loader_seeded_shuffle_is_reproducible(cache):
    ds = MammoDataset(cache, DensityTask())
    order = lambda seed: torch.cat([b["index"] for b in make_loader(ds, 2, shuffle=True, seed=seed)]).tolist()
    assert order(3) == order(3) and sorted(order(3)) == [0, 1, 2, 3, 4, 5]


def test_make_loader_balanced_sampler_draws_classes_evenly(cache):
    ds = MammoDataset(cache, DensityTask())
    loader = make_loader(ds, batch_size=100, balanced=True, num_samples=3000, seed=0)
    labels = torch.cat([b["label"] for b in loader]).numpy()
    counts = np.bincount(labels[labels >= 0], minlength=4)
    assert (labels >= 0).all()  # unlabelled rows get weight 0
    assert counts[2] == 0 and all(abs(c / 3000 - 1 / 3) < 0.05 for c in counts[[0, 1, 3]])


def test_sample_weights_inverse_frequency():
    np.testing.assert_allclose(sample_weights(np.array([0, 0, 1, -1])), [0.5, 0.5, 1.0, 0.0])

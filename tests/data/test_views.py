"""data/views.py: crops inside the breast with a minimum tissue fraction, exact crop geometry, intensity in [0, 1]."""

import numpy as np
import torch

from mammolens.data.views import (
    MultiCropViews,
    ViewCfg,
    ViewSource,
    crop_resize,
    jitter_intensity,
    sample_boxes,
    tissue_fraction,
)


def _half_breast(b=4, h=40, w=60):
    """Breast = the left 20 columns of rows 10..29: 400 of 2400 pixels (a sixth of the image)."""
    m = torch.zeros(b, h, w, dtype=torch.bool)
    m[:, 10:30, :20] = True
    return m


def test_tissue_fraction_by_hand():
    m = _half_breast(1)
    boxes = torch.tensor([[[10, 0, 20, 20], [10, 10, 20, 20], [0, 40, 10, 10]]])  # all, half, none
    assert torch.allclose(tissue_fraction(m, boxes), torch.tensor([[1.0, 0.5, 0.0]]))


def test_boxes_stay_in_the_breast_and_hold_the_minimum_tissue():
    torch.manual_seed(0)
    m = _half_breast()
    for scale, min_tissue in (((0.95, 1.0), 0.9), ((0.2, 0.6), 0.3)):
        boxes = sample_boxes(m, 8, scale, min_tissue=min_tissue)
        y0, x0, h, w = boxes.unbind(-1)
        assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + h <= 40).all() and (x0 + w <= 60).all()
        assert (tissue_fraction(m, boxes) >= min_tissue).all()
        area = (h * w).float() / 400  # of the breast's bounding box
        assert (area > scale[0] * 0.7).all() and (area < scale[1] * 1.3).all()


def test_global_crops_cover_the_breast_not_the_background():
    """Without the mask a whole-image crop would be five sixths air; inside the mask it is breast."""
    torch.manual_seed(1)
    m = _half_breast()
    boxes = sample_boxes(m, 4, (0.95, 1.0), min_tissue=0.3)
    assert tissue_fraction(m, boxes).mean() > 0.9
    assert tissue_fraction(m, torch.tensor([[[0, 0, 40, 60]]] * 4)).mean() < 0.2


def test_crop_resize_is_the_exact_crop_at_the_same_size():
    img = torch.arange(40 * 60, dtype=torch.float32).view(1, 1, 40, 60) / 2400
    box = torch.tensor([[[10, 5, 16, 16]]])
    assert torch.allclose(crop_resize(img, box, 16)[0, 0, 0], img[0, 0, 10:26, 5:21], atol=1e-6)
    half = crop_resize(img, box, 8)[0, 0, 0]  # downsampled by two: the mean of each 2 x 2 block
    assert torch.allclose(half, img[0, 0, 10:26, 5:21].reshape(8, 2, 8, 2).mean((1, 3)), atol=1e-5)


def test_jitter_keeps_zero_background_and_stays_in_range():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 24, 24)
    x[:, :, :, :6] = 0.0
    y = jitter_intensity(x, ViewCfg(brightness=0.5, contrast=0.5, gamma=0.5, blur_p=1.0, noise=0.1))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert (y[:, :, :, :6] == 0).all()  # padding and air stay black
    assert not torch.allclose(y[:, :, :, 6:], x[:, :, :, 6:])


def test_multicrop_views_shapes_and_same_draws_under_the_same_seed():
    views = MultiCropViews(ViewCfg(global_size=32, local_size=16, local_crops=3))
    img, m = torch.rand(2, 1, 40, 60), _half_breast(2)[:, None]
    torch.manual_seed(5)
    a = views(img, m)
    torch.manual_seed(5)
    b = views(img, m)
    assert [t.shape for t in a["global"]] == [(2, 1, 32, 32)] * 2 and [t.shape for t in a["local"]] == [(2, 1, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a["global"] + a["local"], b["global"] + b["local"]))


def test_view_source_adds_the_breast_mask():
    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            img = np.zeros((1, 64, 64), np.float32)
            img[0, 8:56, :30] = 0.6  # a breast on the left
            return {"image": torch.from_numpy(img), "label": torch.tensor(0)}

    s = ViewSource(One())[0]
    assert s["mask"].dtype == torch.uint8 and s["mask"].shape == (1, 64, 64) and s["tile"] is s["image"]
    assert s["mask"][0, 30, 10] == 1 and s["mask"][0, 30, 50] == 0

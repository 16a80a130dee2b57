import pytest
import torch

from mammolens.transforms.augment import AugmentCfg, GpuAugment


def _batch(b=4, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, s, s, generator=g)
    x[..., :, s // 2 :] = 0.0  # black background on the right like a cached mammogram
    return x


def test_gpu_augment_keeps_shape_range_and_dtype():
    aug = GpuAugment(erase_p=1.0, generator=torch.Generator().manual_seed(0)).train()
    x = _batch()
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.allclose(y, x)
    assert aug(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_gpu_augment_eval_is_identity():
    aug = GpuAugment().eval()
    x = _batch()
    assert aug(x) is x


def test_gpu_augment_reproducible_with_generator_and_seed_dependent():
    x = _batch()
    a = GpuAugment(generator=torch.Generator().manual_seed(1))(x)
    b = GpuAugment(generator=torch.Generator().manual_seed(1))(x)
    c = GpuAugment(generator=torch.Generator().manual_seed(2))(x)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3


def test_gpu_augment_all_off_is_identity_in_train():
    cfg = AugmentCfg(rotate=0, scale=(1.0, 1.0), translate=0, brightness=0, contrast=0, gamma=0, erase_p=0)
    x = _batch()
    torch.testing.assert_close(GpuAugment(cfg).train()(x), x, atol=1e-5, rtol=0)


def test_gpu_augment_p_zero_leaves_batch_unchanged():
    x = _batch()
    torch.testing.assert_close(GpuAugment(p=0.0)(x), x)


def test_gpu_augment_pure_rotation_by_small_angle_moves_little():
    # rotation only, at most 2 degrees: the smooth image barely changes; a shift of 5 % changes it more
    s = 64
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    x = ((yy + xx) / 2).expand(2, 1, s, s).contiguous()
    off = dict(brightness=0, contrast=0, gamma=0, erase_p=0, scale=(1.0, 1.0))
    rot = GpuAugment(rotate=2, translate=0, generator=torch.Generator().manual_seed(0), **off)(x)
    inner = slice(8, -8)
    assert (rot - x)[..., inner, inner].abs().max() < 0.03


def test_gpu_augment_erasing_zeroes_a_rectangle():
    x = torch.ones(2, 1, 40, 40)
    off = dict(rotate=0, scale=(1.0, 1.0), translate=0, brightness=0, contrast=0, gamma=0)
    y = GpuAugment(erase_p=1.0, generator=torch.Generator().manual_seed(0), **off)(x)
    frac = (y == 0).float().mean(dim=(1, 2, 3))
    assert torch.all(frac > 0.01) and torch.all(frac < 0.15)


def test_gpu_augment_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        GpuAugment()(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="scale"):
        GpuAugment(scale=(1.2, 1.0))

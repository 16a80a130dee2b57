"""Image transforms: pure numpy geometry (``breast``) and GPU-side batch augmentation (``augment``)."""

from mammolens.transforms.breast import (
    breast_mask,
    breast_side,
    crop_to_mask,
    flip_to_left,
    mask_bbox,
    otsu_threshold,
    preprocess_image,
    resize_pad,
)


def __getattr__(name):  # lazy: augment imports torch
    if name == "GpuAugment":
        from mammolens.transforms.augment import GpuAugment

        return GpuAugment
    raise AttributeError(f"module 'mammolens.transforms' has no attribute {name!r}")


__all__ = [
    "GpuAugment",
    "breast_mask",
    "breast_side",
    "crop_to_mask",
    "flip_to_left",
    "mask_bbox",
    "otsu_threshold",
    "preprocess_image",
    "resize_pad",
]

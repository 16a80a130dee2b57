"""The picture in docs/pretraining.md: global and local crops that ``data.views.MultiCropViews`` draws inside the
breast (boxes on the tile, and the crops themselves after intensity jitter).

Example::

    python experiments/pretrain_views_figure.py --out docs/images/pretrain_views.png
    python experiments/pretrain_views_figure.py --cache /tmp/mias_cache --out /tmp/mias_views.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/images/pretrain_views.png")
    ap.add_argument("--cache", default=None, help="a cache folder (default: a 4-patient synthetic cohort at 256 px)")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle

    from mammolens.data.cache import PreprocessCfg, build_cache, open_cache
    from mammolens.data.views import MultiCropViews, ViewCfg, breast_masks

    if args.cache is None:
        from mammolens.data.synthetic import make_cohort

        tmp = Path(tempfile.mkdtemp())
        make_cohort(tmp, n_patients=4, seed=1, image_size=(320, 256), modalities=("DM",), lesion_prob=0.6)
        build_cache(tmp / "manifest.parquet", tmp / "cache", PreprocessCfg(size=256), workers=0, progress=False)
        args.cache = tmp / "cache"
    cache = open_cache(args.cache)
    rows = np.linspace(0, len(cache.index) - 1, args.images).round().astype(int)
    tiles = np.stack([cache.get(int(r)) for r in rows]).astype(np.float32)  # [B, S, S] in [0, 1]
    masks = breast_masks(tiles)
    cfg = ViewCfg(global_size=224, local_size=96, local_crops=4)
    torch.manual_seed(args.seed)
    v = MultiCropViews(cfg)(torch.from_numpy(tiles)[:, None], torch.from_numpy(masks)[:, None])
    n_cols = 1 + cfg.global_crops + cfg.local_crops
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.9 * n_cols, 2.0 * len(rows)), squeeze=False)
    for i in range(len(rows)):
        ax = axes[i, 0]
        ax.imshow(tiles[i], cmap="gray", vmin=0, vmax=1)
        ax.contour(masks[i], levels=[0.5], colors="yellow", linewidths=0.6)
        for kind, color in (("global", "cyan"), ("local", "magenta")):
            for box in v[f"{kind}_boxes"]:
                y0, x0, h, w = (int(t) for t in box[i])
                ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor=color, linewidth=0.8))
        ax.set_title("tile, mask, boxes" if i == 0 else "", fontsize=7)
        crops = [("global", c[i, 0]) for c in v["global"]] + [("local", c[i, 0]) for c in v["local"]]
        for j, (kind, crop) in enumerate(crops, start=1):
            axes[i, j].imshow(crop.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_title(f"{kind} {crop.shape[-1]} px" if i == 0 else "", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("data.views: global crops (cyan) cover the breast; local crops (magenta) hold >= 30 % tissue",
                 fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    print(out)
    return out


if __name__ == "__main__":
    main()

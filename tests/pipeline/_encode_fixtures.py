"""One small run on a cache of another size, shared by tests/pipeline (built once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

_BUILT: dict[str, object] = {}


@dataclass(frozen=True)
class EncodeEnv:
    root: Path
    manifest: Path
    cache: Path  # 96 px
    run: Path  # tiny-clip at 64 px, contrastive, 1 epoch
    files: list[Path]


def _train_cfg(cache: Path, out: Path, **kw):
    from mammolens.train.config import cfg_from_dict

    base = {"data": {"cache": str(cache), "val_frac": 0.34}, "task": "density", "model": "tiny-clip", "image_size": 64,
            "method": "contrastive", "epochs": 1, "batch_size": 8, "lr": 1e-3, "precision": "fp32", "augment": False,
            "workers": 0, "seed": 0, "out_dir": str(out), "device": "cpu"}
    base.update(kw)
    return cfg_from_dict(base)


@pytest.fixture(scope="session")
def encode_env(tmp_path_factory) -> EncodeEnv:
    if "env" not in _BUILT:
        from mammolens.data.cache import PreprocessCfg, build_cache
        from mammolens.data.synthetic import make_cohort
        from mammolens.train.loop import train

        root = tmp_path_factory.mktemp("encode_env")
        df = make_cohort(root / "cohort", n_patients=6, seed=1, image_size=(96, 80), density_probs=[0.25] * 4)
        build_cache(root / "cohort" / "manifest.parquet", root / "cache", PreprocessCfg(size=96), workers=0,
                    progress=False)
        run = Path(train(_train_cfg(root / "cache", root / "run"), progress=False))
        files = sorted(root / "cohort" / p for p in df["image_path"])
        _BUILT["env"] = EncodeEnv(root, root / "cohort" / "manifest.parquet", root / "cache", run, files)
    return _BUILT["env"]  # type: ignore[return-value]

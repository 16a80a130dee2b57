"""One tiny trained run shared by the application-layer tests (inference, workflows, CLI, serve).

Built once per session: a 12-patient synthetic DICOM cohort, a 64 px cache and a 2-epoch
``tiny-clip`` run (plus, on demand, a ``zeroshot`` run of the same model for comparisons).
Test modules import the fixtures ``app_env`` / ``zeroshot_run``; the build itself is memoised
here so that several modules importing the fixtures still build everything only once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

_CACHE: dict[str, object] = {}


@dataclass(frozen=True)
class AppEnv:
    """Paths of the shared synthetic cohort, its cache and the tiny trained run."""

    root: Path
    cohort: Path
    manifest: Path
    cache: Path
    run: Path
    df: pd.DataFrame  # the cohort's manifest

    def study_dirs(self) -> list[Path]:
        """Study folders of the cohort's DICOM tree, sorted (each holds the 4 views of one exam)."""
        return sorted({(self.cohort / p).parent for p in self.df["image_path"]})

    def study_files(self, i: int = 0) -> list[Path]:
        return sorted(p for p in self.study_dirs()[i].iterdir() if p.is_file())

    def mammogram_png(self, i: int = 0) -> bytes:
        """The cohort's i-th DICOM read as a mammogram and saved as an 8-bit PNG (no header: a raster input)."""
        import io

        import numpy as np
        from PIL import Image

        from mammolens.io import read_image

        path = self.cohort / self.df["image_path"].iloc[i]
        buf = io.BytesIO()
        Image.fromarray(np.round(read_image(path).pixels * 255).astype(np.uint8)).save(buf, format="PNG")
        return buf.getvalue()


def _train_cfg(cache: Path, out_dir: Path, **kw):
    from mammolens.train.config import TrainCfg

    base = dict(data={"cache": str(cache), "val_frac": 0.25}, model="tiny-clip", image_size=64, epochs=2,
                batch_size=16, lr=1e-3, precision="fp32", augment=False, workers=0, out_dir=str(out_dir))
    base.update(kw)
    return TrainCfg(**base)


def build_app_env(tmp_path_factory) -> AppEnv:
    """Cohort → cache → tiny run, once per session."""
    if "env" not in _CACHE:
        from mammolens.data.cache import PreprocessCfg, build_cache
        from mammolens.data.synthetic import make_cohort
        from mammolens.train.loop import train

        root = tmp_path_factory.mktemp("app_env")
        cohort = root / "cohort"
        df = make_cohort(cohort, n_patients=12, seed=0, image_size=(128, 104), density_probs=[0.25] * 4)
        manifest = cohort / "manifest.parquet"
        cache = root / "cache"
        build_cache(manifest, cache, PreprocessCfg(size=64), workers=0)
        run = Path(train(_train_cfg(cache, root / "run")))
        _CACHE["env"] = AppEnv(root, cohort, manifest, cache, run, df)
    return _CACHE["env"]  # type: ignore[return-value]


def build_zeroshot_run(env: AppEnv) -> Path:
    """A second run (``method="zeroshot"``, same model and preprocessing) for comparisons."""
    if "zeroshot" not in _CACHE:
        from mammolens.train.loop import train

        _CACHE["zeroshot"] = Path(train(_train_cfg(env.cache, env.root / "run_zeroshot", method="zeroshot")))
    return _CACHE["zeroshot"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def app_env(tmp_path_factory) -> AppEnv:
    return build_app_env(tmp_path_factory)


@pytest.fixture(scope="session")
def zeroshot_run(app_env) -> Path:
    return build_zeroshot_run(app_env)

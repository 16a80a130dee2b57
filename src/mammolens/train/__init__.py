"""Training runs: ``TrainCfg``, the loop (contrastive and baselines), run loading, cross-validation.

Heavy imports (torch models, data) happen inside the functions, so ``import mammolens.train`` is cheap.
"""

from mammolens.train.config import DataCfg, MethodCfg, TrainCfg, load_cfg, load_run, save_cfg

__all__ = ["DataCfg", "MethodCfg", "TrainCfg", "load_cfg", "save_cfg", "train", "load_run", "predict_cache",
           "cross_validate", "RunModel"]


def __getattr__(name: str):
    if name in ("train", "predict_cache", "load_checkpoint"):
        from mammolens.train import loop

        return getattr(loop, name)
    if name == "cross_validate":
        from mammolens.train.cv import cross_validate

        return cross_validate
    if name == "RunModel":
        from mammolens.train.baselines import RunModel

        return RunModel
    raise AttributeError(f"module 'mammolens.train' has no attribute {name!r}")

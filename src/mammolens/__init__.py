"""mammolens: vision-language foundation models for mammography."""

from mammolens._version import __version__
from mammolens.threads import passive_openmp_env

passive_openmp_env()  # before anything imports torch: its OpenMP runtime reads this once (see threads.py)
from mammolens.constants import DENSITY_CLASSES, MODALITIES  # noqa: E402  (after the OpenMP setting)


def __getattr__(name):  # lazy: `import mammolens` stays light (no torch until needed)
    if name == "Predictor":
        from mammolens.inference import Predictor

        return Predictor
    if name in ("create_model", "list_models"):
        from mammolens import models

        return getattr(models, name)
    raise AttributeError(f"module 'mammolens' has no attribute {name!r}")


__all__ = ["DENSITY_CLASSES", "MODALITIES", "Predictor", "create_model", "list_models", "__version__"]

"""mammolens: vision-language foundation models for mammography."""

__version__ = "0.1.0"

from mammolens.constants import DENSITY_CLASSES, MODALITIES  # noqa: E402


def __getattr__(name):  # lazy: `import mammolens` stays light (no torch until needed)
    if name == "Predictor":
        from mammolens.inference import Predictor

        return Predictor
    if name in ("create_model", "list_models"):
        from mammolens import models

        return getattr(models, name)
    raise AttributeError(f"module 'mammolens' has no attribute {name!r}")


__all__ = ["DENSITY_CLASSES", "MODALITIES", "Predictor", "create_model", "list_models", "__version__"]

"""Models: registry + ``create_model(name, pretrained=...) -> MammoCLIP``, and classification heads."""

from mammolens.models.factory import (
    BIOMEDCLIP_HUB,
    HashedTokenizer,
    MammoCLIP,
    add_model_config,
    create_model,
    list_models,
    load_model_config,
    parse_model_source,
    save_local_dir,
)
from mammolens.models.heads import ImageClassifier, LinearProbe, MLPHead
from mammolens.models.registry import register_model, registered_models

__all__ = [
    "BIOMEDCLIP_HUB",
    "HashedTokenizer",
    "ImageClassifier",
    "LinearProbe",
    "MLPHead",
    "MammoCLIP",
    "add_model_config",
    "create_model",
    "list_models",
    "load_model_config",
    "parse_model_source",
    "register_model",
    "registered_models",
    "save_local_dir",
]

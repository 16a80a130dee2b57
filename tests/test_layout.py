"""The package's import layout, read from the source with ``ast`` (nothing is imported).

Layer order (CONTRIBUTING.md): constants ← io ← transforms ← data ← models, losses ← train, evaluation,
explain ← inference ← cli, serve. A module may import its own layer or a lower one, never a higher one;
the library never imports the application layer; no module imports another module's private names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "mammolens"

# Top-level module or subpackage of mammolens -> layer (lower numbers sit lower).
LAYERS = {
    "_version": 0, "_optional": 0, "constants": 0, "threads": 0,
    "io": 1, "parallel": 1, "privacy": 1, "csvsafe": 1,
    "transforms": 2, "tasks": 2, "reports": 2,
    "data": 3,
    "models": 4, "losses": 4,
    "run": 4,
    "train": 5, "evaluation": 5, "explain": 5,
    "inference": 6, "search": 6,
    "workflows": 7, "bench": 7, "study": 7, "cli": 7, "serve": 7, "__main__": 7,
    "suite": 7, "node": 7,  # the task suite (issue 24) and the DICOM node (issue 25)
}
# Subpackages whose modules sit at different layers: the dotted key wins over the package's own entry.
SUB_LAYERS = {
    "pipeline": 4,  # the package root loads its names lazily from the modules below
    "pipeline.executor": 1, "pipeline.aggregate": 2, "pipeline.prepare": 3,
    "pipeline.encode": 4, "pipeline.features": 4,
    "train.__main__": 7,  # an entry point (python -m / torchrun -m mammolens.train): runs the cli's train command
}
LAYERS.update({k: v for k, v in SUB_LAYERS.items() if "." not in k})
# the library never imports these:
APPLICATION = {"train", "workflows", "bench", "study", "cli", "serve", "__main__", "suite", "node"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _imports() -> list[tuple[str, int, str, list[str]]]:
    """Every ``mammolens`` import in src (top level, lazy and TYPE_CHECKING alike): (module, line, target, names)."""
    found = []
    for path in sorted(PKG.rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mammolens"):
                found.append((module, node.lineno, node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [(module, node.lineno, a.name, []) for a in node.names if a.name.startswith("mammolens")]
    return found


def _top(module: str) -> str:
    """The layer key of a module: ``pipeline.prepare`` for a module listed in SUB_LAYERS, else its top package."""
    parts = module.split(".")
    if len(parts) > 2 and ".".join(parts[1:3]) in SUB_LAYERS:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else ""


def test_layout_every_module_has_a_layer():
    tops = {_top(_module_name(p)).split(".")[0] for p in PKG.rglob("*.py")} - {""}
    assert tops <= set(LAYERS), f"add {sorted(tops - set(LAYERS))} to LAYERS (and to CONTRIBUTING.md)"


def test_layout_no_private_names_imported_across_modules():
    bad = [f"{m}:{line} imports {name} from {target}" for m, line, target, names in _imports() if target != m
           for name in names if name.startswith("_") and not name.startswith("__")]
    assert bad == []


def test_layout_lower_layers_never_import_higher_ones():
    bad = []
    for module, line, target, _ in _imports():
        src, dst = _top(module), _top(target)
        if not src or not dst or src == dst:
            continue
        layer = {**LAYERS, **SUB_LAYERS}
        if layer[dst] > layer[src] or (dst in APPLICATION and src.split(".")[0] not in APPLICATION):
            bad.append(f"{module}:{line} imports {target}")
    assert bad == []


def test_layout_cache_and_breast_do_not_import_each_other():
    pairs = {(m, t) for m, _, t, _ in _imports()}
    assert ("mammolens.transforms.breast", "mammolens.data.cache") not in pairs
    assert ("mammolens.data.cache", "mammolens.transforms.config") in pairs  # PreprocessCfg below both

    from mammolens.data.cache import PreprocessCfg as FromCache
    from mammolens.transforms.config import PreprocessCfg

    assert FromCache is PreprocessCfg  # the old import path keeps working


def test_layout_version_lives_below_the_package_root():
    from_root = [f"{m}:{line}" for m, line, target, _ in _imports() if target == "mammolens" and m != "mammolens"]
    assert from_root == []  # lower modules read mammolens._version, never the package __init__

    import mammolens
    from mammolens._version import __version__

    assert mammolens.__version__ == __version__
    pyproject = (SRC.parent / "pyproject.toml").read_text(encoding="utf-8")  # tomllib needs Python 3.11
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == __version__


@pytest.mark.parametrize("name", ["check_labels", "check_probs", "dense_indices", "rankdata"])
def test_layout_shared_metric_helpers_are_public(name):
    from mammolens.evaluation import metrics

    assert name in metrics.__all__ and callable(getattr(metrics, name))

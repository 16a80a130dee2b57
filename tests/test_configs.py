"""Every shipped config (configs/*.yaml) loads, says in a comment what it needs that a fresh clone lacks, and
trains one step from a fresh clone once those needs are replaced by overrides onto a tiny simulated cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mammolens.train import load_cfg, train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort

    root = tmp_path_factory.mktemp("configs")
    make_cohort(root, n_patients=8, seed=0, image_size=(64, 64), dbt_frames=2, density_probs=[0.25] * 4)
    return build_cache(root / "manifest.parquet", root / "cache", PreprocessCfg(size=32), workers=0, progress=False)


def _comments(path: Path) -> str:
    return "\n".join(ln for ln in path.read_text().splitlines() if "#" in ln)


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"density_multimodality.yaml", "density_dm_only.yaml", "report_contrastive.yaml",
                                         "tiny_cpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_what_it_needs(path):
    cfg = load_cfg(path)  # unknown keys or bad values raise
    raw = yaml.safe_load(path.read_text())
    notes = _comments(path)
    assert f"configs/{path.name}" in notes, f"{path.name}: say in a comment how it is run"
    needs = []
    data = raw.get("data", {})
    for key in ("cache", "manifest"):
        if data.get(key) and not (ROOT / data[key]).exists():
            needs.append(str(data[key]).rstrip("/"))
    pretrained = str(raw.get("pretrained") or "")
    if pretrained.startswith("local-dir:") and not (ROOT / pretrained.split(":", 1)[1]).exists():
        needs.append(pretrained.split(":", 1)[1])
    if data.get("split_column"):
        needs.append(data["split_column"])
    method = raw.get("method") if isinstance(raw.get("method"), dict) else {}
    teacher = str((method.get("distill") or {}).get("teacher") or "")
    if teacher.startswith("run:") and not (ROOT / teacher[4:]).exists():
        needs.append(teacher[4:])
    for need in needs:  # a path or column a fresh clone does not have: the file says where it comes from
        assert "Needs" in notes and need in notes, f"{path.name}: no comment says what {need!r} is or how to make it"
    assert cfg.out_dir


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_trains_one_step_with_overrides(path, tiny_cache, tmp_path):
    """The config as shipped, with only what a fresh clone lacks (cache, weights) and the size replaced."""
    common = [f"data.cache={tiny_cache}", "model=tiny-clip", "pretrained=null", "image_size=32", "epochs=1",
              "max_steps_per_epoch=1", "batch_size=4", "workers=0", "precision=fp32", "device=cpu",
              "data.val_frac=0.25"]
    extra = []
    method = yaml.safe_load(path.read_text()).get("method")
    if isinstance(method, dict) and (method.get("distill") or {}).get("teacher"):  # a teacher run it needs
        teacher = train(load_cfg(CONFIGS[0].parent / "tiny_cpu.yaml", [*common, f"out_dir={tmp_path / 'teacher'}"]),
                        progress=False)
        extra = [f"method.distill.teacher=run:{teacher}"]
    cfg = load_cfg(path, [*common, f"out_dir={tmp_path / 'run'}", *extra])
    run = train(cfg, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == load_cfg(path).method
    assert (run / "checkpoints" / "last.pt").is_file()

"""The task suite (layer 7): backbones × tasks on frozen features, ranked (``mammolens suite``).

Not ``bench`` (which measures speed). Per backbone (a run folder, ``random:MODEL`` or ``timm:MODEL``) one
feature pass through the one image path's feature cache (``pipeline.features.cache_features``); per task
(``suite.tasks.TASKS``: density, abnormality, lesion-seg, lesion-det, retrieval, vqa) out-of-fold estimates
over patient-grouped folds with patient-bootstrap CIs; one table, ranks and paired tests clustered by
patient (``suite.report``). Resumable: finished (backbone, task) results are files. See docs/suite.md.

API: ``run_suite(backbones, tasks, data, out, *, external=(), folds=3, n_boot=200, seed=0, size=128,
steps=150, resume=True, device="cpu") -> dict``.
"""

from mammolens.suite.core import ALL_TASKS, resolve_backbone, run_suite

__all__ = ["ALL_TASKS", "resolve_backbone", "run_suite"]

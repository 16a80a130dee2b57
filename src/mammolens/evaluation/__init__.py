"""Evaluation: pure metrics, patient-level bootstrap CIs, DeLong/McNemar, subgroups, aggregation, report.

Typical use::

    from mammolens.evaluation import evaluate_predictions, write_report
    result = evaluate_predictions(preds, ["A", "B", "C", "D"], n_boot=1000, seed=0)
    write_report("runs/x/eval", preds, ["A", "B", "C", "D"], result)
"""

from mammolens.pipeline.aggregate import aggregate_breast, aggregate_exam
from mammolens.evaluation.metrics import (
    accuracy,
    balanced_accuracy,
    binary_auc,
    binary_metrics,
    brier_score,
    cohen_kappa,
    compute_metrics,
    confusion_matrix,
    expected_calibration_error,
    macro_auc,
    precision_recall_f1,
    roc_auc_ovr,
    scalar_metrics,
)
from mammolens.evaluation.report import evaluate_predictions, to_jsonable, write_report
from mammolens.evaluation.stats import bootstrap_ci, delong_ci, delong_test, mcnemar_test, metrics_with_ci
from mammolens.evaluation.subgroups import age_band, subgroup_metrics

__all__ = [
    "accuracy",
    "age_band",
    "aggregate_breast",
    "aggregate_exam",
    "balanced_accuracy",
    "binary_auc",
    "binary_metrics",
    "bootstrap_ci",
    "brier_score",
    "cohen_kappa",
    "compute_metrics",
    "confusion_matrix",
    "delong_ci",
    "delong_test",
    "evaluate_predictions",
    "expected_calibration_error",
    "macro_auc",
    "mcnemar_test",
    "metrics_with_ci",
    "precision_recall_f1",
    "roc_auc_ovr",
    "scalar_metrics",
    "subgroup_metrics",
    "to_jsonable",
    "write_report",
]

"""Evaluation metrics for data attribution: LDS (eq. 13) and retraining without top influences."""

from lit_attr.metrics.lds import (
    LinearDatamodelingScore,
    exact_retraining_lds,
    predicted_changes,
    seed_reliability,
    spearman_per_query,
    split_half_reliability,
    subset_bootstrap,
    subset_resamples,
    subsets_to_masks,
)
from lit_attr.metrics.retraining import RetrainingWithoutTopInfluences, random_removal, top_influence_removal

__all__ = [
    "LinearDatamodelingScore",
    "RetrainingWithoutTopInfluences",
    "exact_retraining_lds",
    "predicted_changes",
    "random_removal",
    "seed_reliability",
    "spearman_per_query",
    "split_half_reliability",
    "subset_bootstrap",
    "subset_resamples",
    "subsets_to_masks",
    "top_influence_removal",
]

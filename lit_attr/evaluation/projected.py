"""The benchmark's closed-form TRAK / D-TRAK scores from a ``ProjectedGradientModule`` pass
(``lit_attr.attribution.projected``): for every reported number of draws, the features of the first
groups (and of its two halves) and the scores of ``lit_attr.baselines.trak`` at every damping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lit_attr.attribution.projected import load_projected_features
from lit_attr.baselines.trak import trak_scores
from lit_attr.constants import METADATA_FILE, TRAK_SCORES_FILE
from lit_attr.storage import read_json, write_atomic


def finish_projected_scores(output_dir: str | Path, report_draws: list[int], draws_per_group: int,
                            dampings: list[float]) -> Path:
    """Scores (N, M, D, Q) per reported S and for its two halves (none for one group), saved as ``trak_scores.npz``."""
    output_dir = Path(output_dir)
    meta = read_json(output_dir / METADATA_FILE)
    features, queries = load_projected_features(output_dir)
    arrays = {}
    for draws in report_draws:
        k = draws // draws_per_group
        parts = {f"S{draws}": features[:, :k].mean(1)}
        if k > 1:  # one group (attribute.py's draws) has no halves
            parts.update({f"S{draws}_a": features[:, :k // 2].mean(1), f"S{draws}_b": features[:, k // 2:k].mean(1)})
        for key, phi in parts.items():
            per_measurement = [trak_scores(phi, queries[m], dampings) for m in meta["measurements"]]  # (D, N, Q)
            arrays[key] = torch.stack(per_measurement).permute(2, 0, 1, 3).numpy()  # (N, M, D, Q)
    arrays["report_draws"] = np.asarray(report_draws, dtype=np.int64)
    arrays["dampings"] = np.asarray(dampings, dtype=np.float64)
    path = output_dir / TRAK_SCORES_FILE
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays))
    return path


def finished_closed_form(output_dir: str | Path) -> tuple[list[int], list[float]] | None:
    """(report_draws, dampings) of the stored ``trak_scores.npz``; None when there is none."""
    path = Path(output_dir) / TRAK_SCORES_FILE
    if not path.exists():
        return None
    with np.load(path) as stored:
        return [int(d) for d in stored["report_draws"]], [float(d) for d in stored["dampings"]]

"""``VariantInfluenceModule``: many K-FAC influence variants of one model in one scoring pass.

An LDS benchmark compares variants that share the expensive part, the per-example training
gradients: several query measurements (e.g. loss and ELBO, for the measurement-substitution table),
several dampings (sweeps), and several independent groups of S draws (to report S and 2S, 4S, ...
draws and the split-half reliability of the scores from one pass). Every training gradient is
scored against the stacked preconditioned query gradients of all (measurement, damping) pairs::

    scores[j, g, m, d, q] = grad m(x_q)^T (GGN + lambda_d I)^{-1} grad L_g(x_j)         (eq. 6)

where ``L_g`` is the loss of example j averaged over the S draws of group g (group 0 uses stream
``train``, so it equals ``attribute.py``'s scores with the same seed and S; group g > 0 uses
``train/g``). The mean over groups 0..G'-1 is the estimate with G' * S draws.

The store holds ``(num_train, G * M * D * Q)`` columns in that order; ``load_variant_scores`` reshapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_attr.attribution.gradient_pass import group_stream
from lit_attr.attribution.gradients import flatten_gradients
from lit_attr.attribution.influence import InfluenceModule
from lit_attr.attribution.quantize import score_against
from lit_attr.constants import METADATA_FILE
from lit_attr.curvature.eigen import precondition
from lit_attr.errors import ConfigError
from lit_attr.storage import load_scores, read_json


class VariantInfluenceModule(InfluenceModule):
    """``InfluenceModule`` scoring G draw groups x M measurements x D dampings x Q queries at once.

    Args:
        measurements: query measurements (``loss``, ``elbo``, ...); each uses ``measurement.num_draws``.
        dampings: dampings lambda_d (units of the mean-loss GGN, App. G.4).
        num_groups: G, independent groups of ``num_draws`` training draws.
        **kwargs: ``InfluenceModule`` arguments (``measurement`` sets the draws of the query gradients).
    """

    def __init__(self, *args: Any, measurements: list[str] | None = None, dampings: list[float] | None = None,
                 num_groups: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.measurements = list(measurements or [self.measurement_config.measurement])
        self.dampings = [float(d) for d in (dampings or [self.damping])]
        if num_groups < 1 or any(d < 0 for d in self.dampings) or not self.measurements:
            raise ConfigError(f"Need num_groups >= 1, dampings >= 0 and at least one measurement; got "
                              f"num_groups={num_groups}, dampings={self.dampings}, measurements={self.measurements}.")
        self.num_groups = num_groups
        self.specs = [self.measurement_spec_for(m) for m in self.measurements]

    def num_score_columns(self) -> int:
        return self.num_groups * len(self.measurements) * len(self.dampings) * len(self.queries.images)

    def run_metadata(self) -> dict[str, Any]:
        return {**super().run_metadata(), "method": "kfac_influence_variants", "measurements": self.measurements,
                "dampings": self.dampings, "num_groups": self.num_groups}

    def preconditioned_query_gradients(self) -> Tensor:
        """Rows ordered (measurement, damping, query): (M * D * Q, num_params)."""
        rows = []
        for spec in self.specs:
            gradients = self.query_gradients(spec)
            rows += [flatten_gradients(precondition(gradients, self.eigen, damping)) for damping in self.dampings]
        return torch.cat(rows)

    def preconditioned_query_blocks(self) -> Iterator[Tensor]:
        """All rows at once (the base class yields blocks of queries for one measurement and damping)."""
        yield self.preconditioned_query_gradients()

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """``{"index": (B,), "scores": (B, G * M * D * Q)}``, group-major."""
        if self.relative_influence:  # each group's rows divided by that group's gradient norms
            blocks = [self.relative_scores(batch, group_stream(g)) for g in range(self.num_groups)]
        else:
            blocks = [score_against(self.query_rows, self.training_gradients(batch, group_stream(g)))
                      for g in range(self.num_groups)]
        return {"index": batch["index"], "scores": torch.cat(blocks, dim=1)}


def load_variant_scores(output_dir: str | Path) -> np.ndarray:
    """Scores of a finished ``VariantInfluenceModule`` run as (num_train, G, M, D, Q) float32."""
    metadata = read_json(Path(output_dir) / METADATA_FILE)
    scores = load_scores(output_dir)
    shape = (metadata["num_groups"], len(metadata["measurements"]), len(metadata["dampings"]))
    return np.asarray(scores).reshape(scores.shape[0], *shape, -1)

"""``ProjectedGradientModule``: TRAK and D-TRAK in the benchmark (App. G.3-G.4; Zheng et al. 2024).

One ``Trainer.predict`` pass stores, for every training example and each of G draw groups, the randomly
projected gradient of the training function averaged over the group's S draws (group g uses the same
draw stream as ``VariantInfluenceModule``):

- TRAK: the training loss (eq. 2); queries use the measurement gradients (loss, ELBO, ...).
- D-TRAK: the squared output norm ``||eps_theta(x_t, t)||^2`` (pixel mean) for the training examples
  *and* the queries (label ``sqnorm``).

``finish_projected_scores`` then forms, for every reported number of draws, the features of the
first groups (and of its two halves), and the closed-form scores of ``lit_attr.baselines.trak``.
Normalisation layers are left out as for K-FAC (the same parameter set is projected).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lit_attr.attribution.gradients import flatten_gradients, per_example_gradients
from lit_attr.attribution.influence import InfluenceModule
from lit_attr.baselines.projection import RandomProjector
from lit_attr.baselines.trak import trak_scores
from lit_attr.constants import METADATA_FILE, QUERY_FEATURES_FILE, TRAK_SCORES_FILE
from lit_attr.diffusion.draws import draw_for_batch
from lit_attr.diffusion.loss import expand_draws, unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.evaluation.variants import group_stream
from lit_attr.measurements import MeasurementSpec
from lit_attr.storage import load_scores, read_json

SQNORM = "sqnorm"


class ProjectedGradientModule(InfluenceModule):
    """Projected per-example gradients (N, G * d_proj) for TRAK / D-TRAK.

    Args:
        training_function: ``loss`` (TRAK) or ``sqnorm`` (D-TRAK).
        measurements: query measurements for TRAK (ignored by D-TRAK, whose queries use ``sqnorm``).
        projection_dim: d_proj.
        projection_kind: ``gaussian`` or ``rademacher``.
        projection_seed: seed of the projection matrix.
        num_groups: G, groups of ``num_draws`` draws.
        **kwargs: ``InfluenceModule`` arguments.
    """

    def __init__(self, *args: Any, training_function: Literal["loss", "sqnorm"] = "loss",
                 measurements: list[str] | None = None, projection_dim: int = 4096,
                 projection_kind: Literal["gaussian", "rademacher"] = "gaussian", projection_seed: int = 0,
                 num_groups: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if training_function not in ("loss", SQNORM):
            raise ConfigError(f"training_function must be loss (TRAK) or sqnorm (D-TRAK); got {training_function!r}.")
        self.training_function, self.num_groups = training_function, num_groups
        self.measurements = [SQNORM] if training_function == SQNORM else list(measurements or ["loss"])
        num_params = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                         for m in self.kfac_modules.values())
        self.projector = RandomProjector(num_params, projection_dim, projection_seed, projection_kind)
        self.projection = {"dim": projection_dim, "kind": projection_kind, "seed": projection_seed}

    def num_score_columns(self) -> int:
        return self.num_groups * self.projector.dim

    def run_metadata(self) -> dict[str, Any]:
        return {"method": "trak" if self.training_function == "loss" else "dtrak", "checkpoint": str(self.checkpoint),
                **self.identity(), "queries": {"source": self.queries.source,
                                                         "hash": self.queries.fingerprint()},
                "measurements": self.measurements, "num_draws": self.num_draws, "num_groups": self.num_groups,
                "seed": self.seed, "draw_scheme": self.draw_scheme.value,
                "measurement": {"num_draws": self.measurement_config.num_draws}, "projection": self.projection}

    def curvature_request(self) -> None:
        """None: TRAK and D-TRAK use no K-FAC curvature."""
        return None

    def on_predict_start(self) -> None:
        """Project the query gradients once: ``query_features.pt`` = {measurement: (Q, d_proj)}."""
        path = self.output_dir / QUERY_FEATURES_FILE
        if not self.rows_remaining or path.exists() or not self.trainer.is_global_zero:
            return
        features = {}
        for name in self.measurements:
            grads = self._sqnorm_query_gradients() if name == SQNORM else self._measurement_gradients(name)
            features[name] = self.projector.project(flatten_gradients(grads))
        torch.save(features, path)

    def _measurement_gradients(self, name: str) -> dict[str, Tensor]:
        self.measurement_spec = MeasurementSpec(name, self.measurement_config.num_draws, self.seed, self.draw_scheme,
                                                self.measurement_config.timestep)
        return self.query_gradients()

    def _sqnorm_query_gradients(self) -> dict[str, Tensor]:
        images = self.queries.images.to(self.device)
        index = torch.arange(len(images))
        return self._sqnorm_gradients(images, index, self.measurement_config.num_draws, "query")

    def _sqnorm_gradients(self, x0: Tensor, index: Tensor, num_draws: int, stream: str) -> dict[str, Tensor]:
        """Per-example gradients of the mean over S draws of ``||eps_theta(x_t, t)||^2`` (pixel mean)."""
        unet = self.ddpm.attribution_unet
        schedule = self.ddpm.schedule
        t, noise = draw_for_batch(index.cpu(), num_draws, tuple(x0.shape[1:]), schedule.num_timesteps, self.seed,
                                  stream, self.draw_scheme)

        def rows() -> Tensor:
            x, tt, eps = expand_draws(x0, t, noise)
            x_t = schedule.q_sample(x, tt.to(x.device), eps.to(x.device))
            return unet_eps_model(unet)(x_t, tt.to(x.device)).pow(2).flatten(1).mean(1) / num_draws

        return per_example_gradients(unet, self.kfac_modules, rows, len(x0), num_draws)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """``{"index": (B,), "scores": (B, G * d_proj)}``: projected gradients, group-major."""
        blocks = []
        for g in range(self.num_groups):
            if self.training_function == SQNORM:
                grads = flatten_gradients(self._sqnorm_gradients(batch["image"], batch["index"], self.num_draws,
                                                                 group_stream(g)))
            else:
                grads = self.training_gradients(batch, group_stream(g))
            blocks.append(self.projector.project(grads))
        return {"index": batch["index"], "scores": torch.cat(blocks, dim=1)}


def finish_projected_scores(output_dir: str | Path, report_draws: list[int], draws_per_group: int,
                            dampings: list[float]) -> Path:
    """Scores (N, M, D, Q) per reported S and for its two halves, saved as ``trak_scores.npz``."""
    output_dir = Path(output_dir)
    meta = read_json(output_dir / METADATA_FILE)
    groups, dim = meta["num_groups"], meta["projection"]["dim"]
    features = torch.from_numpy(np.asarray(load_scores(output_dir))).view(-1, groups, dim).double()
    queries = torch.load(output_dir / QUERY_FEATURES_FILE, weights_only=True)
    arrays = {}
    for draws in report_draws:
        k = draws // draws_per_group
        parts = {f"S{draws}": features[:, :k].mean(1), f"S{draws}_a": features[:, :k // 2].mean(1),
                 f"S{draws}_b": features[:, k // 2:k].mean(1)}
        for key, phi in parts.items():
            per_measurement = [trak_scores(phi, queries[m], dampings) for m in meta["measurements"]]  # (D, N, Q)
            arrays[key] = torch.stack(per_measurement).permute(2, 0, 1, 3).numpy()  # (N, M, D, Q)
    arrays["report_draws"] = np.asarray(report_draws, dtype=np.int64)
    arrays["dampings"] = np.asarray(dampings, dtype=np.float64)
    path = output_dir / TRAK_SCORES_FILE
    tmp = output_dir / ("partial_" + TRAK_SCORES_FILE)
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def finished_closed_form(output_dir: str | Path) -> tuple[list[int], list[float]] | None:
    """(report_draws, dampings) of the stored ``trak_scores.npz``; None when there is none."""
    path = Path(output_dir) / TRAK_SCORES_FILE
    if not path.exists():
        return None
    with np.load(path) as stored:
        return [int(d) for d in stored["report_draws"]], [float(d) for d in stored["dampings"]]

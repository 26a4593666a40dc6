"""``GradientPassModule``: the per-example-gradient pass that K-FAC influence, TRAK and D-TRAK share.

Every gradient-based method needs the same two things from the trained DDPM, over the same parameter
set (the Conv2d/Linear layers of ``select_kfac_modules``; normalisation layers left out):

- **training gradients**: for each training example j, the gradient of its DDPM loss averaged over S
  seeded (timestep, noise) draws (eq. 2, App. G.3), ``grad L(x_j)`` of shape (B, num_params), drawn from a
  named stream so that draw group g of a benchmark (``group_stream(g)``) and ``attribute.py`` (group 0)
  see the same draws;
- **query gradients**: for each query q, the gradient of the measurement m(x_q) (loss, ELBO, per-timestep
  loss or sampling-trajectory log-prob; section 3.3) averaged over its own draws, layer by layer
  (name -> (Q, out, in+1)).

What a method does with them is its own: ``InfluenceModule`` preconditions the query gradients with the
K-FAC GGN and scores the training gradients against them (eq. 6); ``ProjectedGradientModule`` projects
both randomly for TRAK / D-TRAK (App. G.4). Neither switches off the other's machinery.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from lit_attr.attribution.gradients import flatten_gradients, per_example_gradients, per_example_loss_gradients
from lit_attr.attribution.measurement_config import MeasurementConfig
from lit_attr.attribution.memory import RunShape, activation_bytes_per_row, check_memory
from lit_attr.attribution.queries import QueryConfig, planned_num_queries
from lit_attr.attribution.scoring_module import ScoreDTypeName, ScoringModule
from lit_attr.curvature.layers import gradient_shapes, select_kfac_modules
from lit_attr.ddpm_config import as_config
from lit_attr.diffusion.draws import DrawScheme, DrawSchemeName, draw_for_batch
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.measurements import Measurement, MeasurementSpec, measurement_rows
from lit_attr.storage import read_metadata
from lit_attr.validation import check_finite, integer

TRAIN_STREAM = "train"
"""Stream of the training-gradient draws."""
QUERY_CAUSE = ("a query image holds NaN/Inf or the model overflows on it: check --model.queries.* (image files) and "
               "the model")
TRAINING_CAUSE = "a training image holds NaN/Inf or the model overflows on it: check the --data.* files"


def group_stream(group: int) -> str:
    """Draw stream of group g: ``train`` for g = 0 (as ``attribute.py``), else ``train/g``."""
    return TRAIN_STREAM if group == 0 else f"{TRAIN_STREAM}/{group}"


class GradientPassModule(ScoringModule):
    """Per-example training and query gradients of the trained DDPM (see the module docstring).

    Args:
        checkpoint: the trained DDPM: a Lightning checkpoint or a diffusers pipeline folder.
        output_dir: run folder for scores.npy, metadata.json, queries, report and figure.
        queries: where the queries come from (default: 8 generated samples).
        measurement: the query function and its draws (default: the loss).
        num_draws: S, draws of (timestep, noise) per training example.
        seed: seed of every draw (training gradients and measurement).
        draw_scheme: how the draws are made (``DrawScheme``).
        score_dtype: dtype of scores.npy.
        top_k: training examples per kind (positive, negative, neutral) in the report and figure.
        overwrite: discard an existing run in ``output_dir`` made with other settings.
        query_batch_size: queries whose gradients are computed together.
    """

    def __init__(self, checkpoint: str, output_dir: str, queries: QueryConfig | None = None,
                 measurement: MeasurementConfig | None = None, num_draws: int = 16, seed: int = 0,
                 draw_scheme: DrawSchemeName = "stratified",
                 score_dtype: ScoreDTypeName = "float32", top_k: int = 6, overwrite: bool = False,
                 query_batch_size: int = 16) -> None:
        self.measurement_config = as_config(measurement, MeasurementConfig)
        for value, flag in ((num_draws, "--model.num_draws"), (query_batch_size, "--model.query_batch_size"),
                            (self.measurement_config.num_draws, "--model.measurement.num_draws")):
            integer(value, flag, low=1)
        integer(seed, "--model.seed", low=0)
        self.num_draws, self.seed, self.draw_scheme = num_draws, seed, DrawScheme(draw_scheme)
        self.query_batch_size = query_batch_size
        self.measurement_spec = self.measurement_spec_for(self.measurement_config.measurement)
        super().__init__(checkpoint, output_dir, queries, score_dtype, top_k, overwrite)
        self.kfac_modules = select_kfac_modules(self.ddpm.attribution_unet)
        """The attributed layers by name (the K-FAC set: Conv2d / Linear, attention projections included)."""

    def measurement_spec_for(self, measurement: str) -> MeasurementSpec:
        """The draws of a query measurement: ``measurement.num_draws`` of this run's seed and scheme."""
        return MeasurementSpec(measurement, self.measurement_config.num_draws, self.seed, self.draw_scheme,
                               self.measurement_config.timestep)

    def measurement_identity(self) -> dict[str, Any]:
        """The measurement as stored (kind, draws and the per-timestep loss's t: the same for both spellings)."""
        spec = self.measurement_spec
        return {"measurement": spec.measurement.value, "num_draws": spec.num_draws, "timestep": spec.timestep}

    def needs_trajectory(self) -> bool:
        return self.measurement_spec.measurement is Measurement.TRAJECTORY_LOGPROB

    # ------------------------------------------------------------------ memory
    def check_memory(self, batch_size: int) -> None:
        """Print the memory estimate (``lit_attr.attribution.memory``); refuse a run the device cannot hold."""
        line = check_memory(self.run_shape(batch_size), self.trainer.strategy.root_device)
        if self.trainer.is_global_zero:
            print(line)

    def run_shape(self, batch_size: int) -> RunShape:
        """The sizes that set this run's memory: the gradients alone (no curvature; query gradients in float32)."""
        shapes = gradient_shapes(self.kfac_modules)
        unet = self.ddpm.attribution_unet
        device = next(unet.parameters()).device
        stored = read_metadata(self.output_dir) if self._reused_queries_path() is not None else {}
        num_queries = stored.get("num_queries") or planned_num_queries(self.query_config, self.ddpm.image_shape)
        return RunShape(
            num_params=sum(out * cols for out, cols in shapes.values()),
            activation_bytes_per_row=activation_bytes_per_row(unet, self.ddpm.model_shape, device),
            curvature_entries=0, num_queries=num_queries, query_batch_size=self.query_batch_size,
            measurement_draws=self.measurement_spec.num_draws, batch_size=batch_size, num_draws=self.num_draws,
            curvature_draws=0, query_compression="none")

    # ------------------------------------------------------------------ queries
    def query_gradient_blocks(self, spec: MeasurementSpec | None = None) -> Iterator[dict[str, Tensor]]:
        """Gradients of the measurement ``spec`` (default: the run's) for ``query_batch_size`` queries at a time:
        name -> (q, out, in+1)."""
        spec = spec or self.measurement_spec
        unet = self.ddpm.attribution_unet
        images = self.queries.images.to(self.device)
        trajectory = None if self.queries.trajectory is None else self.queries.trajectory.to(self.device)
        timesteps, labels = self.queries.timesteps, self.queries.labels
        for start in range(0, len(images), self.query_batch_size):
            idx = torch.arange(start, min(start + self.query_batch_size, len(images)))
            traj = None if trajectory is None else trajectory[:, idx]

            def rows(idx: Tensor = idx, traj: Tensor | None = traj) -> Tensor:
                return measurement_rows(spec, unet_eps_model(unet), self.ddpm.schedule, images[idx].clone(), idx, traj,
                                        timesteps, None if labels is None else labels[idx])

            grads = per_example_gradients(unet, self.kfac_modules, rows, len(idx), spec.num_draws)
            check_finite(grads, f"measurement gradients of queries {idx[0].item()}..{idx[-1].item()}", QUERY_CAUSE)
            yield grads

    def query_gradients(self, spec: MeasurementSpec | None = None) -> dict[str, Tensor]:
        """Gradients of the measurement ``spec`` (default: the run's) of all queries: name -> (Q, out, in+1)."""
        parts = list(self.query_gradient_blocks(spec))
        return {name: torch.cat([p[name] for p in parts]) for name in self.kfac_modules}

    # ------------------------------------------------------------------ training rows
    def training_draws(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> tuple[Tensor, Tensor]:
        """The S seeded (timestep, noise) draws of each example of the batch: (B, S) and (B, S, C, H, W)."""
        x0 = batch["image"]
        return draw_for_batch(batch["index"].cpu(), self.num_draws, tuple(x0.shape[1:]),
                              self.ddpm.schedule.num_timesteps, self.seed, stream, self.draw_scheme)

    def training_gradients(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> Tensor:
        """Per-example loss gradients averaged over the S draws of ``stream``: (B, num_params)."""
        timesteps, noise = self.training_draws(batch, stream)
        grads = per_example_loss_gradients(unet_eps_model(self.ddpm.attribution_unet), self.ddpm.schedule,
                                           self.kfac_modules, batch["image"], timesteps, noise,
                                           self.ddpm.attribution_unet, batch.get("label"))
        flat = flatten_gradients(grads)
        if not bool(torch.isfinite(flat).all()):  # one reduction per batch; name the layer only on failure
            check_finite(grads, f"training gradients of examples {batch['index'][:3].tolist()}...", TRAINING_CAUSE)
        return flat

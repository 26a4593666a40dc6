"""``InfluenceModule``: K-FAC influence scores of every training example on every query (eq. 6).

    score[j, q] = grad m(x_q)^T (GGN + damping I)^{-1} grad l(x_j)

with the K-FAC (expand, MC-Fisher) GGN of the mean training loss (eq. 10, 12), the loss and
measurement gradients averaged over S seeded draws (App. G.3), and the damping in the units of
that mean-loss GGN (App. G.4). Query gradients are preconditioned once and stored compressed
(int8 by default, section 3.2 / App. C); ``predict_step`` computes a block of rows of the
(num_train, num_queries) score matrix from one forward+backward over the block's draws.

Sign: a positive score means removing training example j is predicted to *increase* query q's
measurement (its loss), i.e. j made q more probable. Removing a set I of the N examples changes
the measurement by about ``sum_{j in I} score[j, q] / N`` (eq. 5, 6 with epsilon = 1/N).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lit_attr.attribution.gradients import (
    flatten_gradients,
    per_example_gradients,
    per_example_loss_gradients,
    per_example_loss_scores,
)
from lit_attr.attribution.memory import RunShape, activation_bytes_per_row, check_memory
from lit_attr.attribution.quantize import CompressedRows, QueryCompression, compress, concat_compressed
from lit_attr.attribution.queries import QueryConfig, planned_num_queries
from lit_attr.attribution.scoring_module import ScoringModule
from lit_attr.contracts import CurvatureRequest
from lit_attr.curvature.callback import KFACCallback
from lit_attr.curvature.eigen import KFACEigen, precondition
from lit_attr.curvature.factors_io import factors_path
from lit_attr.curvature.layers import gradient_shapes, select_kfac_modules
from lit_attr.ddpm_config import as_config
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.measurements import TIMESTEP_PREFIX, Measurement, MeasurementSpec, measurement_rows, parse_measurement
from lit_attr.storage import read_metadata
from lit_attr.validation import check_finite, integer, number


TRAIN_STREAM = "train"
"""Stream of the training-gradient draws."""
QUERY_CAUSE = ("a query image holds NaN/Inf or the model overflows on it: check --model.queries.* (image files) and "
               "the model")
TRAINING_CAUSE = "a training image holds NaN/Inf or the model overflows on it: check the --data.* files"
CURVATURE_CAUSE = ("the curvature's eigenvalues or the damping make the inverse overflow: raise --model.damping, or "
                   "refit the curvature with --model.overwrite true")
SCORE_CAUSE = "the scores overflow float32: raise --model.damping or use --model.query_compression fp16/none"


def group_stream(group: int) -> str:
    """Draw stream of group g: ``train`` for g = 0 (as ``attribute.py``), else ``train/g``."""
    return TRAIN_STREAM if group == 0 else f"{TRAIN_STREAM}/{group}"


@dataclass
class MeasurementConfig:
    """What to measure on each query (section 3.3)."""

    measurement: str = "loss"
    """loss (default), elbo, loss_at_t<t> (the per-timestep loss at 0-based t, e.g. loss_at_t100; as in evaluate.py)
    or trajectory_logprob (generated queries only)."""
    num_draws: int = 64
    """MC draws of the measurement gradient per query."""
    timestep: int | None = None
    """Deprecated: t of ``measurement: loss_at_timestep``; write ``measurement: loss_at_t<t>`` instead."""

    def __post_init__(self) -> None:
        """Check the name; the old spelling ``loss_at_timestep`` + ``timestep: t`` becomes ``loss_at_t<t>`` (a warning)."""
        try:
            kind, timestep = parse_measurement(self.measurement, self.timestep)
        except ConfigError as error:
            raise ConfigError(f"--model.measurement.measurement: {error}") from None
        if self.measurement == Measurement.LOSS_AT_TIMESTEP.value and timestep is not None:
            warnings.warn(f"--model.measurement.measurement loss_at_timestep with timestep {timestep} is deprecated; "
                          f"write --model.measurement.measurement {TIMESTEP_PREFIX}{timestep} (as in evaluate.py).",
                          FutureWarning, stacklevel=2)
            self.measurement, self.timestep = f"{TIMESTEP_PREFIX}{timestep}", None
        elif kind is Measurement.LOSS_AT_TIMESTEP and timestep is None:
            raise ConfigError("--model.measurement.measurement loss_at_timestep needs its timestep: write "
                              f"{TIMESTEP_PREFIX}<t> with a 0-based t, e.g. {TIMESTEP_PREFIX}100.")
        elif self.timestep is not None and kind is not Measurement.LOSS_AT_TIMESTEP:
            raise ConfigError(f"--model.measurement.timestep applies to the per-timestep loss only; drop it, or write "
                              f"--model.measurement.measurement {TIMESTEP_PREFIX}{self.timestep}.")


class InfluenceModule(ScoringModule):
    """Scores all training examples against all queries with K-FAC influence functions.

    Args:
        checkpoint: the trained DDPM: a Lightning checkpoint or a diffusers pipeline folder.
        output_dir: run folder for scores.npy, metadata.json, queries, report and figure.
        queries: where the queries come from (default: 8 generated samples).
        measurement: the measurement whose change is predicted (default: the loss).
        num_draws: S, draws of (timestep, noise) per training example for its loss gradient.
        seed: seed of every draw (training gradients, measurement, curvature unless overridden).
        draw_scheme: stratified (default: stratified timesteps + antithetic noise; it gave the best LDS
            on the digits benchmark, README "Results"), independent (the paper's), or shared (common
            random numbers across examples).
        damping: added to the GGN of the mean loss before inversion (App. G.4).
        query_compression: storage of the preconditioned query gradients: int8, fp16 or none.
        score_dtype: dtype of scores.npy.
        top_k: training examples per kind (positive, negative, neutral) in the report and figure.
        overwrite: discard an existing run in ``output_dir`` made with other settings.
        query_batch_size: queries whose gradients are computed together.
    """

    def __init__(
        self,
        checkpoint: str,
        output_dir: str = "runs/digits/attribution",
        queries: QueryConfig | None = None,
        measurement: MeasurementConfig | None = None,
        num_draws: int = 16,
        seed: int = 0,
        draw_scheme: Literal["independent", "stratified", "shared", "shared_stratified"] = "stratified",
        damping: float = 1e-8,
        query_compression: Literal["int8", "fp16", "none"] = "int8",
        score_dtype: Literal["float32", "float16"] = "float32",
        top_k: int = 6,
        overwrite: bool = False,
        query_batch_size: int = 16,
    ) -> None:
        self.measurement_config = as_config(measurement, MeasurementConfig)
        for value, flag in ((num_draws, "--model.num_draws"), (top_k, "--model.top_k"),
                            (query_batch_size, "--model.query_batch_size"),
                            (self.measurement_config.num_draws, "--model.measurement.num_draws")):
            integer(value, flag, low=1)
        integer(seed, "--model.seed", low=0)
        damping = number(damping, "--model.damping", low=0.0)
        self.num_draws, self.seed, self.draw_scheme = num_draws, seed, DrawScheme(draw_scheme)
        self.damping, self.query_compression = damping, QueryCompression(query_compression)
        self.query_batch_size = query_batch_size
        self.measurement_spec = MeasurementSpec(self.measurement_config.measurement, self.measurement_config.num_draws,
                                                seed, self.draw_scheme, self.measurement_config.timestep)
        super().__init__(checkpoint, output_dir, queries, score_dtype, top_k, overwrite)
        self.kfac_modules = select_kfac_modules(self.ddpm.attribution_unet)
        self.eigen: KFACEigen | None = None
        self.query_rows: CompressedRows | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ identity
    def run_metadata(self) -> dict[str, Any]:
        """Everything the scores depend on; compared when a run is resumed."""
        callback = self._curvature_callback()
        curvature = callback.settings(seed=callback.resolved_seed(self.seed),
                                      scheme=callback.resolved_scheme(self.draw_scheme))
        return {
            "method": "kfac_influence", "checkpoint": str(self.checkpoint), **self.identity(),
            "queries": self.query_identity(),
            "measurement": self.measurement_identity(),
            "num_draws": self.num_draws, "seed": self.seed, "draw_scheme": self.draw_scheme.value,
            "damping": self.damping, "query_compression": self.query_compression.value, "curvature": curvature,
        }

    def measurement_identity(self) -> dict[str, Any]:
        """The measurement as stored (kind, draws and the per-timestep loss's t: the same for both spellings)."""
        spec = self.measurement_spec
        return {"measurement": spec.measurement.value, "num_draws": spec.num_draws, "timestep": spec.timestep}

    def _curvature_callback(self, required: bool = True) -> KFACCallback | None:
        """The trainer's ``KFACCallback`` (None if absent and not ``required``, e.g. for TRAK)."""
        found = [cb for cb in self.trainer.callbacks if isinstance(cb, KFACCallback)]
        if not found and required:
            raise ConfigError("No curvature: add `- class_path: callbacks.curvature.KFACCallback` to trainer.callbacks.")
        return found[0] if found else None

    def check_memory(self, batch_size: int) -> None:
        """Print the memory estimate (``lit_attr.attribution.memory``); refuse a run the device cannot hold."""
        line = check_memory(self.run_shape(batch_size), self.trainer.strategy.root_device)
        if self.trainer.is_global_zero:
            print(line)

    def run_shape(self, batch_size: int) -> RunShape:
        """The sizes that set this run's memory."""
        shapes = gradient_shapes(self.kfac_modules)
        unet = self.ddpm.attribution_unet
        stored = read_metadata(self.output_dir) if self._reused_queries_path() is not None else {}
        num_queries = stored.get("num_queries") or planned_num_queries(self.query_config, self.ddpm.image_shape)
        return RunShape(
            num_params=sum(out * cols for out, cols in shapes.values()),
            activation_bytes_per_row=activation_bytes_per_row(unet, self.ddpm.model_shape, next(unet.parameters()).device),
            curvature_entries=sum(out * out + cols * cols for out, cols in shapes.values()),
            num_queries=num_queries, query_batch_size=self.query_batch_size,
            measurement_draws=self.measurement_spec.num_draws, batch_size=batch_size, num_draws=self.num_draws,
            curvature_draws=getattr(self._curvature_callback(required=False), "num_draws", 0),
            query_compression=self.query_compression.value)

    def needs_trajectory(self) -> bool:
        return self.measurement_spec.measurement is Measurement.TRAJECTORY_LOGPROB

    def curvature_request(self) -> CurvatureRequest | None:
        """The curvature ``KFACCallback`` provides before predicting (``contracts.CurvatureConsumer``);
        None when every row is already scored."""
        if not self.rows_remaining:
            return None
        return CurvatureRequest(unet=self.ddpm.attribution_unet, schedule=self.ddpm.schedule,
                                factors_path=factors_path(self.output_dir), identity=self.identity(),
                                seed=self.seed, draw_scheme=self.draw_scheme, refit=self.overwrite,
                                data=self.trainer.datamodule.curvature_dataloader)

    def set_curvature(self, eigen: KFACEigen) -> None:
        """Called by ``KFACCallback`` with the (EK-)FAC eigendecomposition."""
        self.eigen = eigen

    # ------------------------------------------------------------------ queries
    def on_predict_start(self) -> None:
        """Precondition the query gradients once (after ``KFACCallback`` set the curvature)."""
        if not self.rows_remaining:
            return
        if self.eigen is None:
            raise RuntimeError("KFACCallback did not provide the curvature.")
        start = time.perf_counter()
        blocks = []
        with self.trainer.precision_plugin.forward_context():  # as predict_step: bf16-mixed autocasts
            for rows in self.preconditioned_query_blocks():
                check_finite({"preconditioned query gradients": rows}, "query preconditioning", CURVATURE_CAUSE)
                blocks.append(compress(rows, self.query_compression))
        self.query_rows = concat_compressed(blocks)
        self.timings["queries_s"] = time.perf_counter() - start

    def preconditioned_query_blocks(self) -> Iterator[Tensor]:
        """Rows of ``preconditioned_query_gradients``, ``query_batch_size`` queries at a time (bounded memory)."""
        for grads in self.query_gradient_blocks():
            yield flatten_gradients(precondition(grads, self.eigen, self.damping))

    def query_gradients(self) -> dict[str, Tensor]:
        """Measurement gradients of all queries: name -> (Q, out, in+1)."""
        parts = list(self.query_gradient_blocks())
        return {name: torch.cat([p[name] for p in parts]) for name in self.kfac_modules}

    def query_gradient_blocks(self) -> Iterator[dict[str, Tensor]]:
        """Measurement gradients of ``query_batch_size`` queries at a time: name -> (q, out, in+1)."""
        unet = self.ddpm.attribution_unet
        images = self.queries.images.to(self.device)
        trajectory = None if self.queries.trajectory is None else self.queries.trajectory.to(self.device)
        timesteps, labels = self.queries.timesteps, self.queries.labels
        for start in range(0, len(images), self.query_batch_size):
            idx = torch.arange(start, min(start + self.query_batch_size, len(images)))
            traj = None if trajectory is None else trajectory[:, idx]

            def rows(idx: Tensor = idx, traj: Tensor | None = traj) -> Tensor:
                return measurement_rows(self.measurement_spec, unet_eps_model(unet), self.ddpm.schedule,
                                        images[idx].clone(), idx, traj, timesteps,
                                        None if labels is None else labels[idx])

            grads = per_example_gradients(unet, self.kfac_modules, rows, len(idx), self.measurement_spec.num_draws)
            check_finite(grads, f"measurement gradients of queries {idx[0].item()}..{idx[-1].item()}", QUERY_CAUSE)
            yield grads

    def preconditioned_query_gradients(self) -> Tensor:
        """``(GGN + damping I)^{-1} grad m(x_q)`` flattened: (Q, num_params)."""
        return torch.cat(list(self.preconditioned_query_blocks()))

    # ------------------------------------------------------------------ training rows
    def training_draws(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> tuple[Tensor, Tensor]:
        """The S seeded (timestep, noise) draws of each example of the batch: (B, S) and (B, S, C, H, W)."""
        x0 = batch["image"]
        return draw_for_batch(batch["index"].cpu(), self.num_draws, tuple(x0.shape[1:]),
                              self.ddpm.schedule.num_timesteps, self.seed, stream, self.draw_scheme)

    def training_gradients(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> Tensor:
        """Per-example loss gradients averaged over S draws (stream ``train``): (B, num_params)."""
        timesteps, noise = self.training_draws(batch, stream)
        grads = per_example_loss_gradients(unet_eps_model(self.ddpm.attribution_unet), self.ddpm.schedule,
                                           self.kfac_modules, batch["image"], timesteps, noise,
                                           self.ddpm.attribution_unet, batch.get("label"))
        flat = flatten_gradients(grads)
        if not bool(torch.isfinite(flat).all()):  # one reduction per batch; name the layer only on failure
            check_finite(grads, f"training gradients of examples {batch['index'][:3].tolist()}...", TRAINING_CAUSE)
        return flat

    def training_scores(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> Tensor:
        """Scores of the batch's examples against the stored queries, layer by layer: (B, num_queries).

        Equal to ``score_against(self.query_rows, self.training_gradients(batch, stream))`` without
        forming the (B, num_params) gradient matrix (``per_example_scores``).
        """
        timesteps, noise = self.training_draws(batch, stream)
        return per_example_loss_scores(unet_eps_model(self.ddpm.attribution_unet), self.ddpm.schedule,
                                       self.kfac_modules, batch["image"], timesteps, noise, self.query_rows,
                                       self.ddpm.attribution_unet, batch.get("label"))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """A block of score rows: ``{"index": (B,), "scores": (B, num_queries)}`` (sign: see module docstring)."""
        scores = self.training_scores(batch)
        if not bool(torch.isfinite(scores).all()):  # the layer-wise pass never forms the gradients: name the cause
            self.training_gradients(batch)  # raises (naming the layer) if the gradients themselves are not finite
            check_finite({"scores": scores}, f"scoring of examples {batch['index'][:3].tolist()}...", SCORE_CAUSE)
        return {"index": batch["index"], "scores": scores}

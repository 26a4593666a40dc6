"""Row passes shared by the curvature accumulators: one forward over a batch of rows, then backward passes.

``RowPassAccumulator`` captures each K-FAC'd layer's inputs and output gradients (``capture``) for the vectors v
of ``lit_attr.curvature.fisher``; ``KFACAccumulator`` (``kfac``) and ``EigenvalueCorrectionAccumulator``
(``eigen``) add them up. ``iterate_ddpm_batches`` feeds a dataset's batches with seeded (timestep, noise)
draws. Rows are example-major (row ``b S + s`` is draw s of example b); see ``lit_attr.curvature.kfac``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lit_attr.curvature.capture import LayerCapture, autocast_off, grad_enabled
from lit_attr.curvature.fisher import MC_TARGET_STREAM, FisherType, backprop_vectors, num_backprop_vectors
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch
from lit_attr.diffusion.loss import EpsModel, call_model, expand_draws, expand_labels
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.errors import ConfigError

CURVATURE_STREAM = "curvature"
"""Stream of the (timestep, noise) draws used for the curvature."""

class RowPassAccumulator:
    """Base of the accumulators: one forward over a batch of rows, then the backward passes.

    Subclasses implement ``_add_inputs(inputs)`` (called once per batch with the captured layer
    inputs) and ``_add_grads(inputs, grad_outputs)`` (called after each backward pass).

    Args:
        modules: K-FAC'd layers by name (``select_kfac_modules``).
        fisher_type: ``mc``, ``empirical`` or ``type-2``.
        mc_samples: MC target draws per row.
        seed: seed of the MC targets.
        stream: stream of the MC targets.
        model: the module owning ``modules`` (its parameter gradients are switched off while
            accumulating); defaults to the layers themselves.
    """

    def __init__(
        self, modules: dict[str, nn.Module], fisher_type: FisherType | str = FisherType.MC, mc_samples: int = 1,
        seed: int = 0, stream: str = MC_TARGET_STREAM, model: nn.Module | None = None,
    ) -> None:
        if mc_samples < 1:
            raise ConfigError(f"mc_samples must be >= 1, got {mc_samples}.")
        self.modules, self.model = modules, model
        self.fisher_type, self.mc_samples = FisherType(fisher_type), mc_samples
        self.seed, self.stream = seed, stream
        weight = next(iter(modules.values())).weight
        self.num_rows = torch.zeros((), dtype=torch.float64, device=weight.device)

    def update(self, forward_fn: Callable[[], Tensor], example_indices: Tensor, targets: Tensor | None = None) -> None:
        """Add one batch of rows.

        Args:
            forward_fn: runs the model on the batch's R = B S rows (example-major) and returns its
                output f, (R, C, H, W) or (R, D); called once, with autograd on, inside the capture.
            example_indices: (B,) stable dataset indices; rows ``b S ... b S + S - 1`` are draws of
                ``example_indices[b]`` (seeds the MC targets).
            targets: (R, ...) the true noise eps of each row; needed for the empirical Fisher.
        """
        with grad_enabled(), LayerCapture(self.modules, self.model, param_grads=False) as capture:
            output = forward_fn()
            capture.check_all_ran()
            with autocast_off(output.device):  # the sums stay float32 under --trainer.precision bf16-mixed
                self._add_inputs(capture.inputs)
            vectors = backprop_vectors(
                self.fisher_type, output, example_indices, targets, self.mc_samples, self.seed, self.stream
            )
            passes = num_backprop_vectors(self.fisher_type, output[0].numel(), self.mc_samples)
            for i, v in enumerate(vectors):
                grad_outputs = capture.backward(output, v, retain_graph=i < passes - 1)
                with autocast_off(output.device):
                    self._add_grads(capture.inputs, grad_outputs)
        self.num_rows += output.shape[0]

    def update_ddpm(
        self, eps_model: EpsModel, schedule: DiffusionSchedule, x0: Tensor, timesteps: Tensor, noise: Tensor,
        example_indices: Tensor, labels: Tensor | None = None,
    ) -> None:
        """``update`` for the DDPM loss: the rows are ``(x_t, t)`` with ``x_t = q_sample(x0, t, eps)``.

        Args:
            eps_model: ``eps_model(x_t, t[, labels]) -> output``.
            schedule: the forward process.
            x0: images (B, C, H, W).
            timesteps: (B, S) draws (``lit_attr.diffusion.draws``).
            noise: (B, S, C, H, W) draws; the empirical Fisher's targets are ``schedule.training_target`` (eps itself
                for epsilon prediction).
            example_indices: (B,) stable dataset indices.
            labels: (B,) class labels of a class-conditional model, or None.
        """
        timesteps, noise = timesteps.to(x0.device), noise.to(x0)
        x0_rows, t_rows, noise_rows = expand_draws(x0, timesteps, noise)
        label_rows = expand_labels(labels, timesteps.shape[1])

        def forward_fn() -> Tensor:
            x_t = schedule.q_sample(x0_rows.clone(), t_rows.clone(), noise_rows.clone())
            return call_model(eps_model, x_t, t_rows, label_rows)

        self.update(forward_fn, example_indices, targets=schedule.training_target(x0_rows, noise_rows, t_rows))

    def _add_inputs(self, inputs: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def _add_grads(self, inputs: dict[str, Tensor], grad_outputs: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def _pass_normaliser(self) -> float:
        """R times the number of independent target draws per row (MC); type-2 sums its D passes."""
        if self.num_rows.item() == 0:
            raise ValueError("No rows were accumulated; call update() before finalize().")
        return self.num_rows.item() * (self.mc_samples if self.fisher_type is FisherType.MC else 1)


def iterate_ddpm_batches(
    accumulator: RowPassAccumulator, eps_model: EpsModel, schedule: DiffusionSchedule, batches: Iterable[dict],
    num_draws: int, seed: int = 0, draw_scheme: DrawScheme | str = DrawScheme.INDEPENDENT, progressbar: bool = False,
    desc: str = "Curvature",
) -> None:
    """Feed ``{"index": (B,), "image": (B, C, H, W)}`` batches to an accumulator.

    Each example gets ``num_draws`` seeded (timestep, noise) draws (stream ``curvature``); images are
    moved to the device and dtype of the accumulator's layers.
    """
    weight = next(iter(accumulator.modules.values())).weight
    for batch in tqdm(batches, desc=desc, disable=not progressbar):
        x0 = batch["image"].to(weight.device, weight.dtype)
        timesteps, noise = draw_for_batch(
            batch["index"], num_draws, tuple(x0.shape[1:]), schedule.num_timesteps, seed, CURVATURE_STREAM, draw_scheme
        )
        accumulator.update_ddpm(eps_model, schedule, x0, timesteps, noise, batch["index"], batch.get("label"))

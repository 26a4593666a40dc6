"""K-FAC factors of the GGN of the mean DDPM training loss (paper section 3.1, eqs. 9-12).

Rows. A *row* is one draw ``(x0, t, eps)`` of one example; an accumulator sees R = N S rows
(N examples, S draws each, example-major: row ``b S + s`` is draw s of example b). With the loss
convention of ``lit_attr.diffusion.loss`` (one draw's loss is the pixel mean
``l = ||eps - f||^2 / D``, D = C H W), the Hessian of l w.r.t. the model output f is ``(2/D) I``
and the GGN of the mean loss over rows is

    GGN = (1/R) sum_rows J^T (2/D) J,    J = d f / d theta              (eq. 9 / 17)

Per layer, with inputs ``a`` and output gradients ``g`` at each of its P weight-sharing positions
(see ``capture``), K-FAC approximates the layer's block by ``kron(G, A)`` (row-major layout of the
``(out, in+1)`` gradient matrix; the paper writes ``A (x) G`` for column-major vec), eq. 12:

- expand (default; Grosse & Martens 2016, Eschenhagen et al. 2023):
  ``A = 1/(R P) sum_{r,p} a a^T``,  ``G = 1/R sum_{r,p} E[g g^T]``;
- reduce: ``A = 1/R sum_r abar abar^T`` (abar = mean_p a),  ``G = 1/R sum_r E[(sum_p g)(sum_p g)^T]``;

where g is backpropagated from a vector v at the output with ``E[v v^T] = (2/D) I``:

- ``FisherType.MC`` (eq. 10): ``v = sqrt(2/D) xi``, ``xi ~ N(0, I)``. This is ``-dl/df`` for a
  target ``y ~ N(f, (D/2) I)``: the pixel-mean loss is the negative log-likelihood of that
  Gaussian (``||y - f||^2 / (2 sigma^2)`` with ``sigma^2 = D/2``), ``dl/df = 2 (f - y) / D =
  -(2/D) sqrt(D/2) xi``, and ``E[v v^T] = (4/D^2)(D/2) I = (2/D) I``, the Hessian above.
- ``FisherType.TYPE2``: exact, D backward passes with ``v = sqrt(2/D) e_d``.
- ``FisherType.EMPIRICAL`` (eq. 11): ``v = dl/df = (2/D)(f - eps)`` with the true noise.

For one row and P = 1, ``kron(G, A)`` equals that row's exact GGN block (type-2); for deep linear
networks expand is exact for any number of rows.

Relation to curvlinops 3.0.1 (tested): ``KFACLinearOperator(model_func=lambda X:
eps_model(X).flatten(1), loss_func=MSELoss(reduction="mean"), data=rows, num_data=R,
num_per_example_loss_terms=1, separate_weight_and_bias=False, kfac_approx=...)`` gives the same A
and, for type-2 and MC, the same G (MC: same law). Its empirical G is ``D`` times ours: curvlinops
rescales mean-reduced MSE by ``sqrt(D)`` (``v = 2 (f - y) / sqrt(D)``). The output must be flattened
to (R, D): for a 4-D output curvlinops treats C H as separate loss terms sharing one backward pass,
which is not the type-2 GGN of the pixel-mean loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import torch
from torch import Tensor, nn

from lit_attr.curvature.accumulators import RowPassAccumulator, iterate_ddpm_batches
from lit_attr.curvature.capture import at_least_float32, grad_covariance_sum, input_covariance_sum
from lit_attr.curvature.fisher import MC_TARGET_STREAM, FisherType
from lit_attr.curvature.layers import gradient_matrix_shape
from lit_attr.diffusion.draws import DrawScheme
from lit_attr.diffusion.loss import EpsModel
from lit_attr.diffusion.schedule import DiffusionSchedule

log = logging.getLogger(__name__)


class KFACApprox(str, Enum):
    """K-FAC variant for weight-sharing layers (Eschenhagen et al. 2023)."""

    EXPAND = "expand"
    REDUCE = "reduce"


KFACApproxName = Literal["expand", "reduce"]
"""``KFACApprox``'s values, for signatures read by the CLIs."""


@dataclass
class KFACFactors:
    """Kronecker factors per layer; the block of layer ``name`` is ``kron(G, A)``.

    Attributes:
        factors: name -> (A of shape (in_eff [+1], in_eff [+1]), G of shape (out, out)).
        num_rows: R, the number of rows (example draws) the factors average over.
        fisher_type: how G was estimated.
        kfac_approx: expand or reduce.
        mc_samples: MC target draws per row (1 unless MC).
        metadata: free-form run information stored with the factors.
    """

    factors: dict[str, tuple[Tensor, Tensor]]
    num_rows: int
    fisher_type: FisherType = FisherType.MC
    kfac_approx: KFACApprox = KFACApprox.EXPAND
    mc_samples: int = 1
    metadata: dict = field(default_factory=dict)


class KFACAccumulator(RowPassAccumulator):
    """Accumulates raw K-FAC sums one batch at a time; ``finalize()`` gives ``KFACFactors``.

    Usable from inside a Lightning loop: call ``update`` / ``update_ddpm`` per batch; under DDP,
    ``all_reduce`` (sum) every tensor of ``state_tensors()`` in place before ``finalize()``: the raw
    sums and counts add exactly across ranks. Run the plain (unwrapped) network in eval mode (no
    dropout); the accumulator switches parameter gradients off and autograd on by itself.

    Args:
        modules: K-FAC'd layers by name.
        fisher_type: see ``FisherType``.
        kfac_approx: see ``KFACApprox``.
        mc_samples: MC target draws per row.
        seed: seed of the MC targets (stream ``mc_targets``).
        model: owner of ``modules`` (parameter gradients are switched off while accumulating).
        sum_dtype: dtype of the running sums.
    """

    def __init__(
        self, modules: dict[str, nn.Module], fisher_type: FisherType | str = FisherType.MC,
        kfac_approx: KFACApprox | str = KFACApprox.EXPAND, mc_samples: int = 1, seed: int = 0,
        model: nn.Module | None = None, sum_dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(modules, fisher_type, mc_samples, seed, MC_TARGET_STREAM, model)
        self.kfac_approx = KFACApprox(kfac_approx)
        self.sums: dict[str, dict[str, Tensor]] = {}
        for name, module in modules.items():
            out, cols = gradient_matrix_shape(module)
            like = dict(dtype=sum_dtype, device=module.weight.device)
            self.sums[name] = {
                "A_sum": torch.zeros(cols, cols, **like), "G_sum": torch.zeros(out, out, **like),
                "A_count": torch.zeros((), **like),
            }

    def _add_inputs(self, inputs: dict[str, Tensor]) -> None:
        reduce = self.kfac_approx is KFACApprox.REDUCE
        for name, module in self.modules.items():
            a_sum, count = input_covariance_sum(module, at_least_float32(inputs[name]), reduce)
            self.sums[name]["A_sum"] += a_sum
            self.sums[name]["A_count"] += count

    def _add_grads(self, inputs: dict[str, Tensor], grad_outputs: dict[str, Tensor]) -> None:
        reduce = self.kfac_approx is KFACApprox.REDUCE
        for name, module in self.modules.items():
            self.sums[name]["G_sum"] += grad_covariance_sum(module, at_least_float32(grad_outputs[name]), reduce)

    def state_tensors(self) -> dict[str, Tensor]:
        """The raw sums and counts (views, not copies), to be summed across ranks in place."""
        state = {f"{name}.{key}": value for name, sums in self.sums.items() for key, value in sums.items()}
        state["num_rows"] = self.num_rows
        return state

    def finalize(self, dtype: torch.dtype = torch.float64) -> KFACFactors:
        """``A = A_sum / A_count`` and ``G = G_sum / (R mc_samples)`` per layer (eq. 12)."""
        normaliser = self._pass_normaliser()
        factors = {
            name: ((s["A_sum"] / s["A_count"]).to(dtype), (s["G_sum"] / normaliser).to(dtype))
            for name, s in self.sums.items()
        }
        return KFACFactors(factors, int(self.num_rows.item()), self.fisher_type, self.kfac_approx, self.mc_samples)


def fit_kfac_factors(
    eps_model: EpsModel, schedule: DiffusionSchedule, modules: dict[str, nn.Module], batches: Iterable[dict],
    num_draws: int, seed: int = 0, draw_scheme: DrawScheme | str = DrawScheme.INDEPENDENT,
    fisher_type: FisherType | str = FisherType.MC, kfac_approx: KFACApprox | str = KFACApprox.EXPAND,
    mc_samples: int = 1, model: nn.Module | None = None, progressbar: bool = False,
) -> KFACFactors:
    """K-FAC factors (eq. 12) of the GGN of the mean loss over a dataset, S = ``num_draws`` per example.

    Args:
        eps_model: ``eps_model(x_t, t) -> eps_hat``.
        schedule: the forward process.
        modules: K-FAC'd layers by name.
        batches: iterable of ``{"index": LongTensor (B,), "image": (B, C, H, W)}``.
        num_draws: S, (timestep, noise) draws per example (stream ``curvature``).
        seed: seed of the draws and of the MC targets.
        draw_scheme: see ``DrawScheme``.
        fisher_type: see ``FisherType``.
        kfac_approx: see ``KFACApprox``.
        mc_samples: MC target draws per row.
        model: owner of ``modules`` (for switching parameter gradients off).
        progressbar: show a progress bar.

    Returns:
        The factors, float64.
    """
    start = time.perf_counter()
    accumulator = KFACAccumulator(modules, fisher_type, kfac_approx, mc_samples, seed, model)
    iterate_ddpm_batches(
        accumulator, eps_model, schedule, batches, num_draws, seed, draw_scheme, progressbar, "K-FAC factors"
    )
    factors = accumulator.finalize()
    log.info("Fitted K-FAC factors on %d rows in %.1f s", factors.num_rows, time.perf_counter() - start)
    return factors

"""Eigendecomposition of the K-FAC factors, the damped inverse, and EK-FAC eigenvalue correction.

With ``A = QA diag(lamA) QA^T`` and ``G = QG diag(lamG) QG^T``, the layer block ``kron(G, A)`` has
eigenvectors ``kron(QG, QA)`` and eigenvalues ``lamG lamA^T`` (an (out, in+1) grid). The damped
inverse applied to a gradient matrix V (paper eq. 6 with the damping of App. G.4) is

    (kron(G, A) + damping I)^{-1} vec(V) = vec( QG [ (QG^T V QA) / (Lambda + damping) ] QA^T )

with ``Lambda = lamG lamA^T`` (K-FAC) or the EK-FAC eigenvalues (George et al. 2018):
``Lambda = (1/R) sum_rows E[(QG^T g_row QA)^2]``, the exact second moment of the per-row gradient
matrices ``g_row`` (of the same sampled loss as the factors: MC, empirical or type-2) in the
Kronecker eigenbasis. EK-FAC is the best diagonal fit in that basis (Frobenius norm).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from lit_attr.curvature.capture import autocast_off, grouped_gradients
from lit_attr.curvature.accumulators import RowPassAccumulator, iterate_ddpm_batches
from lit_attr.curvature.fisher import FisherType
from lit_attr.curvature.kfac import KFACApprox, KFACFactors
from lit_attr.diffusion.draws import DrawScheme
from lit_attr.diffusion.loss import EpsModel
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.errors import NumericalError
from lit_attr.validation import check_finite

log = logging.getLogger(__name__)

EKFAC_TARGET_STREAM = "ekfac_targets"
"""Stream of the MC targets of the eigenvalue-correction pass (independent of the factors' targets)."""


@dataclass
class LayerEigen:
    """Eigendecomposition of one layer's factors.

    Attributes:
        QA: (in+1, in+1) eigenvectors of A (columns).
        lamA: (in+1,) eigenvalues of A, clamped at 0.
        QG: (out, out) eigenvectors of G.
        lamG: (out,) eigenvalues of G, clamped at 0.
        corrected: (out, in+1) EK-FAC eigenvalues, or None for K-FAC.
    """

    QA: Tensor
    lamA: Tensor
    QG: Tensor
    lamG: Tensor
    corrected: Tensor | None = None

    def eigenvalues(self) -> Tensor:
        """Eigenvalues of the block as an (out, in+1) grid: corrected, or ``lamG lamA^T``."""
        return self.corrected if self.corrected is not None else torch.outer(self.lamG, self.lamA)


@dataclass
class KFACEigen:
    """Per-layer eigendecompositions; ``fisher_type``/``kfac_approx``/``num_rows`` from the factors."""

    layers: dict[str, LayerEigen]
    fisher_type: FisherType = FisherType.MC
    kfac_approx: KFACApprox = KFACApprox.EXPAND
    num_rows: int = 0


def eigendecompose_factors(factors: KFACFactors, dtype: torch.dtype = torch.float32) -> KFACEigen:
    """``torch.linalg.eigh`` of every A and G in float64, stored in ``dtype``.

    Eigenvalues are clamped at 0 (the factors are PSD; negative values are rounding errors).

    Raises:
        NumericalError: a factor holds NaN/Inf or ``eigh`` fails; names the layer and the factor.
    """
    layers = {}
    for name, (a, g) in factors.factors.items():
        lam_a, q_a = _eigh(a, name, "A (input)")
        lam_g, q_g = _eigh(g, name, "G (output-gradient)")
        layers[name] = LayerEigen(
            q_a.to(dtype), lam_a.clamp(min=0).to(dtype), q_g.to(dtype), lam_g.clamp(min=0).to(dtype)
        )
    return KFACEigen(layers, factors.fisher_type, factors.kfac_approx, factors.num_rows)


def _eigh(factor: Tensor, layer: str, which: str) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` in float64 with errors naming the layer and the factor."""
    factor = factor.to(torch.float64)
    check_finite({f"the {which} factor of layer {layer}": factor}, "curvature eigendecomposition",
                 "the factors were accumulated from NaN/Inf activations or gradients (check the model's weights), or "
                 "the factors file is corrupt")
    try:
        return torch.linalg.eigh(factor)
    except torch.linalg.LinAlgError as error:
        raise NumericalError(f"curvature eigendecomposition: eigh of the {which} factor of layer {layer} failed "
                             f"({' '.join(str(error).split())[:100]}); the factors file is corrupt or ill-conditioned: "
                             "refit it (attribute.py --model.overwrite true).") from None


def precondition(grads: dict[str, Tensor], eigen: KFACEigen, damping: float) -> dict[str, Tensor]:
    """Apply ``(kron(G, A) + damping I)^{-1}`` to each gradient matrix (paper eq. 6, App. G.4).

    Args:
        grads: name -> (B, out, in+1) gradient matrices (any subset of the layers).
        eigen: from ``eigendecompose_factors`` (optionally eigenvalue-corrected).
        damping: added to every eigenvalue; in units of the GGN of the mean loss.

    Returns:
        name -> (B, out, in+1), in the dtype of ``grads``.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")
    out = {}
    for name, v in grads.items():
        layer = eigen.layers[name]
        with autocast_off(v.device):
            q_a, q_g = layer.QA.to(v), layer.QG.to(v)
            rotated = q_g.T @ v @ q_a
            out[name] = q_g @ (rotated / (layer.eigenvalues().to(v) + damping)) @ q_a.T
    return out


def kfac_matrix(source: KFACFactors | KFACEigen, name: str, damping: float = 0.0) -> Tensor:
    """Dense ``kron(G, A) + damping I`` of one layer (row-major (out, in+1) layout; for tests).

    From ``KFACEigen`` it is ``Q diag(Lambda) Q^T + damping I`` with ``Q = kron(QG, QA)``, which
    includes an EK-FAC correction if present.
    """
    if isinstance(source, KFACFactors):
        a, g = source.factors[name]
        dense = torch.kron(g, a)
    else:
        layer = source.layers[name]
        q = torch.kron(layer.QG, layer.QA)
        dense = q @ torch.diag(layer.eigenvalues().flatten()) @ q.T
    return dense + damping * torch.eye(dense.shape[0], dtype=dense.dtype, device=dense.device)


class EigenvalueCorrectionAccumulator(RowPassAccumulator):
    """Accumulates ``sum_rows (QG^T g_row QA)^2`` per layer (EK-FAC), one batch at a time.

    Same protocol as ``KFACAccumulator``: ``update``/``update_ddpm`` per batch, all-reduce
    ``state_tensors()`` (sum) across ranks, then ``finalize()``.

    Args:
        modules: K-FAC'd layers by name.
        eigen: the K-FAC eigenbasis to correct.
        fisher_type: loss whose per-row gradients are used (same meaning as for the factors).
        mc_samples: MC target draws per row.
        seed: seed of the MC targets (stream ``ekfac_targets``).
        model: owner of ``modules``.
        chunk_rows: rows whose per-row gradient matrices are formed at once.
    """

    def __init__(
        self, modules: dict[str, nn.Module], eigen: KFACEigen, fisher_type: FisherType | str = FisherType.MC,
        mc_samples: int = 1, seed: int = 0, model: nn.Module | None = None, chunk_rows: int = 128,
    ) -> None:
        super().__init__(modules, fisher_type, mc_samples, seed, EKFAC_TARGET_STREAM, model)
        self.eigen, self.chunk_rows = eigen, chunk_rows
        self.sums = {
            name: torch.zeros(layer.QG.shape[0], layer.QA.shape[0], dtype=torch.float64, device=layer.QA.device)
            for name, layer in eigen.layers.items() if name in modules
        }

    def _add_inputs(self, inputs: dict[str, Tensor]) -> None:
        pass

    def _add_grads(self, inputs: dict[str, Tensor], grad_outputs: dict[str, Tensor]) -> None:
        for name, total in self.sums.items():
            x, g = inputs[name], grad_outputs[name]
            layer = self.eigen.layers[name]
            like = dict(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))  # bf16 captures: fp32
            q_a, q_g = layer.QA.to(**like), layer.QG.to(**like)
            for i in range(0, x.shape[0], self.chunk_rows):
                rows = grouped_gradients(self.modules[name], x[i : i + self.chunk_rows], g[i : i + self.chunk_rows], 1)
                total += (q_g.T @ rows @ q_a).square().sum(dim=0).to(total)

    def state_tensors(self) -> dict[str, Tensor]:
        """The raw sums (views), to be summed across ranks in place."""
        return {**{f"{name}.corr_sum": total for name, total in self.sums.items()}, "num_rows": self.num_rows}

    def finalize(self) -> KFACEigen:
        """A copy of the eigenbasis with ``corrected = corr_sum / (R mc_samples)`` per layer."""
        normaliser = self._pass_normaliser()
        layers = {
            name: replace(layer, corrected=(self.sums[name] / normaliser).to(layer.lamA.dtype))
            for name, layer in self.eigen.layers.items() if name in self.sums
        }
        return replace(self.eigen, layers=layers)


def fit_eigenvalue_correction(
    eps_model: EpsModel, schedule: DiffusionSchedule, modules: dict[str, nn.Module], eigen: KFACEigen,
    batches: Iterable[dict], num_draws: int, seed: int = 0, draw_scheme: DrawScheme | str = DrawScheme.INDEPENDENT,
    fisher_type: FisherType | str | None = None, mc_samples: int = 1, model: nn.Module | None = None,
    progressbar: bool = False,
) -> KFACEigen:
    """EK-FAC: a second pass over the data replacing ``lamG lamA^T`` by the per-row second moments.

    Args are those of ``fit_kfac_factors``; ``fisher_type`` defaults to the eigenbasis' own.

    Returns:
        The eigenbasis with ``corrected`` eigenvalues, shape (out, in+1) per layer.
    """
    start = time.perf_counter()
    fisher_type = eigen.fisher_type if fisher_type is None else fisher_type
    accumulator = EigenvalueCorrectionAccumulator(modules, eigen, fisher_type, mc_samples, seed, model)
    iterate_ddpm_batches(accumulator, eps_model, schedule, batches, num_draws, seed, draw_scheme, progressbar, "EK-FAC")
    corrected = accumulator.finalize()
    elapsed = time.perf_counter() - start
    log.info("Fitted EK-FAC eigenvalues on %d rows in %.1f s", int(accumulator.num_rows.item()), elapsed)
    return corrected

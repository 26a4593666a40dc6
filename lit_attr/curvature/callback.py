"""``KFACCallback``: K-FAC factors of the MC-Fisher (paper eq. 10, 12) in a final pass over the data.

- After ``fit`` (``on_train_end``): one pass over the training data with the EMA weights; the
  factors are all-reduced across ranks and saved next to the run (``factors_path``).
- Before attribution (``on_predict_start`` of a ``contracts.CurvatureConsumer`` such as
  ``InfluenceModule``): ``provide`` loads the factors stored for the ``CurvatureRequest``'s model,
  data and settings; otherwise each rank accumulates over its shard of the attribution data, the
  sums are all-reduced, rank 0 saves them, and the eigendecomposition (optionally
  eigenvalue-corrected, EK-FAC) is handed to the module.

YAML refers to it as ``callbacks.curvature.KFACCallback``.

Normalisation layers are not K-FAC'd: their parameters are held fixed by the influence
computation (paper App. G.3).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from lit_attr.contracts import CurvatureConsumer, CurvatureRequest
from lit_attr.curvature.accumulators import iterate_ddpm_batches
from lit_attr.curvature.eigen import EigenvalueCorrectionAccumulator, KFACEigen, eigendecompose_factors
from lit_attr.curvature.factors_io import REFIT_FIX, factors_exist, factors_path, load_factors, save_factors
from lit_attr.curvature.fisher import FisherType, FisherTypeName
from lit_attr.curvature.kfac import KFACAccumulator, KFACApprox, KFACApproxName, KFACFactors
from lit_attr.curvature.layers import select_kfac_modules
from lit_attr.diffusion.draws import CurvatureDrawSchemeName, DrawScheme
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.errors import ConfigError, NumericalError
from lit_attr.fingerprints import dataset_fingerprint, model_hash
from lit_attr.storage import metadata_differences
from lit_attr.validation import check_finite

log = logging.getLogger(__name__)


class KFACCallback(L.Callback):
    """Fits, all-reduces, saves and loads the K-FAC curvature.

    Args:
        num_draws: S, (timestep, noise) draws per training example (stream ``curvature``).
        fisher_type: ``mc`` (eq. 10, default), ``empirical`` (eq. 11) or ``type-2`` (exact, D passes).
        kfac_approx: ``expand`` (default) or ``reduce``.
        mc_samples: MC-Fisher target draws per row.
        eigenvalue_correction: EK-FAC (a second pass; George et al. 2018).
        seed: seed of the draws and targets (None: the module's ``seed``, else 0).
        draw_scheme: ``independent`` or ``stratified`` (None: the per-example twin of the module's
            ``draw_scheme``, ``DrawScheme.for_curvature``). Never shared: the factors estimate an
            expectation over the data and timesteps, and S draws shared by every example would fit the
            GGN on only S timesteps and noises.
        factors_path: where to save/load the factors (None: ``<output_dir>/factors/factors.safetensors``
            for attribution, ``<default_root_dir>/factors/factors.safetensors`` after fit).
        fit_after_training: run the pass at the end of ``fit``.
        progressbar: show progress of the pass on rank 0.
    """

    def __init__(
        self,
        num_draws: int = 16,
        fisher_type: FisherTypeName = "mc",
        kfac_approx: KFACApproxName = "expand",
        mc_samples: int = 1,
        eigenvalue_correction: bool = False,
        seed: int | None = None,
        draw_scheme: CurvatureDrawSchemeName | None = None,
        factors_path: str | None = None,
        fit_after_training: bool = True,
        progressbar: bool = True,
    ) -> None:
        if num_draws < 1:
            raise ConfigError(f"KFACCallback num_draws must be >= 1, got {num_draws}.")
        self.num_draws, self.mc_samples = num_draws, mc_samples
        self.fisher_type, self.kfac_approx = FisherType(fisher_type), KFACApprox(kfac_approx)
        self.eigenvalue_correction = eigenvalue_correction
        self.seed, self.draw_scheme = seed, None if draw_scheme is None else DrawScheme(draw_scheme)
        if self.draw_scheme is not None and self.draw_scheme.is_shared:
            raise ConfigError(f"KFACCallback draw_scheme={draw_scheme!r}: the curvature draws cannot be shared across "
                              "examples (the factors would see only num_draws timesteps); use independent or "
                              "stratified, or leave it unset to follow the module's scheme per example.")
        self.factors_path = factors_path
        self.fit_after_training, self.progressbar = fit_after_training, progressbar

    # ------------------------------------------------------------------ hooks
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.fit_after_training:
            return
        path = Path(self.factors_path or factors_path(trainer.default_root_dir))
        unet = pl_module.attribution_unet
        # a training module has no attribution seed or draw scheme: this callback's, else 0 / independent
        metadata = self.settings(seed=self.resolved_seed(None), scheme=self.resolved_scheme(DrawScheme.INDEPENDENT))
        metadata.update(model_hash=model_hash(unet), data=dataset_fingerprint(trainer.train_dataloader.dataset))
        self.fit(trainer, unet, pl_module.schedule, trainer.train_dataloader, metadata, path)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        request = pl_module.curvature_request() if isinstance(pl_module, CurvatureConsumer) else None
        if request is not None:
            pl_module.set_curvature(self.provide(trainer, request))

    def provide(self, trainer: L.Trainer, request: CurvatureRequest) -> KFACEigen:
        """The curvature of ``request``: loaded when stored with the same settings (and not ``refit``), else fitted."""
        metadata = {**self.settings(seed=self.resolved_seed(request.seed),
                                    scheme=self.resolved_scheme(request.draw_scheme)), **request.identity}
        path = Path(self.factors_path or request.factors_path)
        eigen = None if request.refit else self.load(path, metadata)
        if eigen is None:
            eigen = self.fit(trainer, request.unet, request.schedule, request.data(), metadata, path)
        return eigen

    # ------------------------------------------------------------------ work
    def settings(self, seed: int, scheme: DrawScheme) -> dict[str, Any]:
        """The arguments that determine the factors (stored with them, compared on load)."""
        return {"num_draws": self.num_draws, "fisher_type": self.fisher_type.value, "kfac_approx": self.kfac_approx.value,
                "mc_samples": self.mc_samples, "eigenvalue_correction": self.eigenvalue_correction, "seed": seed,
                "draw_scheme": scheme.value}

    def resolved_seed(self, module_seed: int | None) -> int:
        """The seed in force: this callback's, else the module's ``module_seed``, else 0."""
        return self.seed if self.seed is not None else int(module_seed or 0)

    def resolved_scheme(self, module_scheme: DrawScheme | str) -> DrawScheme:
        """The draw scheme in force: this callback's, else the per-example twin of the module's."""
        if self.draw_scheme is not None:
            return self.draw_scheme
        return DrawScheme(module_scheme).for_curvature()

    def load(self, path: Path, metadata: dict[str, Any]) -> KFACEigen | None:
        """The stored curvature if it was made with ``metadata``; None if absent or different.

        Raises:
            DamagedOutputError: the file is unreadable or fails its checksum.
            NumericalError: the factors hold NaN/Inf or cannot be eigendecomposed (naming the file and layer).
        """
        if not factors_exist(path):
            return None
        factors = load_factors(path)
        differences = metadata_differences(factors.metadata, metadata)
        if differences:
            log.warning("Refitting the curvature: %s was made with other settings (%s).", path, sorted(differences))
            return None
        try:
            eigen = eigendecompose_factors(factors)
        except NumericalError as error:
            raise NumericalError(f"K-FAC factors {path}: {error}; {REFIT_FIX}") from None
        corrected_path = _corrected_path(path)
        if self.eigenvalue_correction:
            if not corrected_path.exists():
                return None
            corrected = load_file(str(corrected_path))
            for name, layer in eigen.layers.items():
                layer.corrected = corrected[name].to(layer.lamA.dtype)
            _check_corrected(eigen, f"EK-FAC eigenvalues {corrected_path}", REFIT_FIX)
        log.info("Loaded K-FAC curvature from %s", path)
        return eigen

    def fit(self, trainer: L.Trainer, unet: torch.nn.Module, schedule: torch.nn.Module, loader: DataLoader,
            metadata: dict[str, Any], path: Path) -> KFACEigen:
        """One pass (two with EK-FAC) over ``loader`` on every rank, all-reduced; rank 0 saves to ``path``."""
        start = time.perf_counter()
        modules = select_kfac_modules(unet)
        seed, scheme = metadata["seed"], DrawScheme(metadata["draw_scheme"])
        was_training = unet.training
        unet.eval()
        progress = self.progressbar and trainer.is_global_zero
        accumulator = KFACAccumulator(modules, self.fisher_type, self.kfac_approx, self.mc_samples, seed, unet)
        with trainer.precision_plugin.forward_context():  # --trainer.precision bf16-mixed: autocast, fp32 sums
            iterate_ddpm_batches(accumulator, unet_eps_model(unet), schedule, loader, self.num_draws, seed, scheme,
                                 progress, "K-FAC factors")
        _all_reduce(trainer, accumulator.state_tensors())
        factors = accumulator.finalize()
        eigen = eigendecompose_factors(factors)
        if self.eigenvalue_correction:
            corrector = EigenvalueCorrectionAccumulator(modules, eigen, self.fisher_type, self.mc_samples, seed, unet)
            with trainer.precision_plugin.forward_context():
                iterate_ddpm_batches(corrector, unet_eps_model(unet), schedule, loader, self.num_draws, seed, scheme,
                                     progress, "EK-FAC eigenvalues")
            _all_reduce(trainer, corrector.state_tensors())
            eigen = corrector.finalize()
            _check_corrected(eigen, "EK-FAC eigenvalue pass", "a training image or the model's output is not finite")
        unet.train(was_training)
        elapsed = time.perf_counter() - start
        if trainer.is_global_zero:
            self._save(path, factors, eigen, {**metadata, "elapsed_s": round(elapsed, 2)})
            print(f"Fitted K-FAC curvature on {factors.num_rows} rows in {elapsed:.1f} s -> {path}")
        trainer.strategy.barrier("kfac_saved")
        return eigen

    def _save(self, path: Path, factors: KFACFactors, eigen: KFACEigen, metadata: dict[str, Any]) -> None:
        if self.eigenvalue_correction:
            path.parent.mkdir(parents=True, exist_ok=True)
            corrected = {name: layer.corrected.contiguous().cpu() for name, layer in eigen.layers.items()}
            save_file(corrected, str(_corrected_path(path)))
        save_factors(path, factors, metadata)  # written last: its presence means the curvature is complete


def _check_corrected(eigen: KFACEigen, stage: str, cause: str) -> None:
    check_finite({name: layer.corrected for name, layer in eigen.layers.items()}, stage, cause)


def _corrected_path(path: Path) -> Path:
    return path.with_name(path.stem + "_ekfac_eigenvalues.safetensors")


def _all_reduce(trainer: L.Trainer, tensors: dict[str, torch.Tensor]) -> None:
    """Sum every tensor across ranks in place (no-op on one process)."""
    if trainer.world_size <= 1:
        return
    for tensor in tensors.values():
        tensor.copy_(trainer.strategy.reduce(tensor, reduce_op="sum"))

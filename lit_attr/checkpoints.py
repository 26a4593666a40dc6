"""Lightning checkpoints of ``DDPMModule``: reading with clear errors, architecture checks, random state.

- ``read_checkpoint`` refuses a path that is missing, a folder, unreadable, or not a Lightning
  checkpoint of lit-attr, naming the flag and the fix (instead of ``KeyError: 'pytorch-lightning_version'``).
- ``architecture`` / ``check_same_architecture`` compare what determines the weights' shapes and
  meaning (image shape, U-Net, diffusion schedule, pixel or latent space and the VAE) between a
  checkpoint and the configured model; ``check_resume`` does so for the model class a training
  config names (``DDPMModule`` or the ``VAEModule`` of a latent DDPM).
- ``capture_rng_states`` / ``restore_rng_states``: the global torch (CPU and CUDA), numpy and
  python generators, stored in every training checkpoint so that a resumed run draws the same
  timesteps, noise, dropout masks and epoch orders as an uninterrupted one.
"""

from __future__ import annotations

import inspect
import json
import random
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lit_attr.ddpm_config import DiffusionConfig, as_config
from lit_attr.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from lit_attr.ddpm_module import DDPMModule

LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
RNG_STATES_KEY = "lit_attr_rng_states"
"""Checkpoint key of the global random states (``capture_rng_states``)."""
ARCHITECTURE_KEYS = ("image_shape", "unet", "diffusion", "latent", "vae_config", "vae")
"""Entries of ``architecture`` that fix the weights' shapes and meaning (``DDPMModule``: image shape, U-Net
(``unet``, or the diffusers config of an imported one), schedule, whether it is latent and its VAE's config;
``VAEModule``: image shape, ``vae``)."""
MAX_LISTED_DIFFERENCES = 6
"""Differing settings named in one error (an imported diffusers U-Net config can differ in dozens)."""
TRAINED_CHECKPOINT_HINT = "pass the .ckpt written by train.py (e.g. runs/digits/checkpoints/last.ckpt)"
VAE_CHECKPOINT_HINT = ("a VAEModule checkpoint (the autoencoder of a latent DDPM) resumes only with its own config, "
                       "e.g. train.py fit --config configs/vae_digits.yaml")


def read_checkpoint(path: str | Path, flag: str = "--ckpt_path") -> dict[str, Any]:
    """Load a Lightning checkpoint of ``DDPMModule`` (on CPU, memory-mapped) or explain why not.

    Raises:
        CheckpointError: missing path, a folder, unreadable file, not a Lightning checkpoint, or a
            Lightning checkpoint of another module.
    """
    checkpoint = read_lightning_checkpoint(path, flag)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "unet" not in hparams:
        kind = f"{VAE_CHECKPOINT_HINT}; " if isinstance(hparams.get("vae"), dict) else ""
        raise CheckpointError(f"{flag} {path} is a Lightning checkpoint of another model (no U-Net hyperparameters); "
                              f"{kind}{TRAINED_CHECKPOINT_HINT}.")
    return checkpoint


def read_lightning_checkpoint(path: str | Path, flag: str = "--ckpt_path") -> dict[str, Any]:
    """Load any Lightning checkpoint (on CPU, memory-mapped) or explain why not (see ``read_checkpoint``)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{flag} {path} is a folder; {TRAINED_CHECKPOINT_HINT}.")
    if not path.is_file():
        raise CheckpointError(f"{flag} {path} does not exist; {TRAINED_CHECKPOINT_HINT}.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{flag} {path} is not a PyTorch checkpoint (not a torch.save archive); "
                              f"{TRAINED_CHECKPOINT_HINT}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same explanation
        first = " ".join(str(error).split())[:120]
        raise CheckpointError(f"{flag} {path} is not a readable PyTorch checkpoint ({type(error).__name__}: "
                              f"{first}); {TRAINED_CHECKPOINT_HINT}.") from None
    if not isinstance(checkpoint, dict) or LIGHTNING_VERSION_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{flag} {path} is a PyTorch file but not a Lightning checkpoint (no "
                              f"'{LIGHTNING_VERSION_KEY}'); {TRAINED_CHECKPOINT_HINT}.")
    return checkpoint


def check_resume(path: str | Path, model_class: type, configured: dict[str, Any]) -> None:
    """``--ckpt_path`` of a training config naming ``model_class`` (init arguments ``configured``), checked
    before anything is built: a ``DDPMModule`` resumes a DDPM checkpoint of the same architecture, a ``VAEModule``
    a VAE checkpoint of the same VAE; any other LightningModule a readable Lightning checkpoint.

    Raises:
        CheckpointError: unreadable, of another model kind, or of another architecture.
    """
    from lit_attr.ddpm_module import DDPMModule
    from lit_attr.latent.vae_module import VAEModule

    configured = {k: v for k, v in configured.items() if k != "image_shape"}  # linked from the data; checked on load
    if issubclass(model_class, DDPMModule):
        check_same_architecture(read_checkpoint(path)["hyper_parameters"], configured, path)
        return
    checkpoint = read_lightning_checkpoint(path)
    if not issubclass(model_class, VAEModule):
        return
    stored = checkpoint.get("hyper_parameters") or {}
    if not isinstance(stored.get("vae"), dict):
        raise CheckpointError(f"--ckpt_path {path} is not a VAEModule checkpoint but the config trains the autoencoder "
                              f"({model_class.__name__}); pass the last.ckpt of a run of this config, or drop "
                              "--ckpt_path to start a new run.")
    check_same_architecture(stored, configured, path, vae_architecture)


def architecture(hparams: dict[str, Any]) -> dict[str, Any]:
    """The architecture part of ``DDPMModule`` hyperparameters, normalised (dataclass defaults filled, lists).

    An imported diffusers U-Net (``diffusers_unet_config``) replaces ``unet``; ``latent`` says whether the
    model works on VAE latents (a ``vae`` folder or a stored ``vae_config``); ``vae_config`` (when stored) is
    compared only against another stored one (a config names the VAE folder, whose weights the checkpoint holds).
    """
    from lit_attr.diffusion.unet import UNetConfig

    unet = hparams.get("diffusers_unet_config") or asdict(as_config(hparams.get("unet"), UNetConfig))
    arch = {"unet": unet, "diffusion": asdict(as_config(hparams.get("diffusion"), DiffusionConfig)),
            "latent": bool(hparams.get("vae") or hparams.get("vae_config"))}
    if hparams.get("vae_config"):
        arch["vae_config"] = hparams["vae_config"]
    if hparams.get("image_shape") is not None:
        arch["image_shape"] = list(hparams["image_shape"])
    return json.loads(json.dumps(arch))


def vae_architecture(hparams: dict[str, Any]) -> dict[str, Any]:
    """The architecture part of ``VAEModule`` hyperparameters (image shape, ``vae``), normalised."""
    from lit_attr.latent.vae_module import VAEConfig  # (imports ddpm_module, which imports this module)

    arch: dict[str, Any] = {"vae": asdict(as_config(hparams.get("vae"), VAEConfig))}
    if hparams.get("image_shape") is not None:
        arch["image_shape"] = list(hparams["image_shape"])
    return json.loads(json.dumps(arch))


def architecture_differences(stored: dict[str, Any], configured: dict[str, Any]) -> list[str]:
    """``"unet.block_out_channels: checkpoint [16, 32], config [32, 64]"`` for every differing entry."""
    differences: list[str] = []
    for key in ARCHITECTURE_KEYS:
        if key not in stored or key not in configured:
            continue
        a, b = stored[key], configured[key]
        if isinstance(a, dict) and isinstance(b, dict):
            differences += [f"{key}.{k}: checkpoint {a.get(k)}, config {b.get(k)}"
                            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            differences.append(f"{key}: checkpoint {a}, config {b}")
    return differences


def check_same_architecture(stored: dict[str, Any], configured: dict[str, Any], path: str | Path,
                            normalise: Callable[[dict[str, Any]], dict[str, Any]] = architecture) -> None:
    """Refuse to resume ``path`` into a differently configured model, naming both.

    Args:
        normalise: hyperparameters -> architecture (``architecture`` for ``DDPMModule``, ``vae_architecture``).

    Raises:
        CheckpointError: listing the differing architecture settings (at most ``MAX_LISTED_DIFFERENCES``).
    """
    differences = architecture_differences(normalise(stored), normalise(configured))
    if len(differences) > MAX_LISTED_DIFFERENCES:
        differences = differences[:MAX_LISTED_DIFFERENCES] + [f"{len(differences) - MAX_LISTED_DIFFERENCES} more"]
    if differences:
        raise CheckpointError(
            f"--ckpt_path {path} holds another architecture than the config ({'; '.join(differences)}); resume with "
            "the config it was trained with, or drop --ckpt_path (and use another --trainer.default_root_dir) to "
            "start a new run.")


def capture_rng_states() -> dict[str, Any]:
    """The global torch, CUDA, numpy and python random states (plain types: loads with ``weights_only``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_states``."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def module_from_checkpoint(checkpoint: dict[str, Any], path: str | Path,
                           map_location: str | torch.device = "cpu") -> DDPMModule:
    """The ``DDPMModule`` (eval mode) of a checkpoint read by ``read_checkpoint``.

    Raises:
        CheckpointError: the stored hyperparameters are refused by today's checks (e.g. beta_end >= 1).
    """
    from lit_attr.ddpm_module import DDPMModule  # (imports this module)

    accepted = inspect.signature(DDPMModule.__init__).parameters
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k in accepted}
    try:
        module = DDPMModule(**hparams)
    except ConfigError as error:
        raise CheckpointError(f"{path} was trained with settings that are now refused ({error}); retrain the "
                              "model with valid settings.") from None
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(map_location).eval()

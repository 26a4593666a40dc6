"""The training set's latents, encoded once and cached on disk; a dataset that serves them.

``LatentDataset`` items keep the base item (index, label) with ``"image"`` replaced by the latent
(what the diffusion model is trained on and differentiated at) and the original image under
``"pixels"`` (for figures). The cache file records the VAE hash, the data fingerprint and the
encoding (the posterior mean, ``lit_attr.latent.autoencoder.encode_mean``); a cache made for
anything else is recomputed, never reused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from lit_attr.data.indexed import IndexedDataset
from lit_attr.fingerprints import dataset_fingerprint, model_hash
from lit_attr.latent.autoencoder import ENCODE_BATCH, encode_mean
from lit_attr.storage import write_atomic

log = logging.getLogger(__name__)

LATENT_ENCODING = "posterior_mean"
"""How images become latents: the scaled posterior mean (deterministic; no encoder sampling)."""


class LatentDataset(IndexedDataset):
    """``base`` with each item's ``"image"`` replaced by its latent (``"pixels"`` keeps the image).

    Args:
        base: the pixel dataset.
        latents: (N, c, h, w), row p the latent of ``base[p]``.
    """

    def __init__(self, base: IndexedDataset, latents: Tensor) -> None:
        if len(latents) != len(base):
            raise ValueError(f"Got {len(latents)} latents for {len(base)} examples.")
        self.base, self.latents, self.indices = base, latents, list(base.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        item = dict(self.base[position])
        item["pixels"] = item["image"]
        item["image"] = self.latents[position]
        return item


def encode_dataset(vae: AutoencoderKL, dataset: IndexedDataset) -> Tensor:
    """Latents (N, c, h, w) of every example, in dataset order."""
    parts = []
    for start in range(0, len(dataset), ENCODE_BATCH):
        images = torch.stack([dataset[p]["image"] for p in range(start, min(start + ENCODE_BATCH, len(dataset)))])
        parts.append(encode_mean(vae, images).cpu())
    return torch.cat(parts)


def latent_cache_identity(vae: AutoencoderKL, dataset: IndexedDataset) -> dict[str, Any]:
    """What a cache of latents belongs to: the VAE weights, the data and the encoding."""
    return {"vae": model_hash(vae), "data": dataset_fingerprint(dataset), "encoding": LATENT_ENCODING}


def load_or_encode_latents(vae: AutoencoderKL, dataset: IndexedDataset, path: str | Path | None) -> Tensor:
    """The dataset's latents from ``path`` when it was made for this VAE and data, else encoded (and saved there)."""
    identity = latent_cache_identity(vae, dataset)
    path = None if path is None else Path(path)
    if path is not None and path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("identity") == identity:
            return stored["latents"]
        log.warning("%s was made for another VAE or data; encoding the training set again.", path)
    latents = encode_dataset(vae, dataset)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: torch.save({"identity": identity, "latents": latents}, tmp))
    return latents

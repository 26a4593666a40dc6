"""Short content hashes that tie stored results to the model and data they were computed from."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn


def model_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a module's state dict, names and values, in float32."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: torch.utils.data.Dataset, num_probe: int = 8) -> dict[str, object]:
    """Size, hash of the stable indices, and a hash of a few evenly spaced images."""
    indices = np.asarray(getattr(dataset, "indices", range(len(dataset))), dtype=np.int64)
    digest = hashlib.sha256(indices.tobytes())
    for position in np.linspace(0, len(dataset) - 1, num=min(num_probe, len(dataset))).round().astype(int):
        digest.update(dataset[int(position)]["image"].to(torch.float32).numpy().tobytes())
    return {"num_examples": len(dataset), "index_and_content_hash": digest.hexdigest()[:16]}

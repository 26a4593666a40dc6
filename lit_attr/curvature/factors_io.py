"""K-FAC factors on disk: one safetensors file per curvature (keys ``{layer}/A``, ``{layer}/G``), with the
settings it was fitted with and a checksum of its tensors in the header; written atomically.

The quadruple ``factors_path`` / ``save_factors`` / ``load_factors`` / ``factors_exist``; ``KFACCallback``
stores and reloads its factors through it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lit_attr.constants import FACTORS_DIR, FACTORS_FILE
from lit_attr.curvature.fisher import FisherType
from lit_attr.curvature.kfac import KFACApprox, KFACFactors
from lit_attr.errors import DamagedOutputError
from lit_attr.storage import write_atomic

REFIT_FIX = "delete the file or rerun attribute.py with --model.overwrite true to refit it."
FACTORS_KEY = "lit_attr_factors"
METADATA_KEY = "metadata"
CHECKSUM_KEY = "content_sha256"
"""Header entry: SHA-256 of every tensor's bytes (in key order), verified by ``load_factors``."""


def _tensors_checksum(tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def factors_path(output_dir: str | Path, name: str | None = None) -> Path:
    """Where the factors of a run live: ``output_dir/factors/factors.safetensors`` (or ``{name}.safetensors``)."""
    return Path(output_dir) / FACTORS_DIR / (FACTORS_FILE if name is None else f"{name}.safetensors")


def factors_exist(path: str | Path) -> bool:
    """Whether complete factors were saved at ``path`` (files are written atomically)."""
    return Path(path).is_file()


def save_factors(path: str | Path, factors: KFACFactors, metadata: dict | None = None) -> None:
    """Save factors as safetensors (keys ``{name}/A``, ``{name}/G``) with JSON metadata.

    The file is written to a temporary name first and then renamed, so a killed run never leaves
    a partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, g) in factors.factors.items():
        tensors[f"{name}/A"], tensors[f"{name}/G"] = a.detach().cpu().contiguous(), g.detach().cpu().contiguous()
    info = {
        "names": list(factors.factors), "num_rows": factors.num_rows, "fisher_type": factors.fisher_type.value,
        "kfac_approx": factors.kfac_approx.value, "mc_samples": factors.mc_samples,
    }
    extra = metadata if metadata is not None else factors.metadata
    meta = {FACTORS_KEY: json.dumps(info), METADATA_KEY: json.dumps(extra), CHECKSUM_KEY: _tensors_checksum(tensors)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_factors(path: str | Path, device: str | torch.device = "cpu") -> KFACFactors:
    """Load factors written by ``save_factors``; their metadata dict is in ``.metadata``.

    Raises:
        DamagedOutputError: the file cannot be read or its tensors do not match the stored checksum.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata()
            info = json.loads(meta[FACTORS_KEY])
            factors = {name: (handle.get_tensor(f"{name}/A"), handle.get_tensor(f"{name}/G")) for name in info["names"]}
    except Exception as error:  # noqa: BLE001 - truncated or foreign files fail in many ways
        raise DamagedOutputError(f"K-FAC factors {path} cannot be read ({type(error).__name__}: "
                                 f"{' '.join(str(error).split())[:100]}); {REFIT_FIX}") from None
    stored = meta.get(CHECKSUM_KEY)
    tensors = {key: t for name, (a, g) in factors.items() for key, t in ((f"{name}/A", a), (f"{name}/G", g))}
    if stored is not None and stored != _tensors_checksum(tensors):
        raise DamagedOutputError(f"K-FAC factors {path} do not match their checksum (changed after they were "
                                 f"written); {REFIT_FIX}")
    factors = {name: (a.to(device), g.to(device)) for name, (a, g) in factors.items()}
    return KFACFactors(
        factors, info["num_rows"], FisherType(info["fisher_type"]), KFACApprox(info["kfac_approx"]),
        info["mc_samples"], json.loads(meta[METADATA_KEY]),
    )

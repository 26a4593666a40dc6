"""Similarity baselines: cosine similarity of pixels or of CLIP image embeddings (paper section 4).

score[j, q] = cos(e(x_j), e(x_q)); larger means "more similar, so presumably more helpful", which has
the sign of the influence scores (positive: removing j is predicted to raise q's loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_attr.errors import ConfigError


def cosine_scores(train_embeddings: Tensor, query_embeddings: Tensor) -> Tensor:
    """(N, E) and (Q, E) -> (N, Q) cosine similarities in float64 (zero vectors give 0)."""
    a = F.normalize(train_embeddings.flatten(1).double(), dim=1)
    b = F.normalize(query_embeddings.flatten(1).double(), dim=1)
    return a @ b.T


def pixel_scores(train_images: Tensor, query_images: Tensor) -> Tensor:
    """Cosine similarity of raw pixels in [-1, 1]: (N, C, H, W), (Q, C, H, W) -> (N, Q)."""
    return cosine_scores(train_images, query_images)


def load_open_clip(model_name: str, pretrained_path: str) -> torch.nn.Module:
    """An open_clip model with weights from a *local* file (nothing is downloaded).

    ``model_name`` is an open_clip model name (e.g. ``ViT-B-32``) or the path of a model-config JSON
    file (open_clip's format; the model is then named after the file).

    Raises:
        ConfigError: if open_clip is not installed or the file does not exist.
    """
    from pathlib import Path

    try:
        import open_clip
    except ImportError:
        raise ConfigError("CLIP similarity needs open_clip: pip install open_clip_torch "
                          "(or pip install -e '.[clip]').") from None
    if not Path(pretrained_path).is_file():
        raise ConfigError(f"CLIP weights {pretrained_path} do not exist; point clip_weights to a local "
                          "open_clip checkpoint (weights are never downloaded).")
    if model_name.endswith(".json"):
        if not Path(model_name).is_file():
            raise ConfigError(f"CLIP model config {model_name} does not exist.")
        open_clip.add_model_config(model_name)
        model_name = Path(model_name).stem
    model = open_clip.create_model(model_name, pretrained=pretrained_path)
    return model.eval()


@torch.no_grad()
def clip_embeddings(model: torch.nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """CLIP image embeddings of [-1, 1] images (N, C, H, W): greyscale is repeated to RGB, the images are
    resized (bicubic) to the model's input size and normalised with CLIP's mean and std. Returns (N, E)."""
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = (images[start:start + batch_size].float() + 1) / 2
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False).clamp(0, 1)
        out.append(model.encode_image((x - mean.to(x.device)) / std.to(x.device)).float())
    return torch.cat(out)

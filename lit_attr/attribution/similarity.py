"""``attribute.py --method pixel`` / ``clip``: cosine similarity of every training image to every query (the
paper's similarity baselines, section 4), streamed row block by row block through ``ScoreWriter``::

    score[j, q] = cos(e(x_j), e(x_q))

with e the raw pixels in [-1, 1] (``pixel``) or a local open_clip model's image embedding (``clip``).
Higher means more similar, "so presumably more helpful": the sign of the influence scores. A latent
model's training images and queries are compared as pixels (their decoded images).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_attr.attribution.queries import QueryConfig
from lit_attr.attribution.scoring_module import ScoreDTypeName, ScoringModule
from lit_attr.baselines.similarity import clip_embeddings, cosine_scores, load_open_clip
from lit_attr.errors import ConfigError


class PixelCosineModule(ScoringModule):
    """Pixel cosine similarity of every training image to every query.

    Args:
        checkpoint: the trained DDPM (generates the queries; a query folder needs it for the image shape).
        output_dir: run folder for scores.npy, metadata.json, queries, report and figure.
        queries: where the queries come from (default: 8 generated samples).
        score_dtype: dtype of scores.npy.
        top_k: training examples per kind (positive, negative, neutral) in the report and figure.
        overwrite: discard an existing run in ``output_dir`` made with other settings.
    """

    method = "pixel"

    def __init__(self, checkpoint: str, output_dir: str = "runs/digits/attribution",
                 queries: QueryConfig | None = None, score_dtype: ScoreDTypeName = "float32",
                 top_k: int = 6, overwrite: bool = False) -> None:
        super().__init__(checkpoint, output_dir, queries, score_dtype, top_k, overwrite)
        self.query_embeddings: Tensor | None = None

    def run_metadata(self) -> dict[str, Any]:
        return {"method": self.method, "checkpoint": str(self.checkpoint), **self.identity(),
                "queries": self.query_identity()}

    def embed(self, images: Tensor) -> Tensor:
        """e(x): (B, C, H, W) in [-1, 1] -> (B, E)."""
        return images.flatten(1)

    def on_predict_start(self) -> None:
        """Embed the queries once."""
        self.query_embeddings = self.embed(self.queries.pixels.to(self.device))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """``{"index": (B,), "scores": (B, Q)}``: cosines of the batch's images to the queries."""
        images = batch["pixels"] if "pixels" in batch else batch["image"]
        with torch.no_grad():
            scores = cosine_scores(self.embed(images), self.query_embeddings)
        return {"index": batch["index"], "scores": scores}


class ClipCosineModule(PixelCosineModule):
    """Cosine similarity of CLIP image embeddings, from a local open_clip checkpoint (never downloaded).

    Args:
        clip_weights: the local open_clip checkpoint file (required).
        clip_model: open_clip model name (e.g. ``ViT-B-32``) or a model-config JSON file.
        **kwargs: as ``PixelCosineModule``.
    """

    method = "clip"

    def __init__(self, checkpoint: str, output_dir: str = "runs/digits/attribution",
                 queries: QueryConfig | None = None, clip_weights: str | None = None, clip_model: str = "ViT-B-32",
                 score_dtype: ScoreDTypeName = "float32", top_k: int = 6,
                 overwrite: bool = False) -> None:
        if not clip_weights:
            raise ConfigError("--method clip needs --model.clip_weights, a local open_clip checkpoint file (weights "
                              "are never downloaded); or choose --method pixel.")
        self.clip_model, self.clip_weights = clip_model, clip_weights
        clip = load_open_clip(clip_model, clip_weights)
        super().__init__(checkpoint, output_dir, queries, score_dtype, top_k, overwrite)
        self.clip = clip.requires_grad_(False)

    def run_metadata(self) -> dict[str, Any]:
        return {**super().run_metadata(), "clip_model": self.clip_model, "clip_weights": str(self.clip_weights)}

    def embed(self, images: Tensor) -> Tensor:
        return clip_embeddings(self.clip, images)

"""``PixelCosine`` and ``ClipCosine``: cosine similarity of every training image to every query, in pixel space
or in a local open_clip model's embedding space (the paper's similarity baselines); ``scores.npy`` (N, Q)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_attr.baselines.similarity import clip_embeddings, cosine_scores, load_open_clip
from lit_attr.constants import SCORES_FILE, SIMILARITY_SETTINGS_FILE
from lit_attr.methods.base import AttributionMethod, ScoreSet, ScoringInputs
from lit_attr.storage import read_json, write_atomic, write_json_atomic



class PixelCosine(AttributionMethod):
    """Cosine similarity of the raw pixels."""

    kind = "pixel"
    uses_model = False
    attribute_module = "lit_attr.attribution.similarity.PixelCosineModule"

    def settings(self) -> dict[str, Any]:
        """What the scores depend on (stored beside them, compared on rerun)."""
        return {"kind": self.kind}

    def similarity(self, images: Tensor, queries: Tensor) -> Tensor:
        """Scores (N, Q) of training ``images`` (N, C, H, W) against ``queries`` (Q, C, H, W)."""
        return cosine_scores(images, queries)

    def score(self, inputs: ScoringInputs) -> None:
        out = inputs.output_dir
        path, settings = out / SCORES_FILE, out / SIMILARITY_SETTINGS_FILE
        if path.exists():
            self.refuse_changed(out, read_json(settings) if settings.exists() else {}, self.settings())
            self.log("already scored.")
            return
        dataset = inputs.dataset
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        scores = self.similarity(images, inputs.query_images())
        write_json_atomic(settings, self.settings())
        write_atomic(path, lambda tmp: np.save(tmp, scores.float().numpy()))
        self.log("done.")

    def score_sets(self, output_dir: Path) -> list[ScoreSet]:
        scores = np.load(output_dir / SCORES_FILE)[:, None, None, :]
        return [ScoreSet(0, [self.kind], [0.0], scores, None, None)]


class ClipCosine(PixelCosine):
    """Cosine similarity of CLIP image embeddings (``clip_model`` loaded from the local ``clip_weights``)."""

    kind = "clip"
    attribute_module = "lit_attr.attribution.similarity.ClipCosineModule"

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "clip_model": self.config.clip_model, "clip_weights": self.config.clip_weights}

    def similarity(self, images: Tensor, queries: Tensor) -> Tensor:
        model = load_open_clip(self.config.clip_model, self.config.clip_weights)
        return cosine_scores(clip_embeddings(model, images), clip_embeddings(model, queries))

"""``ScoringModule``: the part every attribution LightningModule shares (``attribute.py --method NAME``).

It loads the trained DDPM, builds (or, on resume, reloads) the queries, and prepares the resumable
``ScoreStore`` whose rows ``ScoreWriter`` fills from ``predict_step``: one row per training example,
``num_score_columns()`` columns. Subclasses say what a row is (``InfluenceModule``: K-FAC influence,
eq. 6; ``ProjectedGradientModule``: TRAK features; ``SimilarityModule``: cosine similarities) and what
the scores depend on (``run_metadata``, compared on reopen: a changed setting is refused).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np

from lit_attr.attribution.queries import QueryConfig, QuerySet, build_queries
from lit_attr.constants import LATENTS_FILE, METADATA_FILE, QUERIES_FILE, TRAIN_INDICES_FILE
from lit_attr.contracts import ScoreTarget
from lit_attr.ddpm_config import as_config
from lit_attr.errors import ConfigError
from lit_attr.fingerprints import dataset_fingerprint, model_hash
from lit_attr.latent.cache import LatentDataset, load_or_encode_latents
from lit_attr.pipeline_io import load_ddpm_module
from lit_attr.storage import ScoreStore, mark_damaged, remove_run_files, verify_checksums
from lit_attr.validation import check_output_folder, integer

log = logging.getLogger(__name__)

ScoreDTypeName = Literal["float32", "float16"]
"""The dtypes of ``scores.npy`` (``--model.score_dtype``)."""


class ScoringModule(L.LightningModule):
    """Scores every training example of the data module against the queries, one row per example.

    Args:
        checkpoint: the trained DDPM: a Lightning checkpoint or a diffusers pipeline folder.
        output_dir: run folder for scores.npy, metadata.json, queries, report and figure.
        queries: where the queries come from (default: 8 generated samples).
        score_dtype: dtype of scores.npy.
        top_k: training examples per kind (positive, negative, neutral) in the report and figure.
        overwrite: discard an existing run in ``output_dir`` made with other settings.
    """

    def __init__(self, checkpoint: str, output_dir: str, queries: QueryConfig | None = None,
                 score_dtype: ScoreDTypeName = "float32", top_k: int = 6,
                 overwrite: bool = False) -> None:
        super().__init__()
        self.query_config = as_config(queries, QueryConfig)
        integer(top_k, "--model.top_k", low=1)
        self.checkpoint, self.output_dir = checkpoint, check_output_folder(output_dir, "--model.output_dir")
        self.score_dtype, self.top_k, self.overwrite = score_dtype, top_k, overwrite
        self.ddpm = load_ddpm_module(checkpoint)
        self.ddpm.requires_grad_(False)
        self.rows_remaining = True

    # ------------------------------------------------------------------ what subclasses define
    def run_metadata(self) -> dict[str, Any]:
        """Everything the scores depend on; compared when a run is resumed."""
        raise NotImplementedError

    def num_score_columns(self) -> int:
        """Columns of the score matrix: one per query."""
        return len(self.queries.images)

    def check_memory(self, batch_size: int) -> None:
        """Refuse a run the device cannot hold (nothing to check by default)."""

    def needs_trajectory(self) -> bool:
        """Whether generated queries must keep their sampling trajectory."""
        return False

    @property
    def store_dir(self) -> Path:
        """Folder of the streamed store (``output_dir``; TRAK streams its features into a subfolder)."""
        return self.output_dir

    def identity(self) -> dict[str, Any]:
        """Model and data the scores (and a curvature) belong to (stored, compared on load)."""
        return {"model_hash": self._model_hash, "data": self._data_fingerprint}

    def query_identity(self) -> dict[str, Any]:
        """The queries the scores refer to."""
        return {"source": self.queries.source, "hash": self.queries.fingerprint(),
                "config": self.query_config.metadata()}

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Check the data and memory, build the queries, and prepare (or resume) the score store.

        With ``overwrite`` every old output is deleted first, so a failed run leaves no stale report.
        """
        datamodule = self.trainer.datamodule
        if tuple(datamodule.image_shape) != tuple(self.ddpm.image_shape):
            raise ConfigError(f"The model was trained on images of shape {tuple(self.ddpm.image_shape)} but the data "
                              f"has {tuple(datamodule.image_shape)}: pass the training data's --data.* arguments.")
        dataset = datamodule.dataset
        if self.overwrite and self.trainer.is_global_zero:
            remove_run_files(self.output_dir)
            remove_run_files(self.store_dir)
        self.check_memory(datamodule.batch_size)
        self._model_hash = model_hash(self.ddpm.attribution_unet)
        if self.ddpm.is_latent:  # the scores also depend on the VAE that made the latents
            self._model_hash += "+vae:" + model_hash(self.ddpm.vae)
        self._data_fingerprint = dataset_fingerprint(dataset)
        if self.ddpm.is_latent:
            dataset = self._use_cached_latents(datamodule)
        self.queries = self._load_or_build_queries(dataset)
        self.row_of = {int(index): row for row, index in enumerate(dataset.indices)}
        self.store = self.prepare_store(self.store_dir, self.num_score_columns(), self.run_metadata())
        done_rows = self.store.done_indices()
        datamodule.exclude_indices = [int(dataset.indices[row]) for row in done_rows]
        self.rows_remaining = len(done_rows) < len(dataset)
        if not self.rows_remaining:
            log.info("All %d rows of %s are already scored.", len(dataset), self.store_dir)

    def prepare_store(self, folder: Path, num_columns: int, metadata: dict[str, Any]) -> ScoreStore:
        """A ``ScoreStore`` of (num_train, num_columns) in ``folder``: resumed when its metadata matches, else
        created with a copy of the queries and the training indices (rank 0; every rank waits).

        Raises:
            StoreMismatchError: the folder holds a run with other settings (on every rank, before any write).
        """
        indices = self.trainer.datamodule.dataset.indices
        store = ScoreStore(folder, len(indices), num_columns, metadata, self.score_dtype)
        resumable = store.check(overwrite=self.overwrite)
        if self.trainer.is_global_zero and not resumable:
            folder.mkdir(parents=True, exist_ok=True)
            self.queries.save(folder / QUERIES_FILE)
            np.save(folder / TRAIN_INDICES_FILE, np.asarray(indices, dtype=np.int64))
            store.create(files=[QUERIES_FILE, TRAIN_INDICES_FILE])
        self.trainer.strategy.barrier("store_prepared")
        return store

    def _use_cached_latents(self, datamodule: Any) -> LatentDataset:
        """Latent model: the training latents, encoded once (``output_dir/latents.pt``, reused while the VAE and data
        match); the data module then serves them, so the curvature, gradients and figures see latents + pixels."""
        if isinstance(datamodule.dataset, LatentDataset):
            return datamodule.dataset
        path = self.output_dir / LATENTS_FILE if self.trainer.is_global_zero else None
        latents = load_or_encode_latents(self.ddpm.vae, datamodule.dataset, path)
        datamodule.use_dataset(LatentDataset(datamodule.dataset, latents))
        return datamodule.dataset

    def _reused_queries_path(self) -> Path | None:
        """``queries.pt`` of an earlier run in the folder that this run resumes (None: build the queries)."""
        path = self.store_dir / QUERIES_FILE
        has_run = path.exists() and (self.store_dir / METADATA_FILE).exists()
        return path if has_run and not self.overwrite else None

    def _load_or_build_queries(self, dataset: Any) -> QuerySet:
        path = self._reused_queries_path()
        if path is not None:
            verify_checksums(self.store_dir, [QUERIES_FILE])
            try:
                return QuerySet.load(path)
            except Exception as error:  # noqa: BLE001 - any unreadable file is damaged
                raise mark_damaged(self.store_dir, [QUERIES_FILE], f"unreadable: {type(error).__name__}") from None
        return build_queries(self.query_config, self.ddpm, dataset, record_trajectory=self.needs_trajectory())

    def score_target(self) -> ScoreTarget:
        """Where ``ScoreWriter`` puts the predicted rows (``contracts.ScoreProducer``); prepared in ``setup``."""
        return ScoreTarget(self.store, self.row_of)

    def finish(self) -> None:
        """After ``Trainer.predict`` (rank 0): turn the streamed store into ``output_dir/scores.npy`` (N, Q) when it
        is not that already (TRAK's closed form); nothing to do by default."""

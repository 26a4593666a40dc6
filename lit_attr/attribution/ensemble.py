"""``attribute.py --method ensemble``: the mean of finished runs of several models on the same data and queries.

    score[j, q] = (1 / K) sum_k score_k[j, q]

over K finished ``attribute.py`` runs (the members), one per model trained on the same data (other seeds,
or checkpoints): a TRAK-style ensemble over training runs. The influence of one model carries that
training run's idiosyncrasies; averaging over models keeps what they share. On the patches LDS
benchmark (common seeds), K-FAC influence averaged over 4 models scored 0.094 against one model's 0.009
with the same S = 32 draws each (``kfac_ensemble4``, README "Results"). Each member is an ordinary run (resumable, on any devices); run the second
and later members on the first run's queries (``--model.queries.file <first run>/queries.pt``).

The members must be finalized, of one method and measurement, on the same training examples in the
same order, and on the same query images; anything else is refused in one line. Rows stream through
``ScoreWriter`` like every method's, so the report, figure and TensorBoard image come out as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_attr.attribution.queries import QuerySet
from lit_attr.attribution.scoring_module import ScoreDTypeName, ScoringModule
from lit_attr.constants import FINALIZED_KEY, METADATA_FILE, QUERIES_FILE, TRAIN_INDICES_FILE
from lit_attr.errors import ConfigError
from lit_attr.storage import load_scores, read_json, verify_checksums

MEMBERS_FLAG = "--model.members"
COMPARED_KEYS = ("method", "measurement")
"""Settings every member must share (its scores answer the same question on the same scale)."""


class EnsembleModule(ScoringModule):
    """Averages the scores of finished runs (``members``) row by row.

    Args:
        members: two or more finished ``attribute.py`` run folders, one per model.
        checkpoint: a model for the image shape and the figure (None: the first member's checkpoint).
        output_dir: run folder for scores.npy, metadata.json, queries, report and figure.
        score_dtype: dtype of scores.npy.
        top_k: training examples per kind (positive, negative, neutral) in the report and figure.
        overwrite: discard an existing run in ``output_dir`` made with other settings.
    """

    method = "ensemble"

    def __init__(self, members: list[str], checkpoint: str | None = None, output_dir: str = "runs/digits/ensemble",
                 score_dtype: ScoreDTypeName = "float32", top_k: int = 6,
                 overwrite: bool = False) -> None:
        self.members = [Path(m).expanduser() for m in members or []]
        if len(self.members) < 2:
            raise ConfigError(f"--method ensemble needs {MEMBERS_FLAG}: two or more finished attribute.py run "
                              f"folders (one per model); got {[str(m) for m in self.members]}.")
        self.member_metadata = [self._finished_metadata(m) for m in self.members]
        super().__init__(checkpoint or self.member_metadata[0]["checkpoint"], output_dir, None, score_dtype, top_k,
                         overwrite)
        self.member_scores: list[np.ndarray] = []

    @staticmethod
    def _finished_metadata(member: Path) -> dict[str, Any]:
        if not (member / METADATA_FILE).is_file():
            raise ConfigError(f"{MEMBERS_FLAG}: {member} holds no attribute.py run (no {METADATA_FILE}); give the "
                              "--model.output_dir of a finished run.")
        metadata = read_json(member / METADATA_FILE)
        if not metadata.get(FINALIZED_KEY):
            raise ConfigError(f"{MEMBERS_FLAG}: the run in {member} is not finished; rerun its attribute.py command "
                              "(it resumes) before averaging it.")
        return metadata

    def run_metadata(self) -> dict[str, Any]:
        members = [{"path": str(path.resolve()), "checkpoint": meta.get("checkpoint"),
                    "model_hash": meta.get("model_hash")} for path, meta in zip(self.members, self.member_metadata)]
        return {"method": self.method, "members": members, "queries": self.query_identity(),
                "data": self.identity()["data"],
                **{f"member_{key}": self.member_metadata[0].get(key) for key in COMPARED_KEYS}}

    def _load_or_build_queries(self, dataset: Any) -> QuerySet:
        """The members' queries (all must be the same images), after checking every member against the data."""
        queries = []
        for member, metadata in zip(self.members, self.member_metadata):
            verify_checksums(member, [QUERIES_FILE, TRAIN_INDICES_FILE])
            queries.append(QuerySet.load(member / QUERIES_FILE))
            self._check_member(member, metadata, dataset, queries[0], queries[-1])
        return queries[0]

    def _check_member(self, member: Path, metadata: dict[str, Any], dataset: Any, first: QuerySet,
                      own: QuerySet) -> None:
        fix = "average runs of one method on the data given by --data.* and on the same queries"
        for key in COMPARED_KEYS:
            if metadata.get(key) != self.member_metadata[0].get(key):
                raise ConfigError(f"{MEMBERS_FLAG}: {member} has {key} {metadata.get(key)!r} but {self.members[0]} "
                                  f"has {self.member_metadata[0].get(key)!r}; {fix}.")
        indices = np.load(member / TRAIN_INDICES_FILE)
        if not np.array_equal(indices, np.asarray(dataset.indices)):
            raise ConfigError(f"{MEMBERS_FLAG}: {member} scored other training examples ({len(indices)} rows) than "
                              f"the --data.* given here ({len(dataset.indices)}); {fix}.")
        if own.fingerprint() != first.fingerprint():
            raise ConfigError(f"{MEMBERS_FLAG}: {member} scored other query images than {self.members[0]}; rerun it "
                              f"with --model.queries.file={self.members[0] / QUERIES_FILE}.")

    def on_predict_start(self) -> None:
        """Open every member's scores (memory-mapped)."""
        self.member_scores = [load_scores(member) for member in self.members]

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """``{"index": (B,), "scores": (B, Q)}``: the members' rows of the batch's examples, averaged."""
        rows = np.asarray([self.row_of[int(index)] for index in batch["index"]])
        total = np.zeros((len(rows), self.num_score_columns()), dtype=np.float64)
        for scores in self.member_scores:
            total += scores[rows]
        return {"index": batch["index"], "scores": torch.from_numpy(total / len(self.member_scores)).float()}

"""After scoring: the top-k report (JSON, markdown) and the influence figure (PNG, TensorBoard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_attr.constants import FIGURE_FILE, METADATA_FILE, QUERIES_PNG, REPORT_FILES, REPORT_JSON, REPORT_MD
from lit_attr.report import build_report, figure_tensor, influence_figure, top_influences, write_report
from lit_attr.storage import load_scores, read_json, record_checksums
from lit_attr.visualize import save_grid


def display_image(item: dict[str, Any]) -> torch.Tensor:
    """The picture of a training item: its pixels (latent datasets keep them under ``"pixels"``) or its image."""
    return item["pixels"] if "pixels" in item else item["image"]


def write_attribution_outputs(output_dir: Path, dataset: Any, queries: torch.Tensor, top_k: int,
                              logger: Any = None) -> dict[str, Path]:
    """Write report.json, report.md, influence.png and queries.png for a finalized run (checksums into metadata.json).

    Args:
        output_dir: the run folder (must hold finalized scores).
        dataset: the training dataset the rows refer to (row r is ``dataset[r]``).
        queries: query images (Q, C, H, W) in [-1, 1] (decoded, for a latent model).
        top_k: examples per kind.
        logger: optional TensorBoard logger for the figure.

    Returns:
        The written paths by kind.
    """
    scores = load_scores(output_dir)
    train_indices = np.asarray(dataset.indices)
    metadata = read_json(output_dir / METADATA_FILE)
    info = {k: metadata[k] for k in ("measurement", "damping", "num_draws", "draw_scheme") if k in metadata}
    report = build_report(scores, train_indices, top_k, info)
    write_report(output_dir, report, REPORT_JSON, REPORT_MD)
    tops = top_influences(scores, top_k)
    images = {kind: torch.stack([torch.stack([display_image(dataset[int(r)]) for r in rows]) for rows in positions])
              for kind, positions in tops.items()}
    figure = influence_figure(queries, images)
    figure.save(output_dir / FIGURE_FILE)
    save_grid(queries, output_dir / QUERIES_PNG, nrow=min(8, len(queries)))
    record_checksums(output_dir, list(REPORT_FILES))
    experiment = getattr(logger, "experiment", None)
    if experiment is not None and hasattr(experiment, "add_image"):
        experiment.add_image("influence", figure_tensor(figure), global_step=0)
    return {"report_json": output_dir / REPORT_JSON, "report_md": output_dir / REPORT_MD,
            "figure": output_dir / FIGURE_FILE}

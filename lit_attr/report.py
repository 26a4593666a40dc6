"""Top-k influence report (JSON + markdown) and the query | positive | negative | neutral figure.

Sign convention (paper Fig. 1): a positive score means removing that training example is
predicted to *increase* the query's measurement (its loss), i.e. the example made the query
more probable; a negative score means it made the query less probable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from lit_attr.visualize import to_display

SIGN_CONVENTION = (
    "score[j, q] > 0: removing training example j is predicted to increase query q's measurement "
    "(its loss), i.e. j made q more probable; score < 0: j made q less probable."
)


def top_influences(scores: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Row positions of the k most positive, most negative and most neutral scores per query.

    Args:
        scores: (num_train, num_queries).
        k: how many of each.

    Returns:
        ``{"positive", "negative", "neutral"}`` -> int arrays of shape (num_queries, k).
    """
    k = min(k, scores.shape[0])
    order = np.argsort(-scores, axis=0, kind="stable")
    neutral = np.argsort(np.abs(scores), axis=0, kind="stable")
    return {"positive": order[:k].T, "negative": order[::-1][:k].T, "neutral": neutral[:k].T}


def build_report(scores: np.ndarray, train_indices: np.ndarray, k: int, info: dict[str, Any]) -> dict[str, Any]:
    """The report dict: per query, the top-k training examples (stable indices) of each kind with scores."""
    tops = top_influences(scores, k)
    queries = []
    for q in range(scores.shape[1]):
        entry = {"query": q}
        for kind, rows in tops.items():
            entry[f"most_{kind}"] = [
                {"train_index": int(train_indices[r]), "score": float(scores[r, q])} for r in rows[q]
            ]
        queries.append(entry)
    return {"sign_convention": SIGN_CONVENTION, **info, "queries": queries}


def report_markdown(report: dict[str, Any]) -> str:
    """Markdown rendering of ``build_report``'s dict: one table per query."""
    lines = ["# Influence report", "", report["sign_convention"], ""]
    for key in sorted(k for k in report if k not in ("queries", "sign_convention")):
        lines.append(f"- **{key}**: {report[key]}")
    for entry in report["queries"]:
        lines += ["", f"## Query {entry['query']}", "", "| rank | most positive (index: score) | most negative | most neutral |",
                  "|---:|---|---|---|"]
        for rank, row in enumerate(zip(entry["most_positive"], entry["most_negative"], entry["most_neutral"]), start=1):
            cells = " | ".join(f"{c['train_index']}: {c['score']:.4g}" for c in row)
            lines.append(f"| {rank} | {cells} |")
    return "\n".join(lines) + "\n"


def write_report(output_dir: Path, report: dict[str, Any], json_name: str, md_name: str) -> None:
    """Write the report as JSON and markdown into ``output_dir``."""
    (output_dir / json_name).write_text(json.dumps(report, indent=2))
    (output_dir / md_name).write_text(report_markdown(report))


def _tile(image: Tensor, size: int) -> Image.Image:
    array = (to_display(image[None], size)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    tile = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")
    return tile.resize((size, size), Image.NEAREST)


def influence_figure(queries: Tensor, train_images: dict[str, Tensor], tile: int = 48, gap: int = 14) -> Image.Image:
    """One row per query: query | top positive | top negative | most neutral (like the paper's Fig. 1).

    Args:
        queries: (Q, C, H, W) in [-1, 1].
        train_images: ``{"positive", "negative", "neutral"}`` -> (Q, k, C, H, W) in [-1, 1].
        tile: pixel size of each image.
        gap: spacing between groups.

    Returns:
        A PIL RGB image.
    """
    num_queries, k = train_images["positive"].shape[:2]
    header = 18
    width = tile + 3 * (gap + k * (tile + 2))
    canvas = Image.new("RGB", (width, header + num_queries * (tile + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    titles = ["query", "most positive (made it more likely)", "most negative (less likely)", "most neutral"]
    starts = [0] + [tile + gap + i * (gap + k * (tile + 2)) for i in range(3)]
    for x, title in zip(starts, titles):
        draw.text((x, 2), title, fill="black")
    for q in range(num_queries):
        y = header + q * (tile + 4)
        canvas.paste(_tile(queries[q], tile), (0, y))
        for start, kind in zip(starts[1:], ("positive", "negative", "neutral")):
            for i in range(k):
                canvas.paste(_tile(train_images[kind][q, i], tile), (start + i * (tile + 2), y))
    return canvas


def figure_tensor(figure: Image.Image) -> Tensor:
    """(3, H, W) float tensor in [0, 1] for TensorBoard's ``add_image``."""
    return torch.from_numpy(np.asarray(figure).copy()).permute(2, 0, 1).float() / 255.0

"""What did each method remove, and did the reference method see it coming? The removal sets of a finished root.

The removal experiment (paper Sec. 4, App. G.6) retrains without each method's top fraction f of positive scores
for a query q and measures the change of the query's loss. This probe reads the removed sets R_m,q that the root
stored (``removal/<method>/q<q>_top_<f>/indices.txt`` holds the kept examples) and prints, per method m, averaged
over the removal queries:

    overlap     |R_m,q ∩ R_ref,q| / |R_ref,q|
    predicted   sum_{j in R_m,q} s_ref[j, q] / sum_{j in R_ref,q} s_ref[j, q]
                (the reference method's own first-order prediction for removing m's set, relative to its set:
                 at most 1, since R_ref,q holds the reference's largest scores)
    measured    Δloss(R_m,q) / Δloss(R_ref,q), the retrained models' relative change (results.json)
    cosine      mean pixel cosine between the query and the examples of R_m,q (how close to the query the set is)

with s_ref the reference method's removal scores (``Benchmark.removal_scores``: its loss scores at the damping of
best LDS, exactly those that picked R_ref). A method whose set the reference predicts below 1 but that measures above
1 removes a group whose joint effect the first-order (additive) prediction underestimates. A query for which the
reference has no positive score (nothing removed) is left out of overlap and predicted; the cosine averages over the
non-empty sets.

    python benchmarks/probe_removal_sets.py runs/lds_batch512_digits [--reference kfac_continued4]

Nothing is recomputed or retrained (seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_functions import load_benchmark, run_over_roots  # noqa: E402
from lit_attr.constants import SUBSET_INDICES_FILE  # noqa: E402
from lit_attr.data.index_files import read_index_file  # noqa: E402
from lit_attr.storage import read_json  # noqa: E402


def removed_set(bench, method: str, query: int, fraction: float) -> np.ndarray:
    """(N,) bool over the score rows: the examples left out of the model retrained without ``method``'s top
    ``fraction`` for ``query``. The stored ``indices.txt`` holds the kept examples' stable dataset indices, so each
    row's stable index (``bench.dataset.indices``) is looked up in it."""
    kept = set(read_index_file(bench.layout.removal_run_dir(method, query, fraction).parent / SUBSET_INDICES_FILE))
    return np.array([int(index) not in kept for index in bench.dataset.indices])


def probe(root: Path, args) -> None:
    bench, _ = load_benchmark(root)
    results = read_json(root / "results.json").get("removal") or []
    if not results:
        raise SystemExit(f"{root}: results.json has no removal results; run the benchmark's removal stage first "
                         "(python evaluate.py run --config <its config>).")
    methods = {m.name: m for m in bench.config.methods}
    reference = args.reference or bench.config.reference_method or next(iter(methods))  # as the comparison's
    if reference not in methods:
        raise SystemExit(f"--reference {reference!r} is not a method of {root} ({sorted(methods)}).")
    queries = list(bench.config.removal.queries)
    ref_scores = bench.removal_scores(methods[reference])  # (N, Q)
    pixel = next((bench.removal_scores(m) for m in bench.config.methods if m.kind == "pixel"), None)
    print(f"\n== {root}  (reference: {reference}; {len(queries)} queries)")
    for fraction in sorted({r["fraction"] for r in results}):
        measured = {r["method"]: np.asarray(r["per_query"]) for r in results if r["fraction"] == fraction}
        if reference not in measured:
            continue
        print(f"fraction {fraction:g}: mean over queries (min, max)")
        print(f"{'removed set':<22}{'overlap':>22}{'predicted':>22}{'measured':>22}{'cosine':>10}")
        own_sets = {q: removed_set(bench, reference, q, fraction) for q in queries}
        for name in measured:
            overlap, predicted, cosine = [], [], []
            for q, own in own_sets.items():
                other = removed_set(bench, name, q, fraction)
                if own.any():  # empty when the reference has no positive score for q (nothing removed)
                    overlap.append((own & other).sum() / own.sum())
                    predicted.append(ref_scores[other, q].sum() / ref_scores[own, q].sum())
                if pixel is not None and other.any():
                    cosine.append(pixel[other, q].mean())
            ratio = measured[name] / measured[reference]
            cells = [np.asarray(v, dtype=float) for v in (overlap, predicted, ratio)]
            text = "".join(f"{c.mean():>8.3f} ({c.min():.2f}, {c.max():.2f})" if c.size else f"{'-':>22}"
                           for c in cells)
            print(f"{name:<22}{text}{np.mean(cosine) if cosine else float('nan'):>10.3f}")
        control = next(r["control_mean"] for r in results if r["fraction"] == fraction and r["method"] == reference)
        print(f"(loss change: {reference} {measured[reference].mean():+.1%}, random {fraction:g} {control:+.1%})")


def add_arguments(parser) -> None:
    parser.add_argument("--reference", default=None,
                        help="the method whose scores predict every set (default: the root's reference_method, "
                             "else its first method)")


if __name__ == "__main__":
    sys.exit(run_over_roots(__doc__, probe, add_arguments))

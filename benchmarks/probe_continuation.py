"""Can a few more training steps from the final weights stand in for saved checkpoints of the run?

Averaging K-FAC influence over the final weights and three checkpoints spread over the run (``ensemble_steps``)
is the one lever that lifts one model's LDS on the colour roots (README "Checkpoint ensembles"); a user with only
the final weights has no such checkpoints. This probe continues training the root's full model on all of its
training data (``lit_attr.attribution.continuation.continue_training``: fresh AdamW at a constant ``--lr`` after
a short linear warm-up, batches of ``--batch_size``, weight decay 1e-6, every draw from ``--seed`` + 1), keeps the weights after each of ``--steps`` steps, and scores each member like
``attribute.py`` (K-FAC influence of the loss, eq. 6 with the K-FAC GGN of eq. 12, stratified training draws):

    score[j, q] = (1 / M) sum_m grad L_q(theta_m)^T (GGN(theta_m) + lambda I)^-1 grad L(x_j; theta_m)

with theta_0 the final weights and theta_1..theta_{M-1} the continuation's. It prints each root's LDS (no damping
selection) of the final weights alone, of the continuation ensemble, and of the root's stored spread-checkpoint
ensemble (``kfac_spread4``) where it exists, with the paired differences over queries, plus the mean training
loss of every member on fixed draws (how far the continuation moved). Every root must share one full model
(e.g. a root and its ``--reuse`` twin with independent seeds).

    python benchmarks/probe_continuation.py runs/lds_photos_m40 runs/lds_photos_m40_independent --lr 1e-3 --steps 100 200 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_functions import Prober, load_benchmark, print_paired_table, stored_loss_scores  # noqa: E402
from lit_attr.attribution.continuation import continue_training  # noqa: E402
from lit_attr.attribution.gradients import flatten_gradients  # noqa: E402
from lit_attr.attribution.queries import QuerySet  # noqa: E402
from lit_attr.constants import FULL_DIR, MODEL_FILE, QUERIES_FILE  # noqa: E402
from lit_attr.curvature.eigen import precondition  # noqa: E402
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch  # noqa: E402
from lit_attr.diffusion.loss import loss_per_example  # noqa: E402
from lit_attr.evaluation.campaign import max_weight_difference  # noqa: E402
from lit_attr.evaluation.results import lds  # noqa: E402

SPREAD_METHOD = "kfac_spread4"


def mean_training_loss(prober: Prober, seed: int, num_draws: int = 4) -> float:
    """Mean loss over every training image with ``num_draws`` fixed independent draws each."""
    total, count = 0.0, 0
    for batch in prober.batches:
        t, noise = draw_for_batch(batch["index"], num_draws, tuple(batch["image"].shape[1:]),
                                  prober.schedule.num_timesteps, seed, "train", DrawScheme.INDEPENDENT)
        total += float(loss_per_example(prober.eps_model, prober.schedule, batch["image"], t, noise).sum())
        count += len(batch["index"])
    return total / count


def member_scores(prober: Prober, queries: torch.Tensor, num_draws: int, query_draws: int, damping: float,
                  seed: int) -> torch.Tensor:
    """(N, Q) K-FAC influence of the loss at the prober's current weights (curvature refitted there)."""
    eigen = prober.curvature()
    grads = prober.query_gradients("loss", queries, query_draws, seed)
    columns = flatten_gradients(precondition(grads, eigen, damping))
    return prober.scores("loss", columns, num_draws)


def stored_at(bench, name: str, damping: float) -> np.ndarray | None:
    for method, score_set, loss in stored_loss_scores(bench):
        if method.name == name and damping in score_set.dampings:
            return score_set.scores[:, loss, score_set.dampings.index(damping)]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="finished roots sharing one full model")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300], help="continuation steps kept")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_draws", type=int, default=32, help="S, training draws per example per member")
    parser.add_argument("--query_draws", type=int, default=256)
    parser.add_argument("--damping", type=float, default=1e-8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    loaded = [load_benchmark(root) for root in args.roots]
    first = args.roots[0] / FULL_DIR / MODEL_FILE
    for root in args.roots[1:]:
        if max_weight_difference(root / FULL_DIR / MODEL_FILE, first) != 0:
            raise SystemExit(f"{root} has another full model than {args.roots[0]}; probe them separately.")
    prober = Prober(loaded[0][0], args.seed, DrawScheme.STRATIFIED)
    queries = QuerySet.load(args.roots[0] / QUERIES_FILE).images
    members = [None] + continue_training(prober.ddpm, prober.dataset, sorted(args.steps), args.lr, args.batch_size,
                                         args.warmup, args.seed + 1, weight_decay=1e-6)
    final_weights = {k: v.clone() for k, v in prober.unet.state_dict().items()}
    per_member = []
    for k, state in enumerate(members):
        if state is not None:
            prober.unet.load_state_dict(state)
        loss = mean_training_loss(prober, args.seed + 2)
        per_member.append(member_scores(prober, queries, args.num_draws, args.query_draws, args.damping, args.seed))
        label = "final weights" if state is None else f"+{sorted(args.steps)[k - 1]} steps"
        print(f"member {k} ({label}): mean training loss {loss:.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    prober.unet.load_state_dict(final_weights)
    single, ensemble = per_member[0].numpy(), torch.stack(per_member).mean(0).numpy()
    for root, (bench, outcomes) in zip(args.roots, loaded):
        target = outcomes.measured[:, :, 0, 0]
        rows = {"final weights": single, f"+ {len(members) - 1} continuation members": ensemble}
        rows |= {f"member {k} alone (+{n} steps)": per_member[k].numpy() for k, n in enumerate(sorted(args.steps), 1)}
        spread = stored_at(bench, SPREAD_METHOD, args.damping)
        if spread is not None:
            rows[f"stored {SPREAD_METHOD}"] = spread
        per_query = {name: np.array(lds(s, outcomes.masks, target).per_query) for name, s in rows.items()}
        print_paired_table(f"{root}: lr {args.lr:g}, steps {sorted(args.steps)}, S = {args.num_draws}, damping "
                           f"{args.damping:g} (LDS over queries, no selection)", "scores", per_query, "final weights")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

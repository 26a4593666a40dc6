"""Does the full model's distance from the training optimum carry the LDS? The Newton-corrected query gradient.

Influence functions (eq. 6) assume the full model sits at a stationary point of the training loss. A model
trained for a fixed number of steps does not: the mean training-loss gradient gbar = (1/N) sum_j grad L(x_j)
is not zero, and every retrained model moves towards its own optimum. Expanding the retrained model's query
measurement around the full-data optimum theta* ~ theta - delta, with the damped K-FAC Newton step

    delta = (GGN + lambda_delta I)^-1 gbar                                   (eq. 12 applied to gbar)

gives the first-order influence with the query gradient taken at theta* instead of theta:

    score[j, q] = grad m_q(theta - alpha delta)^T (GGN + lambda I)^-1 grad L(x_j)      (alpha = 1: Newton)

This is also the part of the second-order term 1/2 dtheta^T H_q dtheta of a removal that is additive over the
removed examples: with dtheta_S = sum_{j removed} u_j, its first-order (ANOVA) component in example j is
u_j^T H_q sum_k u_k, proportional to grad L(x_j)^T (GGN + lambda I)^-1 H_q delta, which vanishes at an exact
optimum (gbar = 0). So if the loss's influence misses the LDS because the second order dominates, the
corrected query gradient is what recovers its additive part.

For each lambda_delta and alpha the probe prints the LDS against the root's loss target (no selection: every
row is shown), the same with the training gradients also taken at theta - alpha delta (for the alphas of
``--shift_training``: influence computed entirely at the corrected parameters, one more training pass each),
the mean training loss at theta - alpha delta (does the Newton step find a better optimum?), and how
reproducible gbar is between two independent sets of training draws (cosine): a gbar that is mostly Monte
Carlo noise cannot carry signal. With ``--random_control`` every row is repeated with a random direction
(gbar's layer norms, preconditioned the same way) scaled so that alpha = 1 raises the training loss as much
as gbar's step: whether a gain comes from gbar's direction or from scoring at any perturbed model. Cost per root: one K-FAC fit, two training passes of S draws per example,
one query pass per row and one training pass per shifted-training row (minutes for the 0.18M U-Nets).

    python benchmarks/probe_newton.py runs/lds_patches_independent runs/lds_digits
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_functions import Prober, gradient_probe_parser, load_benchmark  # noqa: E402
from lit_attr.attribution.gradients import flatten_gradients, unflatten_gradients  # noqa: E402
from lit_attr.attribution.queries import QuerySet  # noqa: E402
from lit_attr.constants import QUERIES_FILE  # noqa: E402
from lit_attr.curvature.eigen import precondition  # noqa: E402
from lit_attr.curvature.layers import gradient_shapes, split_gradient_matrix  # noqa: E402
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch  # noqa: E402
from lit_attr.diffusion.loss import loss_per_example  # noqa: E402
from lit_attr.evaluation.results import lds  # noqa: E402


@contextmanager
def shifted(modules: dict[str, torch.nn.Module], step: dict[str, torch.Tensor], scale: float):
    """Temporarily move every K-FAC layer's ``[W | b]`` by ``scale * step[name]`` ((out, in+1) matrices)."""
    moves = []
    with torch.no_grad():
        for name, module in modules.items():
            weight, bias = split_gradient_matrix(module, step[name])
            moves.append((module.weight, scale * weight.to(module.weight)))
            if bias is not None:
                moves.append((module.bias, scale * bias.to(module.bias)))
        for param, move in moves:
            param.add_(move)
    try:
        yield
    finally:
        with torch.no_grad():
            for param, move in moves:
                param.sub_(move)


def training_pass(prober: Prober, num_draws: int, seed: int, keep: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Flat per-example loss gradients (N, P) (if ``keep``) and their mean gbar (P,) over the training set."""
    rows, total, count = [], None, 0
    for batch in prober.batches:
        grads = flatten_gradients(prober.gradients("loss", batch["image"], batch["index"], num_draws, "train", seed))
        total = grads.sum(0, dtype=torch.float64) if total is None else total + grads.sum(0, dtype=torch.float64)
        count += len(grads)
        if keep:
            rows.append(grads)
    return (torch.cat(rows) if keep else None), (total / count).float()


def mean_training_loss(prober: Prober, num_draws: int = 8, seed: int = 99, max_batches: int = 8) -> float:
    """Mean DDPM loss over the first ``max_batches`` batches, ``num_draws`` fixed draws per example (the same
    draws at every call: losses at different parameters compare draw for draw)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in prober.batches[:max_batches]:
            images = batch["image"]
            t, noise = draw_for_batch(batch["index"], num_draws, tuple(images.shape[1:]),
                                      prober.schedule.num_timesteps, seed, "train", prober.scheme)
            total += float(loss_per_example(prober.eps_model, prober.schedule, images, t, noise).sum())
            count += len(images)
    return total / count


def matched_scale(prober: Prober, steps: dict, gbar_norm: float, iterations: int = 12) -> float:
    """The factor c for which ``theta - c * steps['random']`` has the training loss of ``theta - steps['gbar']``
    (bisection on log c, started at gbar's step size): the control moves the model as far in loss, not in norm."""
    with shifted(prober.modules, steps["gbar"], -1.0):
        goal = mean_training_loss(prober)
    random_norm = float(torch.cat([v.flatten() for v in steps["random"].values()]).norm())
    low, high = -6.0, 6.0  # log10 of c relative to the same-norm factor
    for _ in range(iterations):
        mid = (low + high) / 2
        with shifted(prober.modules, steps["random"], -(10 ** mid) * gbar_norm / random_norm):
            low, high = (mid, high) if mean_training_loss(prober) < goal else (low, mid)
    return 10 ** ((low + high) / 2) * gbar_norm / random_norm


def probe(root: Path, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    bench, outcomes = load_benchmark(root)
    prober = Prober(bench, args.seed, DrawScheme.STRATIFIED)
    shapes = gradient_shapes(prober.modules)
    eigen = prober.curvature()
    train, gbar = training_pass(prober, args.num_draws, args.seed, keep=True)
    _, gbar_other = training_pass(prober, args.num_draws, args.seed + 7, keep=False)
    cosine = float(torch.nn.functional.cosine_similarity(gbar, gbar_other, dim=0))
    typical = float(train.norm(dim=1).median())
    queries = QuerySet.load(root / QUERIES_FILE).images
    target = outcomes.measured[:, :, 0, 0]

    def lds_of(query_grads: torch.Tensor, shifted_training: bool = False) -> str:
        columns = flatten_gradients(precondition(unflatten_gradients(query_grads, shapes), eigen, args.damping))
        if shifted_training:  # the training gradients at the shifted parameters too, scored batch by batch
            scores = torch.cat([flatten_gradients(prober.gradients("loss", b["image"], b["index"], args.num_draws,
                                                                   "train", args.seed)) @ columns.T
                                for b in prober.batches])
        else:
            scores = train @ columns.T
        result = lds(scores.double().numpy(), outcomes.masks, target)
        return f"{result.mean:+.3f} ± {result.stderr:.3f}"

    def query_gradients(function: str = "loss") -> torch.Tensor:
        return flatten_gradients(prober.query_gradients(function, queries, args.query_draws, args.seed))

    base = query_gradients()
    print(f"\n{root} (loss target; S = {args.num_draws} training draws, {args.query_draws} query draws, "
          f"scores at damping {args.damping:g})")
    print(f"gbar: norm {float(gbar.norm()):.3e} (median per-example gradient norm {typical:.3e}); cosine with gbar "
          f"from independent draws {cosine:+.3f}; mean training loss {mean_training_loss(prober):.5f}")
    print(f"reference: loss query {lds_of(base)}; squared-output-norm query {lds_of(query_gradients('sqnorm'))}")
    print("| direction | lambda_delta | ||delta|| / ||theta|| | alpha | training loss at theta - alpha delta | LDS | "
          "LDS, training gradients at theta - alpha delta too |\n|---|---|---|---|---|---|---|")
    theta_norm = float(torch.cat([p.detach().flatten() for m in prober.modules.values()
                                  for p in m.parameters(recurse=False)]).norm())
    directions = {"gbar": unflatten_gradients(gbar.unsqueeze(0), shapes)}
    if args.random_control:  # same layer-wise norms as gbar, random direction: is it gbar or any shift?
        generator = torch.Generator().manual_seed(args.seed + 11)
        directions["random"] = {name: torch.randn(v.shape, generator=generator) * v.norm() / (v.numel() ** 0.5)
                                for name, v in directions["gbar"].items()}
    for damping_delta in args.delta_dampings:
        steps = {key: {name: v[0] for name, v in precondition(d, eigen, damping_delta).items()}
                 for key, d in directions.items()}
        norms = {key: float(torch.cat([v.flatten() for v in step.values()]).norm()) for key, step in steps.items()}
        for key, delta in steps.items():
            scale = 1.0 if key == "gbar" else matched_scale(prober, steps, norms["gbar"])
            delta = {name: v * scale for name, v in delta.items()}
            size = norms[key] * scale / theta_norm
            for alpha in args.alphas:
                with shifted(prober.modules, delta, -alpha):
                    loss = mean_training_loss(prober)
                    query_grads = query_gradients()
                    result = lds_of(query_grads)
                    both = lds_of(query_grads, shifted_training=True) if alpha in args.shift_training else "-"
                print(f"| {key} | {damping_delta:g} | {size:.3e} | {alpha:g} | {loss:.5f} | {result} | {both} |",
                      flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = gradient_probe_parser(__doc__)
    parser.add_argument("--damping", type=float, default=1e-8, help="damping of the scores (eq. 12)")
    parser.add_argument("--delta_dampings", type=float, nargs="+", default=[1e-6, 1e-4, 1e-2, 1.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    parser.add_argument("--shift_training", type=float, nargs="*", default=[1.0],
                        help="alphas at which the training gradients are recomputed at the shifted parameters too")
    parser.add_argument("--random_control", action="store_true",
                        help="also shift along a random direction with gbar's layer norms, preconditioned the same "
                             "way and scaled so that alpha = 1 raises the training loss as much as gbar's step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    for root in args.roots:
        probe(root, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

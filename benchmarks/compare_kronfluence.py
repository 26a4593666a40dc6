"""lit-attr side by side with kronfluence (K-FAC factors and pairwise scores), one process, same rows.

    pip install -e '.[bench]'     # kronfluence; never a dependency of lit_attr itself
    python benchmarks/compare_kronfluence.py [--model digits-0.7M|u32] [--fisher mc|empirical] [--threads 1]

Both tools see the same U-Net, the same N training examples x S fixed (timestep, noise) draws, the same
Q query images x M fixed draws (the first Q training images when all 1797 digits are used for training; kronfluence gets datasets whose items are these draws, "rows"), the
same loss (pixel-mean squared error, summed over rows for kronfluence), the same curvature type (K-FAC,
expand; MC Fisher with targets ``f + sqrt(D/2) xi``, or the empirical Fisher) and the same damping.
Stages, each repeated and interleaved with the other tool's (best of ``--repeats``):

- factors: kronfluence ``fit_covariance_matrices`` + ``perform_eigendecomposition``; lit-attr
  ``KFACAccumulator`` over the rows + ``eigendecompose_factors``;
- scores: kronfluence ``compute_pairwise_scores`` (query gradients, preconditioning, training rows);
  lit-attr query gradients + ``precondition`` + int8 store + ``per_example_loss_scores``.

kronfluence scores every row; an example's score is the mean over its S rows (and a query's over its
M rows), which is exactly lit-attr's score by linearity. Agreement is the per-query Spearman between
the (N, Q) matrices, twice: lit-attr as shipped, and lit-attr with kronfluence's normalisation of the
gradient factor (kronfluence divides ``sum g g^T`` by the number of rows *times positions* P of a
layer, lit-attr by the rows, as the GGN of the mean loss requires; so kronfluence's block is
``kron(G / P, A)`` and the same damping weighs the layers differently). The second isolates the
implementations; remaining differences are the MC target draws (Fisher "mc") and float32 rounding.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import tempfile
import warnings
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset

from benchlib import (
    batches_with_draws,
    build_preset,
    configure,
    digits_images,
    interleaved,
    machine_line,
    num_parameters,
    random_images,
    spearman_per_column,
    verdict,
)
from lit_attr.attribution.gradients import flatten_gradients, per_example_loss_gradients, per_example_loss_scores
from lit_attr.attribution.quantize import compress
from lit_attr.curvature import KFACAccumulator, eigendecompose_factors, precondition, select_kfac_modules
from lit_attr.curvature.capture import LayerCapture, grad_enabled
from lit_attr.diffusion.loss import expand_draws, loss_per_draw
from lit_attr.diffusion.schedule import DiffusionSchedule

TARGET_SPEEDUP = 3.5


class RowDataset(Dataset):
    """Items are single draws: ``{"x0", "t", "noise"}`` (example-major, like lit-attr's rows)."""

    def __init__(self, images: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor) -> None:
        self.x0, self.t, self.noise = expand_draws(images, timesteps, noise)

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x0": self.x0[i], "t": self.t[i], "noise": self.noise[i]}


def kronfluence_task(schedule: DiffusionSchedule):
    """The DDPM loss as a kronfluence ``Task`` (imported here: kronfluence is the optional bench extra)."""
    from kronfluence.task import Task

    class DDPMTask(Task):
        def _rows(self, batch, model, sample: bool) -> torch.Tensor:
            x_t = schedule.q_sample(batch["x0"], batch["t"], batch["noise"])
            out = model(x_t, batch["t"]).sample
            if sample:  # MC Fisher: y ~ N(f, (D/2) I), the Gaussian whose NLL is the pixel-mean loss
                with torch.no_grad():
                    target = out + math.sqrt(out[0].numel() / 2) * torch.randn_like(out)
            else:
                target = batch["noise"]
            return (out - target).pow(2).flatten(1).mean(dim=1)

        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            return self._rows(batch, model, sample).sum()

        def compute_measurement(self, batch, model) -> torch.Tensor:
            return self._rows(batch, model, sample=False).sum()

    return DDPMTask()


def layer_positions(unet, modules, shape, device) -> dict[str, int]:
    """P per layer: output positions of a conv, tokens of a Linear (1 for the time embedding)."""
    x = torch.zeros(1, *shape, device=device)
    with grad_enabled(), LayerCapture(modules, unet, param_grads=False) as capture:
        out = unet(x, torch.zeros(1, dtype=torch.long, device=device)).sample
        capture.backward(out, torch.ones_like(out))
    return {name: capture.grad_outputs[name][0].numel() // module.weight.shape[0] for name, module in modules.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits-0.7M", choices=["digits-0.7M", "digits", "u32"])
    parser.add_argument("--num-examples", type=int, default=None, help="default: 1797 (digits), 64 (u32)")
    parser.add_argument("--num-draws", type=int, default=4, help="S per training example")
    parser.add_argument("--num-queries", type=int, default=8)
    parser.add_argument("--query-draws", type=int, default=4, help="M per query")
    parser.add_argument("--examples-per-batch", type=int, default=None, help="default: 128 (digits), 16 (u32)")
    parser.add_argument("--fisher", default="mc", choices=["mc", "empirical"])
    parser.add_argument("--damping", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = configure(args.device, args.threads)
    logging.getLogger("kronfluence").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # kronfluence's torch.cuda.amp.GradScaler
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    digits = args.model.startswith("digits")
    num_examples = args.num_examples or (1797 if digits else 64)
    per_batch = args.examples_per_batch or (128 if digits else 16)
    unet, shape = build_preset(args.model)
    unet = unet.to(device)
    schedule, modules = DiffusionSchedule(1000).to(device), select_kfac_modules(unet)
    total = num_examples + args.num_queries
    images = digits_images(min(total, 1797)) if digits else random_images(total, shape)
    query_images = images[num_examples:] if len(images) == total else images[: args.num_queries]  # digits: 1797
    train = batches_with_draws(images[:num_examples].to(device), per_batch, args.num_draws, "train")
    query = batches_with_draws(query_images.to(device), args.num_queries, args.query_draws, "query")[0]
    train_rows = RowDataset(torch.cat([b.images for b in train]), torch.cat([b.timesteps for b in train]),
                            torch.cat([b.noise for b in train]))
    query_rows = RowDataset(query.images, query.timesteps, query.noise)
    for b in train + [query]:
        b.timesteps, b.noise = b.timesteps.to(device), b.noise.to(device)
    print(machine_line())
    print(f"{args.model}: {num_parameters(unet):,} parameters, {len(modules)} K-FAC layers, image {shape}; "
          f"{num_examples} examples x {args.num_draws} draws = {len(train_rows)} training rows, {args.num_queries} "
          f"queries x {args.query_draws} draws; K-FAC expand, {args.fisher} Fisher, damping {args.damping:g}; "
          f"batches of {per_batch * args.num_draws} rows; best of {args.repeats}")

    def eps(xt, t):
        return unet(xt, t).sample

    # ------------------------------------------------------------------ lit-attr
    state: dict = {}

    def ours_factors():
        accumulator = KFACAccumulator(modules, args.fisher, "expand", model=unet)
        for b in train:
            accumulator.update_ddpm(eps, schedule, b.images, b.timesteps, b.noise, b.index)
        state["factors"] = accumulator.finalize()
        state["eigen"] = eigendecompose_factors(state["factors"])

    def ours_scores():
        grads = per_example_loss_gradients(eps, schedule, modules, query.images, query.timesteps, query.noise, unet)
        state["query_grads"] = grads
        queries = compress(flatten_gradients(precondition(grads, state["eigen"], args.damping)), "int8")
        state["scores"] = torch.cat([
            per_example_loss_scores(eps, schedule, modules, b.images, b.timesteps, b.noise, queries, unet)
            for b in train]).cpu().numpy()

    def floor():
        for b in train:
            unet.zero_grad(set_to_none=True)
            loss_per_draw(eps, schedule, *expand_draws(b.images, b.timesteps, b.noise)).mean().backward()
        unet.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ kronfluence
    workdir = tempfile.mkdtemp(prefix="kronfluence_")
    tracked = prepare_model(copy.deepcopy(unet), kronfluence_task(schedule))
    analyzer = Analyzer("bench", tracked, kronfluence_task(schedule), cpu=device.type == "cpu", disable_tqdm=True,
                        output_dir=workdir)
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(num_workers=0))
    factor_args = FactorArguments(strategy="kfac", use_empirical_fisher=args.fisher == "empirical",
                                  covariance_max_examples=None)
    score_args = ScoreArguments(damping_factor=args.damping)
    rows_per_batch = per_batch * args.num_draws

    def kf_factors():
        analyzer.fit_covariance_matrices("kfac", train_rows, per_device_batch_size=rows_per_batch,
                                         factor_args=factor_args, overwrite_output_dir=True)
        analyzer.perform_eigendecomposition("kfac", factor_args=factor_args, overwrite_output_dir=True)

    def kf_scores():
        analyzer.compute_pairwise_scores("scores", "kfac", query_rows, train_rows,
                                         per_device_query_batch_size=len(query_rows),
                                         per_device_train_batch_size=rows_per_batch, score_args=score_args,
                                         overwrite_output_dir=True)
        rows = analyzer.load_pairwise_scores("scores")["all_modules"].double()  # (Q M, N S)
        grid = rows.reshape(args.num_queries, args.query_draws, num_examples, args.num_draws)
        state["kf_scores"] = grid.mean(dim=(1, 3)).T.numpy()

    records = interleaved({"floor": floor, "ours_factors": ours_factors, "kf_factors": kf_factors}, args.repeats)
    records.update(interleaved({"ours_scores": ours_scores, "kf_scores": kf_scores}, args.repeats, warmup=False))

    # ------------------------------------------------------------------ agreement
    positions = layer_positions(unet, modules, shape, device)
    matched = replace(state["factors"], factors={n: (a, g / positions[n]) for n, (a, g) in state["factors"].factors.items()})
    matched_queries = compress(flatten_gradients(precondition(state["query_grads"], eigendecompose_factors(matched),
                                                              args.damping)), "none")
    matched_scores = torch.cat([
        per_example_loss_scores(eps, schedule, modules, b.images, b.timesteps, b.noise, matched_queries, unet)
        for b in train]).cpu().numpy()
    rho_default = spearman_per_column(state["scores"], state["kf_scores"])
    rho_matched = spearman_per_column(matched_scores, state["kf_scores"])

    floor_s = records["floor"].seconds
    print(f"\n{'stage':<10s} {'tool':<12s} {'wall s':>8s} {'cpu s':>8s} {'x floor':>8s} {'peak +MiB':>10s}")
    for stage in ("factors", "scores"):
        for tool, key in (("lit-attr", f"ours_{stage}"), ("kronfluence", f"kf_{stage}")):
            r = records[key]
            print(f"{stage:<10s} {tool:<12s} {r.wall:8.2f} {r.cpu:8.2f} {r.seconds / floor_s:8.2f} {r.peak_mb:10.0f}")
    print(f"{'floor':<10s} {'fwd+bwd':<12s} {records['floor'].wall:8.2f} {records['floor'].cpu:8.2f} {1:8.2f} "
          f"{records['floor'].peak_mb:10.0f}")
    for stage in ("factors", "scores"):
        speedup = records[f"kf_{stage}"].seconds / records[f"ours_{stage}"].seconds
        print(f"{stage}: lit-attr is {speedup:.2f}x faster than kronfluence  "
              f"(target >= {TARGET_SPEEDUP}x: {verdict(speedup, TARGET_SPEEDUP, higher_is_better=True)})")
    print(f"Spearman per query, lit-attr (int8 queries) vs kronfluence:        "
          f"min {rho_default.min():.4f} median {np.median(rho_default):.4f}")
    print(f"Spearman per query, lit-attr with kronfluence's G normalisation:   "
          f"min {rho_matched.min():.4f} median {np.median(rho_matched):.4f}")


if __name__ == "__main__":
    main()

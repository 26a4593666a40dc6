"""``attribute.py --continuation.steps '[100, 200, 300]'``: average influence over the model and a short continuation
of its training, for a user who has only the final weights.

    score[j, q] = 1 / (M + 1) * sum_{m=0..M} score(theta_m)[j, q]

where score(theta) is the chosen method's score matrix on weights theta (eq. 6 for K-FAC influence, its own
curvature refitted at theta), theta_0 the model exactly as saved, and theta_m the weights after ``steps[m-1]``
more AdamW steps from theta_0 on the training examples being attributed (eq. 2's loss, uniform timesteps,
Gaussian noise, minibatches drawn with replacement; learning rate ``lr`` after ``warmup_steps`` linear warm-up
steps, then constant; gradient norm clipped at 1). Every draw comes from ``seed``.

Why: one model's first-order influence linearises the loss around one point. Averaging over checkpoints spread
over the training run lifts K-FAC influence most on colour images (README "Checkpoint ensembles"), and the
continuation's weights, a few hundred steps away at the run's peak learning rate, do the same without saved
checkpoints (README "Continuation ensembles", measured by ``benchmarks/probe_continuation.py``).

The continued weights are written next to the ensemble (``<output_dir>/members/continuation/step_{n}/model.ckpt``, or
pipeline folders ``step_{n}/`` when the model is one) with ``continuation.json``, and scored by
``lit_attr.attribution.checkpoint_ensemble`` like ``--checkpoints '[model, step_100, ...]'``. A rerun reuses them
(and resumes the members); other settings are refused.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import Dataset

from lit_attr.attribution.checkpoint_ensemble import CHECKPOINTS_FLAG, MEMBERS_FOLDER, output_dir_of, without_flags
from lit_attr.attribution.method_choice import (
    AttributeMethod,
    config_values,
    flag_values,
)
from lit_attr.checkpoints import read_checkpoint
from lit_attr.diffusion.loss import loss_per_draw, unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.storage import read_json, write_atomic, write_json_atomic

FLAG = "--continuation"
KEYS = ("steps", "lr", "batch_size", "warmup_steps", "seed")
FOLDER = "continuation"
SETTINGS_FILE = "continuation.json"
DEFAULT_BATCH_SIZE = 128


class UnknownLearningRate(ConfigError):
    """No ``lr`` was given and the model (a pipeline folder) does not save one."""


@dataclass(frozen=True)
class ContinuationSettings:
    """How the continuation is trained.

    Attributes:
        steps: the step counts whose weights join the ensemble (distinct, positive, increasing).
        lr: constant AdamW learning rate after warm-up; None: the peak learning rate saved in the checkpoint.
        batch_size: training examples per step; None: the checkpoint's training batch size (else 128).
        warmup_steps: linear warm-up steps of the fresh optimizer.
        seed: seed of every minibatch, timestep and noise draw.
    """

    steps: tuple[int, ...]
    lr: float | None = None
    batch_size: int | None = None
    warmup_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        steps = self.steps
        if (not isinstance(steps, (list, tuple)) or not steps
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in steps)
                or len(set(steps)) < len(steps)):
            raise ConfigError(f"{FLAG}.steps takes distinct positive step counts, e.g. {FLAG}.steps "
                              f"'[100, 200, 300]'; got {list(steps) if isinstance(steps, tuple) else steps!r}.")
        object.__setattr__(self, "steps", tuple(sorted(steps)))
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"{FLAG}.lr must be a positive learning rate (e.g. 3e-3); got {self.lr!r}.")
        for name, low in (("batch_size", 1), ("warmup_steps", 0), ("seed", 0)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ConfigError(f"{FLAG}.{name} must be an integer >= {low}; got {value!r}.")


def requested_continuation(args: list[str]) -> ContinuationSettings | None:
    """The ``--continuation.<key>`` flags (else a config file's ``continuation:`` block); None without steps.

    Raises:
        ConfigError: an unknown key, or settings ``ContinuationSettings`` refuses.
    """
    unknown = sorted({arg.split("=", 1)[0] for arg in args if arg.startswith(f"{FLAG}.")}
                     - {f"{FLAG}.{key}" for key in KEYS})
    if unknown:
        raise ConfigError(f"Unknown flag {unknown[0]}; {FLAG} takes {', '.join(f'{FLAG}.{k}' for k in KEYS)}.")
    block = (config_values(args, FLAG.lstrip("-")) or [None])[-1]
    if block is not None and not isinstance(block, dict):
        raise ConfigError(f"continuation: in a config takes a mapping, e.g. continuation: {{steps: [100, 200, 300]}}; "
                          f"got {block!r}.")
    values: dict[str, Any] = {key: value for key, value in (block or {}).items() if value is not None}
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"continuation: has an unknown key {unknown[0]!r}; keys: {', '.join(KEYS)}.")
    for key in KEYS:
        flags = flag_values(args, f"{FLAG}.{key}")
        if flags:
            values[key] = yaml.safe_load(flags[-1])
    values = {key: value for key, value in values.items() if value is not None}
    if not values.get("steps"):
        if values:
            raise ConfigError(f"{FLAG}.{next(iter(values))} needs {FLAG}.steps, e.g. {FLAG}.steps '[100, 200, 300]'.")
        return None
    if isinstance(values.get("lr"), str):  # YAML reads 3e-3 (no dot) as a string
        try:
            values["lr"] = float(values["lr"])
        except ValueError:
            pass  # refused below with the fix
    if isinstance(values["steps"], list):
        values["steps"] = tuple(values["steps"])
    return ContinuationSettings(**values)


def continuation_flags_given(args: list[str]) -> bool:
    """Whether ``args`` hold any ``--continuation.*`` flag."""
    return any(arg.startswith(f"{FLAG}.") for arg in args)


def without_continuation_flags(args: list[str]) -> list[str]:
    """``args`` without the ``--continuation.*`` flags and their values."""
    return without_flags(args, lambda name: name.startswith(f"{FLAG}."))


def continue_training(ddpm: Any, dataset: Dataset, steps: Sequence[int], lr: float, batch_size: int,
                      warmup_steps: int, seed: int, weight_decay: float = 0.0,
                      betas: tuple[float, float] = (0.9, 0.999),
                      device: torch.device | str | None = None,
                      progress: Callable[[int, float], None] | None = None) -> list[dict[str, torch.Tensor]]:
    """The weights of ``ddpm.attribution_unet`` after each of ``steps`` (increasing) continued training steps.

    Each step: ``batch_size`` examples of ``dataset`` drawn uniformly with replacement, one timestep t ~ U{0..T-1}
    and noise eps ~ N(0, I) per example, the mean of eq. 2's loss (model space: latents for a latent model, the
    label for a class-conditional one), its gradient norm clipped at 1, one AdamW step (fresh moments; learning
    rate ``lr * min(1, (n + 1) / warmup_steps)`` at step n). Every draw comes from ``seed`` (CPU generator), so
    the result does not depend on ``device`` (where the steps run; None: where the model is) beyond float
    rounding. ``progress(step, loss)`` is called after every step. The model's weights, device and modes are
    restored afterwards.

    Returns:
        one CPU ``state_dict`` copy of the U-Net per entry of ``steps``.
    """
    unet = ddpm.attribution_unet
    home = next(unet.parameters()).device
    start = {name: value.detach().clone() for name, value in unet.state_dict().items()}
    was_training, requires = unet.training, {name: p.requires_grad for name, p in unet.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    ddpm.to(home if device is None else device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: min(1.0, (n + 1) / max(1, warmup_steps)))
    eps_model, saved = unet_eps_model(unet), []
    unet.requires_grad_(True)
    unet.train()
    try:
        with torch.enable_grad():
            for step in range(1, max(steps) + 1):
                x0, labels = _minibatch(ddpm, dataset, batch_size, gen)
                t = torch.randint(0, ddpm.schedule.num_timesteps, (batch_size,), generator=gen)
                noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
                loss = loss_per_draw(eps_model, ddpm.schedule, x0, t, noise, labels).mean()
                if not bool(torch.isfinite(loss)):
                    raise ConfigError(f"{FLAG}: the loss became {float(loss)} at continued step {step}; lower "
                                      f"{FLAG}.lr (now {lr:g}).")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                optimizer.step()
                warmup.step()
                if progress is not None:
                    progress(step, float(loss.detach()))
                if step in steps:
                    saved.append({name: value.detach().cpu().clone() for name, value in unet.state_dict().items()})
    finally:
        ddpm.to(home)
        unet.load_state_dict(start)
        unet.train(was_training)
        for name, p in unet.named_parameters():
            p.requires_grad_(requires[name])
    return saved


def _minibatch(ddpm: Any, dataset: Dataset, batch_size: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``batch_size`` examples drawn with replacement: model-space inputs (B, C, H, W) on the model's device and
    their labels (B,) for a class-conditional model (else None).

    Raises:
        ConfigError: a class-conditional model and a dataset without labels.
    """
    device = next(ddpm.attribution_unet.parameters()).device
    items = [dataset[row] for row in torch.randint(0, len(dataset), (batch_size,), generator=gen).tolist()]
    labels = None
    if ddpm.num_classes is not None:
        if "label" not in items[0]:
            raise ConfigError(f"{FLAG}: the model is class-conditional but the training examples (--data.*) carry "
                              "no labels; use the dataset the model was trained on.")
        labels = torch.tensor([int(item["label"]) for item in items], device=device)
    with torch.no_grad():
        return ddpm.encode_pixels(torch.stack([item["image"] for item in items]).to(device)), labels


def _model_settings(stored: dict[str, Any] | None, settings: ContinuationSettings,
                    checkpoint: str) -> dict[str, Any]:
    """The continuation's resolved optimizer settings: the ones given, else those saved in the Lightning checkpoint
    ``stored`` (None: a pipeline folder, ``checkpoint``).

    Raises:
        ConfigError: no ``lr`` for a pipeline folder (its training learning rate is not saved).
    """
    saved: dict[str, Any] = {}
    if stored is not None:
        saved = dict(stored.get("hyper_parameters", {}).get("optimizer") or {})
        saved["batch_size"] = (stored.get("datamodule_hyper_parameters") or {}).get("batch_size")
    lr = settings.lr if settings.lr is not None else saved.get("lr")
    if lr is None:
        raise UnknownLearningRate(f"{checkpoint} is a pipeline folder, which does not save its training learning "
                                  f"rate: attributing the model alone. To add the continuation, give the peak "
                                  f"learning rate of its training run, e.g. {FLAG}.lr 1e-4.")
    return {"lr": float(lr), "batch_size": int(settings.batch_size or saved.get("batch_size") or DEFAULT_BATCH_SIZE),
            "weight_decay": float(saved.get("weight_decay", 0.0)),
            "betas": [float(b) for b in saved.get("betas", (0.9, 0.999))]}


def member_paths(folder: Path, checkpoint: str, steps: Sequence[int]) -> list[Path]:
    """``folder/step_{n}/model.ckpt`` per step, or ``folder/step_{n}/`` pipeline folders when the model is one (one
    folder per model: a benchmark keeps each member's curvature next to its checkpoint)."""
    pipeline = Path(checkpoint).is_dir()
    return [folder / f"step_{n}" if pipeline else folder / f"step_{n}" / "model.ckpt" for n in steps]


def _save_member(ddpm: Any, stored: dict[str, Any] | None, state: dict[str, torch.Tensor], path: Path) -> None:
    """Write continued weights in the model's own format: the Lightning checkpoint ``stored`` with its weights
    replaced, or (``stored`` None) a pipeline folder (``lit_attr.pipeline_io.export_pipeline``)."""
    unet = ddpm.attribution_unet
    start = {name: value.detach().clone() for name, value in unet.state_dict().items()}
    unet.load_state_dict(state)
    try:
        if stored is None:
            from lit_attr.pipeline_io import export_pipeline

            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            export_pipeline(ddpm, tmp)
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        else:
            stored["state_dict"] = {name: value.detach().cpu().clone() for name, value in ddpm.state_dict().items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda tmp: torch.save(stored, tmp))
    finally:
        unet.load_state_dict(start)


def _report_every(total: int, lines: int = 6) -> Callable[[int, float], None]:
    """A ``progress`` for ``continue_training`` that prints about ``lines`` lines over ``total`` steps."""
    every = max(1, total // lines)

    def report(step: int, loss: float) -> None:
        if step % every == 0 or step == total:
            _progress(f"step {step}/{total}: loss {loss:.4f}")

    return report


@rank_zero_only
def _progress(message: str) -> None:
    print(f"[{FLAG}] {message}", file=sys.stderr)


def prepare_continuation(args: list[str], settings: ContinuationSettings, method: AttributeMethod,
                         load: Callable[[list[str]], tuple[Any, Dataset, str, torch.device]],
                         given_as_flags: bool = True) -> list[str] | None:
    """Train (or reuse) the continuation and return the ensemble's models: the model as saved, then each member;
    None (after a note on stderr) for a method that does not use the model (pixel, CLIP) or a pipeline folder
    without ``lr``, which are then run once on the model alone, and when ``--checkpoints`` overrides a
    continuation that only a config file asked for (``given_as_flags`` false).

    Args:
        args: the command line without the ``--continuation.*`` flags.
        given_as_flags: whether the settings came from ``--continuation.*`` flags (else from a config file).
        load: ``load(args) -> (ddpm, training dataset, checkpoint, device)``, the model and data the run
            attributes and the device its trainer runs on (``attribute.py`` parses them with its own CLI).

    Raises:
        ConfigError: ``--checkpoints`` as well, no output folder, or a folder holding a continuation made with
            other settings.
    """
    if flag_values(args, CHECKPOINTS_FLAG) or config_values(args, "checkpoints"):
        if given_as_flags:
            raise ConfigError(f"Give either {CHECKPOINTS_FLAG} (saved checkpoints) or {FLAG}.steps (a continuation "
                              "of one model), not both.")
        _progress(f"{CHECKPOINTS_FLAG} given: averaging over those checkpoints instead of the config's continuation.")
        return None
    if not method.uses_model:  # e.g. --method pixel with a config written for K-FAC
        _progress(f"--method {method.name} does not use the diffusion model, so the continuation would average "
                  "identical scores: scoring once.")
        return None
    folder = output_dir_of(args, FLAG) / MEMBERS_FOLDER / FOLDER
    ddpm, dataset, checkpoint, device = load(args)
    try:
        return [checkpoint, *map(str, continuation_checkpoints(ddpm, dataset, checkpoint, settings, folder, device))]
    except UnknownLearningRate as note:
        _progress(str(note))
        return None


def continuation_checkpoints(ddpm: Any, dataset: Dataset, checkpoint: str, settings: ContinuationSettings,
                             folder: Path, device: torch.device | str | None = None) -> list[Path]:
    """Train ``ddpm`` (loaded from ``checkpoint``) further on ``dataset`` and write its weights at each of
    ``settings.steps`` into ``folder`` (``continue_training`` on ``device``, ``member_paths``), with
    ``continuation.json``; a folder that already holds them with the same settings is reused.

    Raises:
        ConfigError: ``folder`` holds a continuation made with other settings, or a pipeline folder without
            ``settings.lr``.
    """
    stored = read_checkpoint(checkpoint, "--model.checkpoint") if Path(checkpoint).is_file() else None  # read once
    resolved = {**asdict(settings), "steps": list(settings.steps), **_model_settings(stored, settings, checkpoint),
                "model": str(Path(checkpoint).expanduser().resolve()), "num_examples": len(dataset)}
    paths = member_paths(folder, checkpoint, settings.steps)
    if (folder / SETTINGS_FILE).exists():
        previous = read_json(folder / SETTINGS_FILE)
        if previous != resolved:
            changed = sorted(k for k in set(previous) | set(resolved) if previous.get(k) != resolved.get(k))
            raise ConfigError(f"{folder} holds a continuation made with other settings ({', '.join(changed)}); "
                              "delete that folder or choose another --model.output_dir.")
        if all(path.exists() for path in paths):
            _progress(f"reusing {len(paths)} continued models in {folder}")
            return paths
    folder.mkdir(parents=True, exist_ok=True)
    _progress(f"training {max(settings.steps)} more steps from {checkpoint} (lr {resolved['lr']:g}, batch "
              f"{resolved['batch_size']}), keeping steps {list(settings.steps)}")
    states = continue_training(ddpm, dataset, settings.steps, resolved["lr"], resolved["batch_size"],
                               settings.warmup_steps, settings.seed, resolved["weight_decay"],
                               tuple(resolved["betas"]), device, _report_every(max(settings.steps)))
    for state, path in zip(states, paths):
        _save_member(ddpm, stored, state, path)
    write_json_atomic(folder / SETTINGS_FILE, resolved)
    return paths

"""``attribute.py --checkpoints '[final.ckpt, step_600/model.ckpt, ...]'``: one command for an ensemble over models.

    score[j, q] = (1 / K) sum_k score_k[j, q]

where score_k is the chosen method's score matrix (eq. 6 for K-FAC influence) on model k. Each checkpoint is
scored as an ordinary ``attribute.py`` run in ``<output_dir>/members/<k>_<name>/`` (its own curvature, resumable,
refusing changed settings), the second and later ones on the first one's queries (``queries.pt``), and the mean is
written to ``<output_dir>`` by ``--method ensemble`` (``lit_attr.attribution.ensemble``). Rerunning the command
resumes whichever member was interrupted. List the final weights first: they generate the queries and draw the
figure. Checkpoints of the second half of one training run (``SaveAtStepsCallback``) are what README "Results"
measured (K-FAC + 3 spread checkpoints).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from lightning.pytorch.utilities import rank_zero_only

from lit_attr.attribution.method_choice import ENSEMBLE, AttributeMethod, config_values, flag_values
from lit_attr.errors import ConfigError

CHECKPOINTS_FLAG = "--checkpoints"
MEMBERS_FOLDER = "members"
ENSEMBLE_MODEL_KEYS = ("top_k", "score_dtype", "overwrite")
"""``--model.*`` flags the averaging run takes from the command line; the others belong to the members' method."""


def requested_checkpoints(args: list[str]) -> list[str] | None:
    """The models of ``--checkpoints`` (a YAML list; else a config file's ``checkpoints:``), None when absent.

    Raises:
        ConfigError: not a list of two or more paths, or a file that does not exist.
    """
    values = [yaml.safe_load(value) for value in flag_values(args, CHECKPOINTS_FLAG)]
    values = values or config_values(args, "checkpoints")
    raw = values[-1] if values else None
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(path, str) for path in raw):
        raise ConfigError(f"{CHECKPOINTS_FLAG} takes a list of checkpoint files, e.g. {CHECKPOINTS_FLAG} "
                          f"'[runs/digits/checkpoints/last.ckpt, runs/digits/step_900/model.ckpt]'; got {raw!r}.")
    if len(raw) < 2:
        raise ConfigError(f"{CHECKPOINTS_FLAG} averages two or more models; got {raw}. For one model give "
                          "--model.checkpoint instead.")
    missing = [path for path in raw if not Path(path).expanduser().exists()]
    if missing:
        raise ConfigError(f"{CHECKPOINTS_FLAG}: {missing[0]} does not exist; give Lightning checkpoints (.ckpt) or "
                          "diffusers pipeline folders, as for --model.checkpoint.")
    return raw


def member_folders(output_dir: Path, checkpoints: list[str]) -> list[Path]:
    """``<output_dir>/members/<k>_<name>``: name from the file (``last``) or, for ``model.ckpt``, its folder
    (``step_600``)."""
    folders = []
    for k, checkpoint in enumerate(checkpoints):
        path = Path(checkpoint)
        name = path.parent.name if path.stem == "model" and path.parent.name else path.stem
        folders.append(output_dir / MEMBERS_FOLDER / f"{k}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}")
    return folders


def output_dir_of(args: list[str], flag: str = CHECKPOINTS_FLAG) -> Path:
    """The run's ``--model.output_dir`` (else the config's), which an ensemble given by ``flag`` needs."""
    values = flag_values(args, "--model.output_dir") or [str(v) for v in config_values(args, "model", "output_dir")]
    if not values:
        raise ConfigError(f"{flag} needs --model.output_dir (the ensemble's folder; its members go to "
                          f"<output_dir>/{MEMBERS_FOLDER}/).")
    return Path(values[-1]).expanduser()


@rank_zero_only
def _progress(message: str) -> None:
    """One progress line on stderr, from the first process only (with ``strategy=ddp`` every rank runs the loop)."""
    print(f"[{CHECKPOINTS_FLAG}] {message}", file=sys.stderr)


def without_flags(args: list[str], drop: Callable[[str], bool]) -> list[str]:
    """``args`` without every ``--flag value`` / ``--flag=value`` whose flag name ``drop`` accepts."""
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if arg.startswith("--") and drop(name):
            skip = "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--")
            continue
        out.append(arg)
    return out


def run_checkpoint_ensemble(args: list[str], checkpoints: list[str], method: AttributeMethod,
                            run_one: Callable[[list[str]], None]) -> Path:
    """Score each checkpoint with ``method`` (``run_one``: one ``attribute.py`` run), then write their mean.

    Returns:
        the ensemble's folder (``--model.output_dir``).

    Raises:
        ConfigError: ``--method ensemble`` or a method that does not use the model, or ``--model.checkpoint``
            given as well.
    """
    if method.name == ENSEMBLE:
        raise ConfigError(f"{CHECKPOINTS_FLAG} scores each model with a method and averages the runs itself: drop "
                          "--method ensemble (or use --method ensemble --model.members for finished runs).")
    if not method.uses_model:  # an ensemble over checkpoints would average copies
        raise ConfigError(f"--method {method.name} does not use the diffusion model, so {CHECKPOINTS_FLAG} would "
                          "average identical scores: drop --checkpoints.")
    if flag_values(args, "--model.checkpoint"):
        raise ConfigError(f"Give the models either in {CHECKPOINTS_FLAG} or in --model.checkpoint, not both.")
    output_dir = output_dir_of(args)
    folders = member_folders(output_dir, checkpoints)
    member_args = without_flags(args, lambda name: name in (CHECKPOINTS_FLAG, "--model.output_dir"))
    for k, (checkpoint, folder) in enumerate(zip(checkpoints, folders)):
        _progress(f"member {k + 1}/{len(checkpoints)}: {checkpoint} -> {folder}")
        queries = [] if k == 0 else [f"--model.queries.file={folders[0] / 'queries.pt'}",
                                     "--model.queries.folder=null", "--model.queries.train_indices=null"]
        run_one([*member_args, f"--model.checkpoint={checkpoint}", f"--model.output_dir={folder}", *queries])
    keep_model = tuple(f"--model.{key}" for key in ENSEMBLE_MODEL_KEYS)
    ensemble_args = without_flags(args, lambda name: name in (CHECKPOINTS_FLAG, "--method")
                                   or (name.startswith("--model.") and name not in keep_model))
    _progress(f"the mean of {len(checkpoints)} members -> {output_dir}")
    run_one([*ensemble_args, "--method", ENSEMBLE, f"--model.members=[{', '.join(map(str, folders))}]",
             f"--model.checkpoint={checkpoints[0]}", f"--model.output_dir={output_dir}"])
    return output_dir

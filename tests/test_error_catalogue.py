"""The error catalogue (docs/errors.md) through the real entry points, recovery with --model.overwrite, valid edge input.

Every entry runs ``run_cli(<script>.main, argv)`` in process (the parsing, checks and error formatting
of the real command line); a representative set also runs as real subprocesses. Each must exit with
its status, print exactly one ``error:`` line holding the expected text and no traceback, and leave
nothing complete-looking in its folder.
"""

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from lit_attr.cli_errors import DEBUG_ENV, EXIT_FAILURE, explain
from lit_attr.errors import ConfigError
from lit_attr.storage import load_scores
from tests.error_catalogue import ATTR, CASES, NUM_TRAIN, TRAIN, build_fixture, error_lines, leftovers, run_in_process
from tests.error_catalogue import truncate_scores_of_interrupted_run, zero_finished_scores
from tests.helpers import ROOT

REAL_CLI_CASES = [case for case in CASES if case.real_cli]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    torch.set_num_threads(1)
    return build_fixture(tmp_path_factory.mktemp("catalogue") / "fixture")


def prepare(case, fixture, root):
    case_dir = root / case.id
    case_dir.mkdir(parents=True)
    if case.setup is not None:
        case.setup(fixture, case_dir)
    return case_dir


def check(case, status, stderr, case_dir):
    lines = error_lines(stderr)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, f"expected one error line, got {lines}: {stderr[-2000:]}"
    assert status == case.status, lines[0]
    missing = [fragment for fragment in case.expect if fragment not in lines[0]]
    assert not missing, f"{missing} not in {lines[0]!r}"
    if case.keeps_previous_run:
        assert load_scores(case_dir / "attr").shape[0] == NUM_TRAIN  # the earlier run is intact and verifies
    else:
        assert not leftovers(case_dir), f"complete-looking outputs left: {leftovers(case_dir)}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_catalogue_entry(case, fixture, tmp_path):
    case_dir = prepare(case, fixture, tmp_path)
    status, stderr = run_in_process(case.argv(fixture, case_dir), case.env)
    check(case, status, stderr, case_dir)


@pytest.fixture(scope="module")
def real_cli_runs(fixture, tmp_path_factory):
    """The representative set as real subprocesses, two at a time (they are mostly interpreter start-up)."""
    root = tmp_path_factory.mktemp("real_cli")

    def run(case):
        case_dir = prepare(case, fixture, root)
        env = {**os.environ, "OMP_NUM_THREADS": "1", **case.env}
        env.pop(DEBUG_ENV, None)
        proc = subprocess.run([sys.executable, *case.argv(fixture, case_dir)], cwd=ROOT, capture_output=True,
                              text=True, env=env, timeout=600)
        return case.id, (proc, case_dir)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, REAL_CLI_CASES))


@pytest.mark.parametrize("case", REAL_CLI_CASES, ids=[case.id for case in REAL_CLI_CASES])
def test_catalogue_entry_real_cli(case, real_cli_runs):
    proc, case_dir = real_cli_runs[case.id]
    check(case, proc.returncode, proc.stderr, case_dir)


def test_docs_list_every_entry_with_its_message():
    rows = {line.split("`")[1]: line for line in (ROOT / "docs" / "errors.md").read_text().splitlines()
            if line.startswith("| `")}
    assert len(CASES) >= 60 and len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        assert case.id in rows, f"{case.id} is missing from docs/errors.md (python -m tests.error_catalogue)"
        stale = [f for f in case.expect if f.replace("|", "\\|") not in rows[case.id]]
        assert not stale, f"docs/errors.md row of {case.id} lacks {stale}: regenerate it"
    {"train.py", "attribute.py", "evaluate.py"}.issubset({case.base[0] for case in CASES})


def test_debug_flag_and_variable_show_the_traceback(fixture, tmp_path, monkeypatch):
    argv = [arg.format(fixture=fixture, case=tmp_path) for arg in (*TRAIN, "--model.optimizer.lr", "nan")]
    monkeypatch.setenv(DEBUG_ENV, "0")  # records the original value, restored afterwards (--debug sets it to 1)
    assert run_in_process(argv)[0] == 2
    with pytest.raises(ConfigError, match="--model.optimizer.lr"):
        run_in_process([*argv, "--debug"])
    with pytest.raises(ConfigError, match="--model.optimizer.lr"):
        run_in_process(argv)  # LIT_ATTR_DEBUG=1 now, as DDP's child processes inherit it
    monkeypatch.setenv(DEBUG_ENV, "0")


def test_library_errors_read_as_one_line_with_the_fix():
    status, message = explain(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                           "memory: you tried to allocate 7200000000 bytes.\nmore"))
    assert status == EXIT_FAILURE and "out of memory" in message and "--data.batch_size" in message
    assert "\n" not in message
    status, message = explain(torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge"))
    assert "--model.overwrite true" in message
    status, message = explain(NotADirectoryError(20, "Not a directory", "/x/scores.npy"))
    assert "/x/scores.npy" in message and "another output path" in message
    status, message = explain(KeyError("surprise"))
    assert "--debug" in message and status == EXIT_FAILURE


@pytest.mark.parametrize("damage", [zero_finished_scores, truncate_scores_of_interrupted_run], ids=lambda f: f.__name__)
def test_overwrite_recovers_a_damaged_store(fixture, tmp_path, damage):
    damage(fixture, tmp_path)
    argv = [arg.format(fixture=fixture, case=tmp_path) for arg in ATTR]
    status, stderr = run_in_process(argv)
    assert status == 2 and "is damaged" in error_lines(stderr)[0] and not (tmp_path / "attr" / "report.json").exists()
    assert run_in_process(argv)[0] == 2  # still refused: the store is marked damaged
    status, stderr = run_in_process([*argv, "--model.overwrite", "true"])
    assert status == 0, stderr[-3000:]
    scores = load_scores(tmp_path / "attr")
    assert np.isfinite(scores).all() and np.abs(scores).max() > 0
    metadata = json.loads((tmp_path / "attr" / "metadata.json").read_text())
    assert metadata["finalized"] and "damaged" not in metadata and "report.json" in metadata["checksums"]


def test_same_checkpoint_under_another_path_string_resumes(fixture, tmp_path):
    argv = [arg.format(fixture=fixture, case=tmp_path) for arg in ATTR]
    assert run_in_process(argv)[0] == 0
    other_spelling = str(fixture / "run" / ".." / "run" / "checkpoints" / "last.ckpt")
    status, stderr = run_in_process([*argv, "--model.checkpoint", other_spelling])
    assert status == 0, stderr[-3000:]


def test_batches_of_one_through_the_clis(fixture, tmp_path):
    """65 rows with --data.batch_size 64 (a last batch of ONE row: training, curvature, scoring) and ONE query;
    the memory estimate is printed before the work; training outputs follow --trainer.default_root_dir."""
    argv = [arg.format(fixture=fixture, case=tmp_path) for arg in ATTR]
    stdout = io.StringIO()
    status, stderr = run_in_process([*argv, "--data.batch_size", "64", "--model.queries.num_generated", "1",
                                     "--model.query_batch_size", "1"], stdout=stdout)
    assert status == 0, stderr[-3000:]
    assert stdout.getvalue().index("Memory estimate on cpu: queries") < stdout.getvalue().index("Fitted K-FAC")
    scores = load_scores(tmp_path / "attr")
    assert scores.shape == (NUM_TRAIN, 1) and np.isfinite(scores).all()
    train = [arg.format(fixture=fixture, case=tmp_path) for arg in TRAIN]  # the config's own root is <fixture>/run
    status, stderr = run_in_process([*train, "--data.subset_file", str(fixture / "subset.txt"), "--data.batch_size",
                                     "64", "--trainer.max_steps", "2"])
    assert status == 0, stderr[-3000:]
    run = tmp_path / "run"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert (run / "samples.png").is_file() and (run / "pipeline" / "unet" / "config.json").is_file()
    assert list((run / "lightning_logs").rglob("events.out.tfevents*"))
    assert not (fixture / "run" / "samples.png").exists() and not (fixture / "run" / "pipeline").exists()

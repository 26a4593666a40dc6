"""``attribute.py --checkpoints``: reading the list (flag or config key), naming the members' folders and the
arguments each run gets. The runs themselves are tested end to end in ``tests/test_attribute_methods.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_attr.attribution.checkpoint_ensemble import member_folders, requested_checkpoints, run_checkpoint_ensemble
from lit_attr.attribution.method_choice import attribute_methods, flag_values
from lit_attr.errors import ConfigError


@pytest.fixture
def two_models(tmp_path):
    final = tmp_path / "run" / "checkpoints" / "last.ckpt"
    step = tmp_path / "run" / "step_600" / "model.ckpt"
    for path in (final, step):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"weights")
    return str(final), str(step)


def test_the_list_comes_from_the_flag_else_from_a_config_key(tmp_path, two_models):
    final, step = two_models
    assert requested_checkpoints(["--checkpoints", f"[{final}, {step}]"]) == [final, step]
    assert requested_checkpoints([f"--checkpoints=[{step}, {final}]"]) == [step, final]
    config = tmp_path / "attribute.yaml"
    config.write_text(f"checkpoints:\n  - {final}\n  - {step}\nmodel:\n  output_dir: {tmp_path / 'out'}\n")
    assert requested_checkpoints(["--config", str(config)]) == [final, step]
    assert requested_checkpoints(["--config", str(config), "--checkpoints", f"[{step}, {final}]"]) == [step, final]
    assert requested_checkpoints(["--model.checkpoint", final]) is None


def test_member_folders_are_numbered_and_named_after_the_file_or_its_step_folder(tmp_path, two_models):
    final, step = two_models
    folders = member_folders(tmp_path / "out", [final, step, "weights/odd name.ckpt"])
    assert [f.relative_to(tmp_path / "out").as_posix() for f in folders] == [
        "members/0_last", "members/1_step_600", "members/2_odd_name"]


def test_members_get_their_model_and_folder_and_later_ones_the_first_ones_queries(tmp_path, two_models):
    final, step = two_models
    calls: list[list[str]] = []
    args = ["--config", "c.yaml", "--checkpoints", f"[{final}, {step}]", "--model.output_dir", str(tmp_path / "out"),
            "--model.damping", "-1e-3", "--model.top_k", "4", "--data.batch_size", "8"]
    out = run_checkpoint_ensemble(args, [final, step], attribute_methods()["kfac"], calls.append)
    assert out == tmp_path / "out" and len(calls) == 3
    first, second, mean = calls
    assert first == ["--config", "c.yaml", "--model.damping", "-1e-3", "--model.top_k", "4", "--data.batch_size", "8",
                     f"--model.checkpoint={final}", f"--model.output_dir={tmp_path / 'out' / 'members' / '0_last'}"]
    assert f"--model.queries.file={tmp_path / 'out' / 'members' / '0_last' / 'queries.pt'}" in second
    assert f"--model.checkpoint={step}" in second
    # the averaging run keeps the data, trainer and report flags, not the members' method settings
    assert mean[:6] == ["--config", "c.yaml", "--model.top_k", "4", "--data.batch_size", "8"]
    assert "--model.damping" not in mean and mean[6:8] == ["--method", "ensemble"]
    assert mean[-1] == f"--model.output_dir={tmp_path / 'out'}"


def test_refusals_name_the_fix(tmp_path, two_models):
    final, step = two_models
    with pytest.raises(ConfigError, match="does not exist"):
        requested_checkpoints(["--checkpoints", f"[{final}, {tmp_path / 'none.ckpt'}]"])
    with pytest.raises(ConfigError, match="takes a list of checkpoint files"):
        requested_checkpoints(["--checkpoints", final])
    with pytest.raises(ConfigError, match="needs --model.output_dir"):
        run_checkpoint_ensemble([], [final, step], attribute_methods()["kfac"], lambda args: None)
    with pytest.raises(ConfigError, match="--method clip does not use the diffusion model"):
        run_checkpoint_ensemble(["--model.output_dir", "o"], [final, step], attribute_methods()["clip"],
                                lambda args: None)
    assert not Path("o").exists()


def test_flag_values_keep_the_order_of_both_spellings():
    assert flag_values(["--method", "trak", "--method=dtrak", "--method", "ekfac"], "--method") == [
        "trak", "dtrak", "ekfac"]
    assert flag_values(["--method=trak", "--method", "kfac"], "--method") == ["trak", "kfac"]
    assert flag_values(["--method"], "--method") == []

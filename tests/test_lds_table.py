"""benchmarks/lds_table.py: one table of held-out LDS across benchmark roots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lds_table.py"


def _row(method: str, target: str, mean: float, diff: float | None, draws: int | None = 32) -> dict:
    return {"method": method, "target": target, "num_draws": draws,
            "selected": {"mean": mean, "stderr": 0.01},
            "vs_reference": {"method": "kfac", "mean": diff if diff is not None else 0.0, "stderr": 0.02}}


def _write(root: Path, protocol: str, rows: list[dict], oracle: float) -> None:
    root.mkdir()
    diagnostics = {"loss": {"oracle_lds": {"mean": oracle, "stderr": 0.05},
                            "measurement_mc_reliability": {"mean": 0.9, "stderr": 0.01}}}
    (root / "results.json").write_text(json.dumps(
        {"protocol": protocol, "num_subsets": 40, "comparison": rows, "diagnostics": diagnostics}))


def test_methods_of_every_root_in_one_table(tmp_path):
    _write(tmp_path / "a", "common", [_row("kfac", "loss", 0.3, None, 128), _row("kfac", "elbo", 0.1, None, 128),
                                      _row("pixel", "loss", 0.2, -0.1, None)], 0.18)
    _write(tmp_path / "b", "independent", [_row("kfac", "loss", 0.25, None), _row("trak", "loss", 0.1, -0.15)], 0.05)
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "| method | a (common, M = 40) | b (independent, M = 40) |"
    kfac, pixel, trak = (next(line for line in lines if line.startswith(f"| {m} |")) for m in ("kfac", "pixel", "trak"))
    assert "0.300 ± 0.010 S=128" in kfac and "0.250 ± 0.010 S=32" in kfac and "(" not in kfac  # the reference
    assert "0.200 ± 0.010 (-0.100 ± 0.020)" in pixel and pixel.endswith("| – |")  # missing in root b
    assert trak.startswith("| trak | – |") and "(-0.150 ± 0.020)" in trak
    assert "| oracle (exact retraining) | 0.180 ± 0.050 | 0.050 ± 0.050 |" in out
    assert sum(line.startswith("| kfac |") for line in lines) == 1  # one row per method, not per target


def test_a_root_without_results_is_refused_with_the_fix(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "evaluate.py report" in result.stderr


def test_the_bootstrap_over_subsets_is_shown_when_the_results_have_it(tmp_path):
    pixel = {**_row("pixel", "loss", 0.2, -0.1, None), "subset_se": 0.07, "vs_reference_subset_se": 0.09}
    _write(tmp_path / "a", "common", [_row("kfac", "loss", 0.3, None, 128), pixel], 0.18)
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a")], capture_output=True, text=True,
                         check=True).stdout
    assert "| pixel | 0.200 ± 0.010 [± 0.070] (-0.100 ± 0.020 [± 0.090]) S=– |" in out

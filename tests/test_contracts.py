"""The typed contracts between attribution modules and their callbacks; ``lit_attr`` never imports ``callbacks``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import callbacks.curvature
import callbacks.score_writer
from lit_attr.attribution.gradient_pass import GradientPassModule
from lit_attr.attribution.influence import InfluenceModule
from lit_attr.attribution.score_writer import ScoreWriter
from lit_attr.contracts import CurvatureConsumer, ScoreProducer
from lit_attr.curvature.callback import KFACCallback
from lit_attr.ddpm_module import DDPMModule
from lit_attr.errors import ConfigError
from lit_attr.attribution.projected import ProjectedGradientModule

LIT_ATTR = Path(__file__).resolve().parents[1] / "lit_attr"


def _imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_lit_attr_never_imports_the_callbacks_package():
    offenders = [str(p.relative_to(LIT_ATTR)) for p in sorted(LIT_ATTR.rglob("*.py"))
                 if "callbacks" in _imported_top_level_names(p)]
    assert not offenders, f"lit_attr modules importing the top-level callbacks package: {offenders}"


def test_yaml_class_paths_name_the_lit_attr_classes():
    assert callbacks.curvature.KFACCallback is KFACCallback
    assert callbacks.score_writer.ScoreWriter is ScoreWriter


def test_attribution_modules_implement_the_contracts():
    for module in (InfluenceModule, ProjectedGradientModule):
        assert issubclass(module, ScoreProducer)
    assert issubclass(InfluenceModule, CurvatureConsumer)
    # TRAK / D-TRAK share the gradient pass, not the curvature: no curvature hook to switch off.
    assert issubclass(ProjectedGradientModule, GradientPassModule) and not issubclass(ProjectedGradientModule,
                                                                                      InfluenceModule)
    assert not issubclass(ProjectedGradientModule, CurvatureConsumer)
    assert not issubclass(DDPMModule, ScoreProducer)


def test_score_writer_refuses_a_module_without_scores():
    with pytest.raises(ConfigError, match="has no score_target"):
        ScoreWriter().on_predict_start(None, DDPMModule())

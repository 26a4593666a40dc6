"""Each choice (draw scheme, Fisher type, K-FAC variant, query compression, ...) is spelled once: an enum for the
code and one ``Literal`` of its values beside it for the CLI signatures (jsonargparse parses an ``Enum`` by member
name, ``STRATIFIED``, where users write the value, ``stratified``)."""

import re
from pathlib import Path
from typing import get_args

import pytest

from lit_attr.attribution.quantize import QueryCompression, QueryCompressionName
from lit_attr.curvature.fisher import FisherType, FisherTypeName
from lit_attr.curvature.kfac import KFACApprox, KFACApproxName
from lit_attr.diffusion.draws import CurvatureDrawSchemeName, DrawScheme, DrawSchemeName
from lit_attr.evaluation.jobs import SeedingProtocol, SeedingProtocolName

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("enum, names", [(DrawScheme, DrawSchemeName), (QueryCompression, QueryCompressionName),
                                         (FisherType, FisherTypeName), (KFACApprox, KFACApproxName),
                                         (SeedingProtocol, SeedingProtocolName)])
def test_each_literal_lists_exactly_its_enums_values(enum, names):
    assert get_args(names) == tuple(member.value for member in enum)


def test_curvature_draw_schemes_are_the_per_example_schemes():
    assert set(get_args(CurvatureDrawSchemeName)) == {scheme.for_curvature().value for scheme in DrawScheme}


def test_no_list_of_choices_is_typed_twice_in_lit_attr():
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "lit_attr").rglob("*.py")):
        for choices in re.findall(r"Literal\[([^\]]+)\]", path.read_text()):
            found.setdefault(re.sub(r"\s+", " ", choices), []).append(str(path.relative_to(ROOT)))
    repeated = {choices: paths for choices, paths in found.items() if len(paths) > 1}
    assert not repeated, f"choices typed more than once (name them once, beside their enum): {repeated}"

"""``callbacks.score_writer.ScoreWriter``, the YAML name of ``lit_attr.attribution.score_writer.ScoreWriter``."""

from lit_attr.attribution.score_writer import ScoreWriter

__all__ = ["ScoreWriter"]

"""``callbacks.checkpoint_steps.SaveAtStepsCallback``, the YAML name of ``lit_attr.step_checkpoints.SaveAtStepsCallback``."""

from lit_attr.step_checkpoints import SaveAtStepsCallback, step_checkpoint

__all__ = ["SaveAtStepsCallback", "step_checkpoint"]

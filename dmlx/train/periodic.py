"""When periodic work is due: one small rule for refresh, logging,
synchronisation, checkpoints and evaluation (CLU's ``periodic_actions`` in
miniature, without their threads).

``Every(steps=25)`` is due after steps 25, 50, ...; ``Every(epochs=2,
steps_per_epoch=30)`` after steps 60, 120, ...; both at once when either
holds. Steps count *completed* steps, so a rule asked at step ``s`` says
whether the work is due between step ``s - 1`` and step ``s``.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Every:
  """Due every ``steps`` steps and/or every ``epochs`` epochs (0 = never
  by that measure); ``at_start`` also makes it due at step 0."""
  steps: int = 0
  epochs: int = 0
  steps_per_epoch: int = 1
  at_start: bool = False

  def __post_init__(self):
    for name in ("steps", "epochs", "steps_per_epoch"):
      if getattr(self, name) < 0:
        raise ValueError(f"Every.{name} must be >= 0, got {getattr(self, name)}.")
    if self.epochs and self.steps_per_epoch < 1:
      raise ValueError("Every(epochs=...) needs steps_per_epoch >= 1.")

  def __call__(self, step: int) -> bool:
    if step == 0:
      return self.at_start
    if self.steps and step % self.steps == 0:
      return True
    return bool(self.epochs) and step % (self.epochs * self.steps_per_epoch) == 0

"""Phases (WebRL): every ``grpo.phase_steps`` optimizer steps the policy of that moment becomes the
reference the KL term pulls toward, and the replay pool is scored under it.

TRL's reference is where the run started: the start model for a full fine-tune (``ref_model``),
and for LoRA, when a ``PeftModel`` is handed in with ``beta != 0``, a frozen copy of its adapter
named ``ref`` (``build_training`` does so whenever ``beta > 0``). TRL's own ``sync_ref_model``
refuses PEFT models and, with α < 1, averages parameters instead of taking a past policy. So
``PhaseReference`` copies the live weights into that reference itself, for both: the adapter
``default`` into ``ref``, or every parameter into ``ref_model``. The KL term then measures the
distance to the phase-start policy, not to the base model.

A resumed run starts a new phase where it resumes (the checkpoint's policy is the reference):
the phase-start weights are not in the checkpoint, and a restart is a natural phase boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from transformers import TrainerCallback

from services.trainer.distributed import copy_weights

log = logging.getLogger(__name__)


def copy_policy_into_reference(trainer) -> bool:
    """Make the trainer's reference equal the live policy; False when it has none (beta = 0)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        if getattr(trainer, "ref_model", None) is not None:
            reference = dict(trainer.accelerator.unwrap_model(trainer.ref_model).named_parameters())
            for name, param in model.named_parameters():
                copy_weights(reference[name], param)
            return True
        if "ref" in getattr(model, "peft_config", {}):
            for name, param in model.named_parameters():
                if ".default." in name:
                    reference = model.get_parameter(name.replace(".default.", ".ref."))
                    copy_weights(reference, param)
            return True
    return False


class PhaseReference(TrainerCallback):
    """Starts a phase every ``phase_steps`` steps and when a run resumes (see module docstring);
    ``on_phase_start`` listeners (the replay pool) get the live model."""

    def __init__(
        self,
        trainer,
        phase_steps: int,
        on_phase_start: Sequence[Callable[[torch.nn.Module], None]] = (),
    ) -> None:
        self.trainer = trainer
        self.phase_steps = phase_steps
        self.on_phase_start = list(on_phase_start)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            copy_policy_into_reference(self.trainer)  # resumed: a new phase starts here
        self._start()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.phase_steps and step % self.phase_steps == 0 and step < state.max_steps:
            has_reference = copy_policy_into_reference(self.trainer)
            log.info(
                "phase %d starts at step %d%s",
                step // self.phase_steps + 1,
                step,
                ": the KL reference is now this policy" if has_reference else "",
            )
            self._start()

    def _start(self) -> None:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        for listener in self.on_phase_start:
            listener(model)


def drop_reference_adapter(model) -> None:
    """Remove the ``ref`` adapter (done training: saved folders hold the policy's adapter only)."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")

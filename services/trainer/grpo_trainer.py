"""TRL's ``GRPOTrainer`` with this project's one change to the objective: the replay term.

TRL's loss (clipped policy gradient + ``beta`` × KL to the reference) is computed by TRL as is;
``compute_loss`` adds ``replay.coef`` × the mean NLL of the step's replayed action tokens
(``replay.py`` documents the objective). Without replay the class is TRL's trainer unchanged.
"""

from __future__ import annotations

from trl import GRPOTrainer

from services.trainer.replay import ReplayTerm


class BrowserGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` + an optional ``ReplayTerm`` (set ``replay_term`` after construction)."""

    replay_term: ReplayTerm | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.replay_term is None or not self.model.training:
            return loss
        extra = self.replay_term(model, self.state.global_step)
        return loss if extra is None else loss + extra

"""TRL's ``GRPOTrainer`` with this project's two changes to the objective.

1. **The replay term.** TRL's loss (clipped policy gradient + ``beta`` × KL to the reference) is
   computed by TRL as is; ``compute_loss`` adds ``replay.coef`` × the mean NLL of the step's
   replayed action tokens (``replay.py`` documents the objective).
2. **The off-policy correction** (``rollout.correction: behaviour``). With ``use_vllm=False``
   TRL anchors the PPO ratio on the current policy (``old = π_θ.detach()``, ratio exactly 1) and
   applies no importance correction, so tokens an older policy sampled (``rollout.max_staleness``
   > 0, or a served policy lagging a push) would be trained as on-policy. Here the anchor of each
   such token is the log-prob its sampler returned, μ: the ratio is π_θ/μ and TRL's clip
   (``1 ± epsilon``) truncates it, as in TRL's AsyncGRPO and PipelineRL. On-policy tokens, env
   tokens and tokens that came without a log-prob keep the current policy as anchor (ratio 1,
   what TRL does for them today), so a synchronous run is unchanged.

Without replay and without stale tokens the class is TRL's trainer unchanged.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from services.trainer.replay import ReplayTerm

#: The per-token field of the rollout batch that carries μ (``trl_batch.py``).
BEHAVIOUR_FIELD = "behaviour_logprobs"


class BrowserGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` + an optional ``ReplayTerm`` (set ``replay_term`` after construction) and
    the off-policy correction (set ``correct_off_policy``)."""

    replay_term: ReplayTerm | None = None
    correct_off_policy: bool = True
    _behaviour: list[list[float]] | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.replay_term is None or not self.model.training:
            return loss
        extra = self.replay_term(model, self.state.global_step)
        return loss if extra is None else loss + extra

    def _generate(self, prompts):
        # The rollout's behaviour log-probs are not a reward input: taken out of the fields TRL
        # hands to the reward functions, kept for the batch being built.
        generated = super()._generate(prompts)
        extra_fields = generated[5]
        self._behaviour = extra_fields.pop(BEHAVIOUR_FIELD, None)
        return generated

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        behaviour, self._behaviour = self._behaviour, None
        if behaviour is None or not self.correct_off_policy:
            return output
        mu = _padded(behaviour, output["completion_ids"])
        stale = ~torch.isnan(mu)
        mode = "train" if self.model.training else "eval"
        mask = output["completion_mask"] * output.get("tool_mask", 1)
        self._metrics[mode]["off_policy/stale_token_fraction"].append(
            (stale * mask).sum().item() / max(mask.sum().item(), 1)
        )
        if not stale.any():
            return output  # all on-policy: TRL's own anchor
        current = output.get("old_per_token_logps")
        if current is None:
            current = self._current_logps(output)
        output["old_per_token_logps"] = torch.where(stale, mu, current)
        ratio = torch.exp(current - mu)[stale & mask.bool()]
        if ratio.numel():
            self._metrics[mode]["off_policy/ratio_mean"].append(ratio.mean().item())
        return output

    @torch.no_grad()
    def _current_logps(self, output: dict) -> torch.Tensor:
        """log π_θ of every completion token under the policy about to be updated."""
        completion_ids = output["completion_ids"]
        input_ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            self.model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            batch_size=self.args.per_device_train_batch_size,
        )
        return logps


def _padded(rows: list[list[float]], like: torch.Tensor) -> torch.Tensor:
    """``rows`` right-padded with NaN to the shape (and device) of ``like``."""
    out = torch.full(like.shape, float("nan"), device=like.device)
    for i, row in enumerate(rows):
        n = min(len(row), like.size(1))
        out[i, :n] = torch.tensor(row[:n], dtype=out.dtype)
    return out

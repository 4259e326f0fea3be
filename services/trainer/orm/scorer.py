"""An outcome reward model in this process: one forward pass per batch of trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.trainer.orm.prompt import JudgeInput, JudgePrompt


class JudgeScorer:
    """Scores judge inputs ``batch_size`` at a time; subclasses score one batch of token ids."""

    prompt: JudgePrompt
    batch_size: int

    def scores(self, items: Sequence[JudgeInput]) -> list[float]:
        rows = [self.prompt.ids(item) for item in items]
        out: list[float] = []
        for i in range(0, len(rows), self.batch_size):
            out.extend(self.score_ids(rows[i : i + self.batch_size]))
        return out

    def score_ids(self, rows: Sequence[list[int]]) -> list[float]:
        raise NotImplementedError


class OrmScorer(JudgeScorer):
    """P(YES) / (P(YES) + P(NO)) at the answer position, for a batch of judge inputs.

    The verdict is YES when that score is at least 0.5, i.e. when the model puts more
    probability on YES than on NO; the score itself is kept for calibration.
    """

    def __init__(self, model, tokenizer, *, page_tokens: int = 512, batch_size: int = 8):
        self.model = model
        self.prompt = JudgePrompt(tokenizer, page_tokens=page_tokens)
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, source: str | Path, *, cache_dir=None, page_tokens: int = 512, batch_size=8):
        """From a model folder, or a LoRA adapter folder over its base (merged for speed)."""
        from services.trainer.loading import PolicySpec, load_for_generation

        model, tokenizer = load_for_generation(PolicySpec("orm", str(source)), cache_dir)
        return cls(model, tokenizer, page_tokens=page_tokens, batch_size=batch_size)

    def score_ids(self, rows: Sequence[list[int]]) -> list[float]:
        """Scores of prompts given as token ids (``JudgePrompt.ids``), one batch, left-padded so
        every prompt's last token is the last position."""
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each prompt starts at position 0
        device = self.model.device
        with torch.no_grad():
            out = self.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=1,  # the answer position only: Gemma's head is 262k wide
            )
        pair = out.logits[:, -1, list(self.prompt.answer_ids)].float()
        return torch.softmax(pair, dim=-1)[:, 0].tolist()

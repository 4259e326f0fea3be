"""An outcome reward model behind the inference service: vLLM scores the answer token.

One ``/v1/completions`` request per batch: the prompts as token ids (built here by the ORM's
tokenizer, exactly as in process), one token, ``allowed_token_ids`` = the two answers, and their
log-probs. The inference service runs vLLM with ``--logprobs-mode processed_logprobs``, so both
answers come back with the log-probs after that mask; the score is their normalised YES
probability, as ``OrmScorer`` computes it. The ORM is any model name the server answers to: a
LoRA adapter pushed or loaded on the policy's server (over the same base it was trained on), or
a server of its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import httpx

from services.trainer.orm.prompt import JudgePrompt
from services.trainer.orm.scorer import JudgeScorer


class OrmServerError(RuntimeError):
    """The server did not answer a judgement: the step cannot be scored."""


class RemoteOrmScorer(JudgeScorer):
    def __init__(
        self,
        url: str,
        model: str,
        tokenizer,
        *,
        page_tokens: int = 512,
        batch_size: int = 8,
        timeout_s: float = 120.0,
        api_key: str | None = None,
    ) -> None:
        self.model = model
        self.prompt = JudgePrompt(tokenizer, page_tokens=page_tokens)
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers)

    @classmethod
    def from_config(cls, config, *, cache_dir=None) -> RemoteOrmScorer:
        from transformers import AutoTokenizer

        from services.trainer.models import resolve_model

        api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        return cls(
            config.server,
            config.served_name,
            AutoTokenizer.from_pretrained(resolve_model(config.model, cache_dir)),
            page_tokens=config.page_tokens,
            batch_size=config.batch_size,
            api_key=api_key,
        )

    def score_ids(self, rows: Sequence[list[int]]) -> list[float]:
        yes, no = self.prompt.answer_ids
        body = {
            "model": self.model,
            "prompt": [list(r) for r in rows],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 2,
            "allowed_token_ids": [yes, no],
            "return_tokens_as_token_ids": True,
        }
        try:
            reply = self._http.post("/v1/completions", json=body)
            reply.raise_for_status()
            choices = sorted(reply.json()["choices"], key=lambda c: c["index"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise OrmServerError(f"ORM {self.model!r} at {self._http.base_url}: {exc}") from exc
        return [_yes_share(c["logprobs"]["top_logprobs"][0], yes, no) for c in choices]

    def close(self) -> None:
        self._http.close()


def _yes_share(top: dict[str, float], yes: int, no: int) -> float:
    """P(YES) / (P(YES) + P(NO)) from the top log-probs (an answer left out has probability 0)."""
    lp_yes = top.get(f"token_id:{yes}", -math.inf)
    lp_no = top.get(f"token_id:{no}", -math.inf)
    if lp_yes == lp_no == -math.inf:
        raise OrmServerError(f"neither answer token among the returned log-probs: {top}")
    if lp_no == -math.inf:
        return 1.0
    return 1.0 / (1.0 + math.exp(lp_no - lp_yes))

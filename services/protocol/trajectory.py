"""Trajectories as data: one record per played episode, the format every source writes.

Training, evaluation and the demonstration sources (scripted solvers, rejection sampling, a
teacher) all save episodes as ``Trajectory`` records, one JSON object per line, in shards
(``part-00000.jsonl``, ...) that are written whole and renamed into place, so a crash never
leaves a torn record; ``datasets.load_dataset("json", data_files="<folder>/*.jsonl")`` loads a
folder. The schema is exported to ``proto/trajectory.schema.json``.

Tokens: ``prompt_ids + completion_ids`` is the whole episode exactly as the policy saw and wrote
it (token in, token out); ``env_mask`` marks the policy's own tokens (1) among the env's replies
(0), and each turn says which slice of ``completion_ids`` it produced. ``tokenizer`` and
``prompt_format`` say whose tokens they are: a policy with another tokenizer re-renders the
episode from the turns' observations and actions instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TRAJECTORY_FORMAT = "browser-rl.trajectory/1"
Source = Literal["training", "evaluation", "scripted", "rejection", "teacher"]


class TurnRecord(BaseModel):
    """One turn: the page the policy read, what it did, and where its tokens are."""

    model_config = ConfigDict(extra="forbid")

    observation: str = Field(..., description="The page (accessibility tree) the turn read.")
    action: str = Field(..., description="The action sent (the raw reply when it had none).")
    error: str = Field("", description="The env's error for the action ('' when it ran).")
    reward: float = Field(0.0, description="The env's reward after the action.")
    start: int = Field(..., ge=0, description="First completion token the turn produced.")
    end: int = Field(..., ge=0, description="One past its last; the policy saw all before start.")


class Trajectory(BaseModel):
    """One episode, as a dataset row."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["browser-rl.trajectory/1"] = TRAJECTORY_FORMAT
    task: str = Field(..., description="Canonical task name.")
    seed: int = Field(..., ge=0)
    goal: str = Field("", description="The task's goal in words.")
    source: Source = Field(..., description="Who played it.")
    policy: str = Field(..., description="The model (or solver) that chose the actions.")
    policy_version: int | None = Field(None, description="Trainer step of the policy, if any.")
    tokenizer: str = Field(..., description="Whose token ids these are (name or path).")
    prompt_format: Literal["chat", "fewshot", "plain"] = Field(
        ..., description="How prompts were built."
    )
    max_turns: int = Field(..., ge=1, description="The episode's turn cap (prompts show it).")
    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int] = Field(..., description="1: the policy's token; 0: the env's.")
    logprobs: list[float] = Field(..., description="The generator's logprob of each token.")
    turns: list[TurnRecord]
    final_observation: str = Field(
        "", description="The page the last action left ('' in records written before it was kept)."
    )
    reward: float
    outcome: Literal["success", "failure", "truncated"]

    @model_validator(mode="after")
    def _aligned(self) -> Trajectory:
        n = len(self.completion_ids)
        if len(self.env_mask) != n or len(self.logprobs) != n:
            raise ValueError("completion_ids, env_mask and logprobs must have the same length")
        for turn in self.turns:
            if not turn.start <= turn.end <= n:
                raise ValueError(f"turn tokens [{turn.start}, {turn.end}) outside the completion")
        return self

    @property
    def success(self) -> bool:
        return self.outcome == "success"

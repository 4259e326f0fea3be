"""WebRL's replay buffer and the phase reference: the band filter keeps and drops what it should,
replayed actions gain likelihood, the buffer survives a restart, and at each phase boundary the
KL reference becomes the live policy (LoRA adapter and full model alike)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState

from services.protocol.trajectory import Trajectory, TurnRecord
from services.trainer.phases import PhaseReference
from services.trainer.prompts import PromptBuilder
from services.trainer.replay import ReplayBuffer, ReplayTerm, action_logprobs, action_token_prob

PAGE = "RootWebArea 'Form', focused\n\t[11] textbox ''\n\t[12] button 'Submit'"
EPISODES = [
    (
        'Enter "Paris" and press Submit.',
        [(PAGE, "fill('11', 'Paris')", ""), (PAGE, "click('12')", "")],
    ),
    ("Click Submit.", [(PAGE, "click('12')", "")]),
    (
        'Enter "Rome" and press Submit.',
        [(PAGE, "fill('11', 'Rome')", ""), (PAGE, "click('12')", "")],
    ),
    ('Enter "Oslo" and press Submit.', [(PAGE, "fill('11', 'Oslo')", "")]),
]


def record(prompts: PromptBuilder, goal: str, turns, seed: int, success: bool = True) -> Trajectory:
    """A trajectory as the rollout stack would save it (tokens rendered by the prompt builder)."""
    prompt_ids, completion_ids, mask = prompts.render_episode(goal, turns, 4)
    spans, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append((start, i))
            start = None
    return Trajectory(
        task="enter-text", seed=seed, goal=goal, source="training", policy="tiny",
        tokenizer=prompts.tokenizer.name_or_path, prompt_format=prompts.format, max_turns=4,
        prompt_ids=prompt_ids, completion_ids=completion_ids, env_mask=mask,
        logprobs=[0.0] * len(mask),
        turns=[
            TurnRecord(observation=page, action=action, start=a, end=b)
            for (page, action, _), (a, b) in zip(turns, spans, strict=True)
        ],
        reward=1.0 if success else 0.0,
        outcome="success" if success else "failure",
    )  # fmt: skip


@pytest.fixture
def setup(tiny_chat_model):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    prompts = PromptBuilder(tokenizer, fmt="chat")
    records = [record(prompts, goal, turns, seed) for seed, (goal, turns) in enumerate(EPISODES)]
    return model, prompts, records


def test_action_probability_is_the_geometric_mean_over_the_action_tokens_only(setup, tmp_path):
    model, prompts, records = setup
    buffer = ReplayBuffer(tmp_path / "replay", prompts, capacity=10, band=(0.5, 0.95))
    buffer.add(records)
    sample = buffer.samples[0]
    with torch.no_grad():  # the slow way: every position through the LM head
        logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0]
    logps = torch.log_softmax(logits.float(), -1)
    expected = [logps[t - 1, sample.input_ids[t]].item() for t in sample.targets]
    assert action_logprobs(model, sample).tolist() == pytest.approx(expected, abs=1e-5)
    assert action_token_prob(model, sample) == pytest.approx(
        math.exp(sum(expected) / len(expected))
    )
    decoded = prompts.tokenizer.decode([sample.input_ids[t] for t in sample.targets])
    assert "fill('11', 'Paris')" in decoded and "Submit" not in decoded  # actions, not the page


def test_the_band_keeps_what_the_policy_half_knows_and_drops_the_rest(setup, tmp_path):
    model, prompts, records = setup
    buffer = ReplayBuffer(tmp_path / "replay", prompts, capacity=10, band=(0.5, 0.95))
    buffer.add(records)
    probs = [action_token_prob(model, s) for s in buffer.samples]
    ranked = sorted(range(len(probs)), key=probs.__getitem__)
    low, high = probs[ranked[1]], probs[ranked[2]]  # a band around the middle two
    buffer.band = (low, high)
    buffer.rescore(model)
    assert buffer.scores == pytest.approx(probs)
    assert sorted(buffer.pool, key=lambda s: s.record.seed) == sorted(
        (buffer.samples[i] for i in ranked[1:3]), key=lambda s: s.record.seed
    )
    buffer.band = (0.5, 0.95)  # the random tiny model knows nothing: every action is far off
    buffer.rescore(model)
    assert buffer.pool == [] and max(buffer.scores) < 0.5


def test_only_successes_are_kept_on_disk_up_to_capacity_and_found_again(setup, tmp_path):
    _, prompts, records = setup
    failed = record(prompts, *EPISODES[0], seed=99, success=False)
    buffer = ReplayBuffer(tmp_path / "replay", prompts, capacity=3, band=(0.5, 0.95))
    assert buffer.add([*records[:2], failed]) == 2
    buffer.add(records[2:])
    assert [s.record.seed for s in buffer.samples] == [1, 2, 3]  # the most recent 3
    again = ReplayBuffer(tmp_path / "replay", prompts, capacity=3, band=(0.5, 0.95))
    assert [s.record.seed for s in again.samples] == [1, 2, 3]  # a restarted run finds them


def test_replayed_actions_gain_likelihood_and_the_shares_sum_to_the_whole_term(setup, tmp_path):
    model, prompts, records = setup
    buffer = ReplayBuffer(tmp_path / "replay", prompts, capacity=10, band=(0.0001, 1.0))
    buffer.add(records)
    buffer.rescore(model)
    term = ReplayTerm(buffer, coef=0.5, per_step=3, micro_batches=2, seed=0)
    drawn = term.draw(step=0)
    assert len(drawn) == 3 and drawn == term.draw(step=0) and drawn != term.draw(step=1)

    with torch.no_grad():
        nll = -torch.cat([action_logprobs(model, s) for s in drawn])
        shares = [term(model, step=0) for _ in range(3)]
    assert shares[2] is None  # 3 samples over 2 micro-batches: two shares, then nothing
    assert (shares[0] + shares[1]).item() == pytest.approx(0.5 * nll.mean().item(), rel=1e-5)
    assert term.last_count == 3 and term.last_nll == pytest.approx(nll.mean().item(), rel=1e-5)

    before = [action_token_prob(model, s) for s in drawn]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, 6):
        term.draw = lambda step, drawn=drawn: drawn  # the same samples every step
        for _ in range(2):
            term(model, step).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = [action_token_prob(model, s) for s in drawn]
    assert all(a > 2 * b for a, b in zip(after, before, strict=True)), (before, after)


def _trainer(model, ref_model=None):
    accelerator = SimpleNamespace(unwrap_model=lambda m: m)
    return SimpleNamespace(model=model, ref_model=ref_model, accelerator=accelerator)


def _step(callback: PhaseReference, step: int, max_steps: int = 10) -> None:
    state = TrainerState(global_step=step, max_steps=max_steps)
    callback.on_step_end(None, state, TrainerControl())


def _nudge(model, name_part: str) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name_part in name:
                param.add_(0.01)


def test_the_lora_reference_adapter_is_the_policy_at_the_start_of_each_phase(tiny_chat_model):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    model.add_adapter("ref", model.peft_config["default"])  # what TRL does with beta > 0
    params = dict(model.named_parameters())
    pairs = [(n, n.replace(".default.", ".ref.")) for n in params if ".default." in n]

    def same() -> bool:
        return all(torch.equal(params[a], params[b]) for a, b in pairs)

    seen: list[int] = []
    callback = PhaseReference(
        _trainer(model), phase_steps=3, on_phase_start=[lambda m: seen.append(1)]
    )
    _nudge(model, ".default.")  # one optimizer step moves the adapter
    _step(callback, 1)
    assert not same()  # mid-phase: the reference stays the phase-start adapter
    _step(callback, 3)
    assert same() and seen == [1]  # phase boundary: the reference is now this policy
    _nudge(model, ".default.")
    _step(callback, 4)
    assert not same()
    with torch.no_grad():  # the KL's reference really answers with the phase-start adapter
        ids = torch.tensor([[5, 6, 7]])
        model.set_adapter("ref")
        ref_logits = model(input_ids=ids).logits
        model.set_adapter("default")
        assert not torch.allclose(ref_logits, model(input_ids=ids).logits)
    callback.on_train_begin(None, TrainerState(global_step=4), TrainerControl())
    assert same() and seen == [1, 1]  # a resumed run starts a phase where it resumes


def test_the_full_model_reference_is_the_policy_at_the_start_of_each_phase(tiny_chat_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    reference = copy.deepcopy(model)
    callback = PhaseReference(_trainer(model, reference), phase_steps=2)

    def same() -> bool:
        return all(
            torch.equal(a, b)
            for a, b in zip(model.parameters(), reference.parameters(), strict=True)
        )

    _nudge(model, "")
    _step(callback, 1)
    assert not same()
    _step(callback, 2)
    assert same()
    _nudge(model, "")
    _step(callback, 10, max_steps=10)  # the last step starts no phase
    assert not same()

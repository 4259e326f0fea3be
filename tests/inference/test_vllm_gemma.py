"""Real vLLM CPU server on Gemma-3-270M (the local real model, from PyPI) (``make test-vllm``)."""

from __future__ import annotations

import pytest
import torch

from tests.inference.conftest import serve
from tests.inference.vllm_checks import (
    assert_same_generations,
    generate_local,
    generate_remote,
    perturbed_copy,
    random_lora,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TEXTS = [
    "Task: Click the button.\nPage: [13] button 'Click Me!'\nAction:",
    "The capital of France is",
]


@pytest.fixture(scope="module")
def server(gemma, tmp_path_factory):
    with serve(gemma, tmp_path_factory.mktemp("gemma-service")) as url:
        yield url


@pytest.fixture(scope="module")
def tokenizer(gemma):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(text)["input_ids"] for text in TEXTS]


def hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_gemma_greedy_tokens_and_logprobs_match_hf(server, client, gemma, tokenizer, prompts):
    remote = generate_remote(server, prompts)
    assert_same_generations(remote, generate_local(hf_model(gemma), tokenizer, prompts), atol=2e-2)
    assert {g.policy_version for g in remote} == {client.status().version}


def test_gemma_adapter_push_changes_outputs_and_version(
    server, client, gemma, tokenizer, prompts, tmp_path
):
    before = generate_remote(server, prompts)
    version = client.status().version + 1
    adapted = random_lora(hf_model(gemma), target_modules=["q_proj", "v_proj"], seed=1, scale=0.1)
    adapted.save_pretrained(tmp_path / "adapter")
    result = client.push_adapter_files(version, tmp_path / "adapter")
    assert result.model == f"policy-v{version}"
    after = generate_remote(server, prompts)
    assert {g.policy_version for g in after} == {version}
    assert [g.token_ids for g in after] != [g.token_ids for g in before]
    assert_same_generations(after, generate_local(adapted, tokenizer, prompts), atol=2e-2)


def test_gemma_full_reload_changes_outputs_and_version(
    server, client, gemma, tokenizer, prompts, tmp_path
):
    before = generate_remote(server, prompts)
    version = client.status().version + 1
    changed = perturbed_copy(gemma, tmp_path / "ckpt", seed=2, scale=0.004)
    assert client.push_full_path(version, str(tmp_path / "ckpt")).kind == "full"
    after = generate_remote(server, prompts)
    assert {g.policy_version for g in after} == {version}
    assert [g.token_ids for g in after] != [g.token_ids for g in before]
    assert_same_generations(after, generate_local(changed, tokenizer, prompts), atol=2e-2)


def test_an_orm_adapter_scores_the_same_through_the_server_as_in_process(
    server, client, gemma, tokenizer, tmp_path
):
    from services.trainer.orm.prompt import JudgeInput
    from services.trainer.orm.remote import RemoteOrmScorer
    from services.trainer.orm.scorer import OrmScorer

    # The module's earlier tests may have left perturbed full weights behind: serve the
    # original Gemma again, the base the adapter is compared over in process.
    version = client.status().version + 1
    assert client.push_full_path(version, str(gemma)).kind == "full"
    judge = random_lora(hf_model(gemma), target_modules=["q_proj", "v_proj"], seed=3, scale=0.1)
    judge.save_pretrained(tmp_path / "orm")
    name = client.push_adapter_files(version + 1, tmp_path / "orm").model
    page = "RootWebArea 'Click Test'\n\t[13] button 'Submit'\n\t[14] button 'Cancel'"
    items = [
        JudgeInput("Click the Submit button.", ("click('13')  # button 'Submit'",), page),
        JudgeInput("Click the Submit button.", ("click('14')  # button 'Cancel'",), page),
        JudgeInput("Click the Cancel button.", (), page),
    ]
    remote = RemoteOrmScorer(server, name, tokenizer, batch_size=2)
    try:
        over_http = remote.scores(items)
    finally:
        remote.close()
    in_process = OrmScorer(judge.merge_and_unload(), tokenizer).scores(items)
    assert over_http == pytest.approx(in_process, abs=2e-2)

"""The worker extension re-ties a stale LM head (the real reload runs in the vllm tests)."""

from types import SimpleNamespace

import torch

from services.inference.worker import PolicyWorkerExtension


class Head(torch.nn.Module):
    def __init__(self, weight: torch.nn.Parameter) -> None:
        super().__init__()
        self.weight = weight
        self.processed_with = None
        self.quant_method = SimpleNamespace(process_weights_after_loading=self._process)

    def _process(self, layer) -> None:
        self.processed_with = layer.weight  # stands for vLLM's CPU GEMM packing


def worker(tied: bool):
    embed = torch.nn.Embedding(10, 4)
    model = torch.nn.Module()
    model.config = SimpleNamespace(tie_word_embeddings=tied)
    model.model = torch.nn.Module()
    model.model.embed_tokens = embed
    model.lm_head = Head(torch.nn.Parameter(torch.zeros(10, 4)))  # the stale tensor after reload
    extension = PolicyWorkerExtension()
    extension.model_runner = SimpleNamespace(model=model)
    return extension, model


def test_a_stale_tied_head_is_retied_and_reprocessed():
    extension, model = worker(tied=True)
    assert extension.retie_word_embeddings() is True
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.processed_with is model.model.embed_tokens.weight


def test_untied_heads_are_left_alone():
    extension, model = worker(tied=False)
    before = model.lm_head.weight
    assert extension.retie_word_embeddings() is False
    assert model.lm_head.weight is before and model.lm_head.processed_with is None

"""vLLM worker extension (``--worker-extension-cls``): runs inside vLLM's worker process.

Methods here are called through the engine client's ``collective_rpc`` by name.
"""

from __future__ import annotations


class PolicyWorkerExtension:
    """Mixed into vLLM's worker class by vLLM itself (its supported extension hook)."""

    def retie_word_embeddings(self) -> bool:
        """Make a tied LM head use the reloaded embedding again after ``reload_weights``.

        vLLM 0.32's layerwise reload finds no checkpoint tensor for a tied ``lm_head`` (LFM2,
        Gemma, Qwen2-0.5B tie it to the embedding), warns "ParallelLMHead: Failed to load
        weights" and puts the OLD tensor back; on CPU the head also keeps its old pre-packed GEMM
        weights. The logits then come from the old embedding while the rest of the model is new
        (measured on the tiny LFM2: logprobs ~5 nats away from Hugging Face on the same
        checkpoint). This re-ties the head and re-runs its weight processing (the CPU packing).
        Returns whether the model has a tied head.
        """
        model = self.model_runner.model  # type: ignore[attr-defined]
        config = getattr(model, "config", None)
        lm_head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if not getattr(config, "tie_word_embeddings", False) or lm_head is None or embed is None:
            return False
        embed = getattr(embed, "base_layer", embed)  # LoRA wraps the embedding layer
        lm_head = getattr(lm_head, "base_layer", lm_head)
        if not hasattr(lm_head, "weight"):
            return False
        lm_head.weight = embed.weight
        quant_method = getattr(lm_head, "quant_method", None)
        if quant_method is not None:
            quant_method.process_weights_after_loading(lm_head)
        return True

"""Inference service: vLLM's OpenAI-compatible server serving the live policy, with LoRA-adapter and
full-weight updates from the trainer, each tagged with a policy version."""

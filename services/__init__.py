"""The three services of the system: env (Chromium), trainer (TRL GRPO), inference (vLLM)."""

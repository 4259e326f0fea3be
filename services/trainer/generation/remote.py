"""Generation through any OpenAI-compatible ``/v1/completions`` server (the vLLM service).

Token in, token out: the prompt is sent as token ids and the sampled token ids come back, either
as ``choices[].token_ids`` (vLLM's ``return_token_ids``) or, from servers without that field, as
``"token_id:<n>"`` strings in ``logprobs.tokens`` (``return_tokens_as_token_ids``). A server that
returns neither cannot be used for training: the backend fails instead of re-tokenizing text.
Prompts of one batch go out as concurrent requests; the server batches them itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from services.trainer.generation.base import (
    Generation,
    GenerationError,
    GenerationRequestError,
    SamplingParams,
)

#: 4xx answers that are about load or timing, not about the request: worth replaying.
_TRANSIENT_STATUS = {408, 409, 425, 429}

POLICY_VERSION_HEADER = "x-policy-version"
log = logging.getLogger(__name__)


class RemoteBackend:
    """``GenerationBackend`` over HTTP; ``model`` may be changed between calls (new adapter)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        max_concurrency: int = 64,
        policy_version: Callable[[], int] = lambda: 0,
        transport: httpx.AsyncBaseTransport | None = None,
        wait_ready_s: float = 0.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.wait_ready_s = wait_ready_s
        self._policy_version = policy_version
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._requests = 0  # completions requested so far: request k samples with seed + k

    @classmethod
    def from_config(cls, config, *, context) -> RemoteBackend:
        """From ``RemoteBackendConfig`` (the key itself comes from ``api_key_env``)."""
        api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if config.api_key_env and not api_key:
            raise GenerationError(
                f"generation.backend.api_key_env: ${config.api_key_env} is not set (the pod "
                "needs the Secret key that holds the inference API key)"
            )
        return cls(
            config.base_url,
            model=config.model,
            api_key=api_key,
            timeout_s=config.timeout_s,
            max_concurrency=config.max_concurrency,
            policy_version=context.policy_version,
            wait_ready_s=config.wait_ready_s,
        )

    async def wait_ready(self) -> None:
        """Wait (with back-off, up to ``wait_ready_s``) until the server lists its models.

        The trainer and the inference server start together on a cluster, and vLLM may need
        minutes (image pull, model download, engine start): generating before it answers would
        drop whole rollouts. Raises ``GenerationError`` with the last answer when time is up.
        """
        deadline = time.monotonic() + self.wait_ready_s
        delay, last = 1.0, "no answer yet"
        while True:
            try:
                await self._request("GET", "/v1/models")
                return
            except GenerationRequestError:
                raise  # it answers, and says no (a wrong API key): waiting will not help
            except GenerationError as exc:
                last = str(exc)
            if time.monotonic() + delay > deadline:
                raise GenerationError(
                    f"{self.base_url} not ready after {self.wait_ready_s:.0f} s: {last}"
                )
            log.info("waiting for the generation server %s: %s", self.base_url, last)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        if self.model is None:
            self.model = await self._first_model()
        return list(await asyncio.gather(*(self._one(p, params) for p in prompts)))

    async def close(self) -> None:
        await self._http.aclose()

    async def _first_model(self) -> str:
        data = await self._request("GET", "/v1/models")
        try:
            return data["data"][0]["id"]
        except (KeyError, IndexError, TypeError) as exc:
            raise GenerationError(f"{self.base_url}/v1/models lists no model: {data!r}") from exc

    async def _one(self, prompt: list[int], params: SamplingParams) -> Generation:
        greedy = params.temperature <= 0
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if greedy else params.temperature,
            "top_p": 1.0 if greedy else params.top_p,
            "logprobs": 1,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            # Keep the tokens that completed a stop string: they were sampled and are trained on.
            "include_stop_str_in_output": True,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed + self._requests
        self._requests += 1
        async with self._slots:
            data, headers = await self._request(
                "POST", "/v1/completions", json=body, headers_too=True
            )
        return self._parse(data, headers)

    async def _request(self, method: str, path: str, *, headers_too: bool = False, **kwargs):
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GenerationError(f"{method} {self.base_url}{path}: {exc!r}") from exc
        if response.status_code != 200:
            error = (
                GenerationRequestError
                if 400 <= response.status_code < 500
                and response.status_code not in _TRANSIENT_STATUS
                else GenerationError
            )
            raise error(
                f"{method} {self.base_url}{path}: HTTP {response.status_code}: "
                f"{response.text[:500]}"
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise GenerationError(f"{method} {self.base_url}{path}: reply is not JSON") from exc
        return (data, response.headers) if headers_too else data

    def _parse(self, data: dict[str, Any], headers: httpx.Headers) -> Generation:
        try:
            choice = data["choices"][0]
            logprobs = choice.get("logprobs") or {}
            token_logprobs = logprobs.get("token_logprobs")
            ids = choice.get("token_ids")
            if ids is None:
                ids = [_token_id(tok) for tok in logprobs.get("tokens") or []]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise GenerationError(f"malformed completion reply: {exc}: {str(data)[:300]}") from exc
        if token_logprobs is None:
            raise GenerationError("the server returned no logprobs (request had logprobs=1)")
        if len(ids) != len(token_logprobs):
            raise GenerationError(
                f"{len(ids)} token ids but {len(token_logprobs)} logprobs: the server must return "
                "token ids (return_token_ids or return_tokens_as_token_ids)"
            )
        version = data.get("policy_version", headers.get(POLICY_VERSION_HEADER))
        return Generation(
            token_ids=[int(i) for i in ids],
            logprobs=[float("nan") if lp is None else float(lp) for lp in token_logprobs],
            text=choice.get("text", ""),
            policy_version=int(version) if version is not None else self._policy_version(),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )


def _token_id(token: str) -> int:
    prefix, sep, number = token.partition("token_id:")
    if not sep or prefix:
        raise ValueError(
            f"token {token!r} is not 'token_id:<n>': the server ignored return_tokens_as_token_ids"
        )
    return int(number)

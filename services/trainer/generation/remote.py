"""Generation through any OpenAI-compatible ``/v1/completions`` server (the vLLM service).

Token in, token out: the prompt is sent as token ids and the sampled token ids come back, either
as ``choices[].token_ids`` (vLLM's ``return_token_ids``) or, from servers without that field, as
``"token_id:<n>"`` strings in ``logprobs.tokens`` (``return_tokens_as_token_ids``). A server that
returns neither cannot be used for training: the backend fails instead of re-tokenizing text.
Prompts of one batch go out as concurrent requests; the server batches them itself. With several
replicas (``generation.backend.servers``) each request goes to one of them by the rules of
``services/trainer/replicas.py``: an episode stays on its replica, load goes to the least busy, a
dead replica's requests are retried elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import httpx

from services.protocol.inference import PolicyStatus
from services.trainer.generation.base import (
    Generation,
    GenerationError,
    GenerationRequestError,
    SamplingParams,
)
from services.trainer.replicas import STICKY_EPISODES, Replica, ReplicaSet, replica_set

#: 4xx answers that are about load or timing, not about the request: worth replaying.
_TRANSIENT_STATUS = {408, 409, 425, 429}

POLICY_VERSION_HEADER = "x-policy-version"
log = logging.getLogger(__name__)


class RemoteBackend:
    """``GenerationBackend`` over HTTP on one server or N replicas of it (``ReplicaSet``: its
    rules say where each request goes); ``model`` may be changed between calls (new adapter)."""

    def __init__(
        self,
        servers: ReplicaSet | str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        max_concurrency: int = 64,
        policy_version: Callable[[], int] = lambda: 0,
        transport: httpx.AsyncBaseTransport | None = None,
        wait_ready_s: float = 0.0,
        max_retries: int = 3,
        owns_servers: bool = False,
        pin_episodes: bool = False,
    ) -> None:
        self.replicas = servers if isinstance(servers, ReplicaSet) else ReplicaSet([servers])
        self._owns_servers = owns_servers  # close() stops their discovery
        self.model = model
        self.wait_ready_s = wait_ready_s
        self.max_retries = max_retries
        self._policy_version = policy_version
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s
        self._transport = transport
        self._max_concurrency = max_concurrency
        self._clients: dict[str, tuple[httpx.AsyncClient, asyncio.Semaphore]] = {}
        self._requests = 0  # completions requested so far: request k samples with seed + k
        # episode -> the exact model name (adapter version) its first turn got, when pinned
        self._pins: OrderedDict[Hashable, str] | None = OrderedDict() if pin_episodes else None

    @classmethod
    def from_config(cls, config, *, context) -> RemoteBackend:
        """From ``RemoteBackendConfig`` (the key itself comes from ``api_key_env``); the
        replicas are the context's when the trainer shares them with its policy pushes."""
        api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if config.api_key_env and not api_key:
            raise GenerationError(
                f"generation.backend.api_key_env: ${config.api_key_env} is not set (the pod "
                "needs the Secret key that holds the inference API key)"
            )
        return cls(
            context.replicas or replica_set(config.servers),
            model=config.model,
            api_key=api_key,
            timeout_s=config.timeout_s,
            max_concurrency=config.max_concurrency,
            policy_version=context.policy_version,
            wait_ready_s=config.wait_ready_s,
            max_retries=config.max_retries,
            owns_servers=context.replicas is None,
            pin_episodes=context.pin_episodes,
        )

    async def wait_ready(self) -> None:
        """Wait (with back-off, up to ``wait_ready_s``) until a replica lists its models.

        The trainer and the inference servers start together on a cluster, and vLLM may need
        minutes (image pull, model download, engine start): generating before one answers would
        drop whole rollouts. Replicas that do not answer yet are probed again later. Raises
        ``GenerationError`` with the last answers when time is up.
        """
        deadline = time.monotonic() + self.wait_ready_s
        delay, last = 1.0, "no replica discovered yet"
        while True:
            answers = []
            for replica in self.replicas.all():
                try:
                    await self._request(replica.url, "GET", "/v1/models")
                    self.replicas.served(replica.url, None)
                    return
                except GenerationRequestError:
                    raise  # it answers, and says no (a wrong API key): waiting will not help
                except GenerationError as exc:
                    self.replicas.failed(replica.url, str(exc))
                    answers.append(str(exc))
            last = "; ".join(answers) or last
            if time.monotonic() + delay > deadline:
                raise GenerationError(
                    f"no generation server ready after {self.wait_ready_s:.0f} s: {last}"
                )
            log.info("waiting for a generation server: %s", last)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        episodes: list[Hashable] | None = None,
    ) -> list[Generation]:
        if self.model is None:
            self.model = await self._first_model()
        keys = episodes or [None] * len(prompts)
        return list(
            await asyncio.gather(
                *(self._one(p, params, k) for p, k in zip(prompts, keys, strict=True))
            )
        )

    async def close(self) -> None:
        for client, _ in self._clients.values():
            await client.aclose()
        if self._owns_servers:
            self.replicas.close()

    async def _first_model(self) -> str:
        replica = await self._choose(None)
        try:
            data = await self._request(replica.url, "GET", "/v1/models")
        finally:
            self.replicas.release(replica.url)
        try:
            return data["data"][0]["id"]
        except (KeyError, IndexError, TypeError) as exc:
            raise GenerationError(f"{replica.url}/v1/models lists no model: {data!r}") from exc

    async def _one(
        self, prompt: list[int], params: SamplingParams, episode: Hashable
    ) -> Generation:
        greedy = params.temperature <= 0
        body: dict[str, Any] = {
            "model": self._pinned(episode),
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
        for attempt in range(self.max_retries + 1):
            replica = await self._choose(episode)
            try:
                data, headers = await self._complete(replica.url, body, episode)
            except GenerationRequestError:
                raise  # the request itself is wrong: no replica will take it
            except GenerationError as exc:
                self.replicas.failed(replica.url, str(exc))
                if attempt == self.max_retries:
                    raise
                self.replicas.retried()
                log.warning("generation on %s failed, retrying elsewhere: %s", replica.url, exc)
                continue
            finally:
                self.replicas.release(replica.url)
            generation = self._parse(data, headers)
            reported = headers.get(POLICY_VERSION_HEADER) is not None or "policy_version" in data
            if not reported or self.replicas.answered(replica.url, generation.policy_version):
                self._pin(episode, data.get("model"))
                return generation
            # A replica that restarted since it was last asked answers with the base model:
            # that answer is not the pushed policy's, so the request goes elsewhere.
            if attempt == self.max_retries:
                return generation  # recorded with its version: the staleness shows
            self._pin(episode, None)
            body["model"] = self.model
            self.replicas.retried()
            log.warning(
                "%s answered with version %d, not %d: retrying elsewhere",
                replica.url, generation.policy_version, self.replicas.target,
            )  # fmt: skip
        raise AssertionError("unreachable")

    async def _complete(self, url: str, body: dict[str, Any], episode: Hashable):
        """POST ``body`` to ``url``: (reply, headers). A pinned version the replica no longer
        has (retired, or the replica restarted) is unpinned: the episode goes on with the
        newest version, recorded per token as always."""
        async with self._client(url)[1]:
            try:
                return await self._request(
                    url, "POST", "/v1/completions", json=body, headers_too=True
                )
            except GenerationRequestError as exc:
                if body["model"] == self.model:
                    raise
                log.warning("episode pinned to %s: %s; continuing on %s", body["model"], exc,
                            self.model)  # fmt: skip
                self._pin(episode, None)
                body["model"] = self.model
                return await self._request(
                    url, "POST", "/v1/completions", json=body, headers_too=True
                )

    def _pinned(self, episode: Hashable) -> str | None:
        """The model name for ``episode``'s next turn: its pinned version, or the served name."""
        if self._pins is None or episode is None:
            return self.model
        return self._pins.get(episode, self.model)

    def _pin(self, episode: Hashable, model: str | None) -> None:
        """Pin ``episode`` to the exact ``model`` an answer named (None: unpin)."""
        if self._pins is None or episode is None:
            return
        if model is None:
            self._pins.pop(episode, None)
            return
        self._pins.setdefault(episode, model)
        self._pins.move_to_end(episode)
        while len(self._pins) > STICKY_EPISODES:
            self._pins.popitem(last=False)

    async def _choose(self, episode: Hashable) -> Replica:
        """A current replica (probing down ones whose back-off passed), waiting up to
        ``wait_ready_s`` for one; ``GenerationError`` saying why none is usable."""
        deadline = time.monotonic() + self.wait_ready_s
        while True:
            for url in self.replicas.due_for_probe():
                await self._probe(url)
            if (replica := self.replicas.choose(episode)) is not None:
                return replica
            if time.monotonic() >= deadline:
                raise GenerationError(f"no usable generation server: {self.replicas.describe()}")
            await asyncio.sleep(0.2)

    async def _probe(self, url: str) -> None:
        """Is a down replica back, and at which version? (Our service's ``/v1/policy`` when the
        trainer pushes versions; any server's ``/v1/models`` otherwise.)"""
        try:
            if self.replicas.target is None:
                await self._request(url, "GET", "/v1/models")
                self.replicas.served(url, None)
            else:
                status = PolicyStatus.model_validate(await self._request(url, "GET", "/v1/policy"))
                self.replicas.served(url, status.version, up=status.ready)
                behind = status.ready and status.version != self.replicas.target
                if behind and self.replicas.catch_up is not None:
                    log.info("replica %s serves version %d: updating it", url, status.version)
                    await asyncio.to_thread(self.replicas.catch_up, [url])
        except (GenerationError, ValueError) as exc:
            self.replicas.failed(url, str(exc))

    def _client(self, url: str) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        if url not in self._clients:
            client = httpx.AsyncClient(
                base_url=url,
                headers=self._headers,
                timeout=self._timeout_s,
                transport=self._transport,
            )
            self._clients[url] = (client, asyncio.Semaphore(self._max_concurrency))
        return self._clients[url]

    async def _request(
        self, url: str, method: str, path: str, *, headers_too: bool = False, **kwargs
    ):
        try:
            response = await self._client(url)[0].request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GenerationError(f"{method} {url}{path}: {exc!r}") from exc
        if response.status_code != 200:
            error = (
                GenerationRequestError
                if 400 <= response.status_code < 500
                and response.status_code not in _TRANSIENT_STATUS
                else GenerationError
            )
            raise error(f"{method} {url}{path}: HTTP {response.status_code}: {response.text[:500]}")
        try:
            data = response.json()
        except ValueError as exc:
            raise GenerationError(f"{method} {url}{path}: reply is not JSON") from exc
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

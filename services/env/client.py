"""Async client of one env session (OpenEnv's WebSocket ``/ws`` protocol), with typed errors.

    async with BrowserEnvClient("http://127.0.0.1:8000") as env:
        obs = await env.reset(task="click-test", seed=3)
        obs = await env.step("click('13')")   # obs.reward, obs.done, obs.error

Errors say what the caller should do:
``EnvCapacityError`` the pod is full: open a session on another pod;
``EnvUnavailableError`` infrastructure (refused/dropped connection, timeout, browser crash,
pod draining or session closed): retry the episode elsewhere, never count it as reward 0;
``EnvRequestError`` the request itself is wrong (unknown task, invalid fields): a caller bug.
A bad *action* is not an error: the observation's ``error`` carries the message.
The server is also usable with openenv-core's own ``GenericEnvClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from services.protocol.env import (
    BrowserAction,
    BrowserDemonstration,
    BrowserObservation,
    BrowserResetOptions,
    BrowserState,
    EnvErrorCode,
)


class EnvError(Exception):
    """An error reply or failure of the env service; ``code`` is an ``EnvErrorCode`` value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class EnvCapacityError(EnvError):
    """The pod is full: go to another pod."""


class EnvUnavailableError(EnvError):
    """Connection refused/dropped, timeout, crashed browser, draining pod: retry elsewhere."""


class EnvRequestError(EnvError):
    """The request is invalid (unknown task, bad fields, step before reset): don't retry."""


class EnvTaskError(EnvError):
    """The task's page or checker failed (TASK_ERROR): the episode is lost, the task is broken.

    Neither the policy's fault nor a passing infrastructure failure: replaying it elsewhere gives
    the same error, so callers drop the episode and count it.
    """


_UNAVAILABLE_CODES = {
    EnvErrorCode.DRAINING,
    EnvErrorCode.TIMEOUT,
    EnvErrorCode.BROWSER_ERROR,
    EnvErrorCode.SESSION_ERROR,
    EnvErrorCode.FACTORY_ERROR,
}


def error_from_reply(data: dict[str, Any]) -> EnvError:
    """The typed exception for the ``data`` of an ``{"type": "error"}`` reply."""
    code = str(data.get("code", "UNKNOWN"))
    message = str(data.get("message", "unknown error"))
    if code == EnvErrorCode.CAPACITY_REACHED:
        return EnvCapacityError(code, message)
    if code in _UNAVAILABLE_CODES:
        return EnvUnavailableError(code, message)
    if code == EnvErrorCode.TASK_ERROR:
        return EnvTaskError(code, message)
    return EnvRequestError(code, message)


class BrowserEnvClient:
    """One session on one env pod; not safe for concurrent calls (one message at a time)."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 10.0,
        message_timeout_s: float = 60.0,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        scheme, sep, rest = base_url.rstrip("/").partition("://")
        if not sep:
            raise ValueError(f"base_url needs a scheme (http://host:port), got {base_url!r}")
        ws_scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        self.base_url = base_url
        self.ws_url = f"{ws_scheme}://{rest}/ws"
        self.connect_timeout_s = connect_timeout_s
        self.message_timeout_s = message_timeout_s
        self.max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None

    async def connect(self) -> BrowserEnvClient:
        if self._ws is not None:
            return self
        try:
            self._ws = await asyncio.wait_for(
                connect(self.ws_url, max_size=self.max_message_bytes, proxy=None),
                timeout=self.connect_timeout_s,
            )
        except TimeoutError as exc:
            raise EnvUnavailableError(
                "CONNECT_TIMEOUT", f"no connection to {self.ws_url} in {self.connect_timeout_s} s"
            ) from exc
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise EnvUnavailableError("CONNECT_FAILED", f"{self.ws_url}: {exc}") from exc
        return self

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "close"}))
        await ws.close()

    async def __aenter__(self) -> BrowserEnvClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def reset(
        self, options: BrowserResetOptions | None = None, **fields: Any
    ) -> BrowserObservation:
        """Start an episode; ``fields`` are ``BrowserResetOptions`` fields (task, seed, ...)."""
        if options is None:
            options = BrowserResetOptions(**fields)
        elif fields:
            options = options.model_copy(update=fields)
        data = options.model_dump(exclude_defaults=True)
        return self._observation(await self._request({"type": "reset", "data": data}))

    async def step(self, action: BrowserAction | str) -> BrowserObservation:
        if isinstance(action, str):
            action = BrowserAction(action_str=action)
        data = action.model_dump(exclude_defaults=True, exclude={"metadata"})
        data["action_str"] = action.action_str
        return self._observation(await self._request({"type": "step", "data": data}))

    async def state(self) -> BrowserState:
        reply = await self._request({"type": "state"})
        return BrowserState.model_validate(reply["data"])

    async def demonstrate(self) -> BrowserDemonstration:
        """The task family's expert action for the page as it is now (does not act)."""
        reply = await self._request({"type": "demonstrate"})
        return BrowserDemonstration.model_validate(reply["data"])

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.connect()
        assert self._ws is not None
        try:
            await self._ws.send(json.dumps(message))
            raw = await asyncio.wait_for(self._ws.recv(), timeout=self.message_timeout_s)
        except TimeoutError as exc:
            await self._drop()
            raise EnvUnavailableError(
                "MESSAGE_TIMEOUT", f"no reply from {self.ws_url} in {self.message_timeout_s} s"
            ) from exc
        except (ConnectionClosed, OSError) as exc:
            # The server may have said why before closing (capacity, draining, idle): use it.
            raw = await self._last_words()
            await self._drop()
            if raw is None:
                raise EnvUnavailableError("CONNECTION_LOST", f"{self.ws_url}: {exc}") from exc
        reply = json.loads(raw)
        if reply.get("type") == "error":
            error = error_from_reply(reply.get("data") or {})
            if not isinstance(error, EnvRequestError | EnvTaskError):
                await self._drop()  # the server closes such sessions (or they are useless)
            raise error
        return reply

    async def _last_words(self) -> str | bytes | None:
        """A message the server sent before closing the connection, if one is buffered."""
        try:
            return await asyncio.wait_for(self._ws.recv(), timeout=1.0)
        except (ConnectionClosed, TimeoutError, OSError):
            return None

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    @staticmethod
    def _observation(reply: dict[str, Any]) -> BrowserObservation:
        data = reply["data"]
        return BrowserObservation.model_validate(
            {**data["observation"], "reward": data.get("reward"), "done": data.get("done", False)}
        )

"""Env sessions spread over env pods, with pods joining and leaving while training runs.

The pool hands out one WebSocket session per episode on the endpoint with the fewest sessions of
ours, skipping endpoints that are draining (removed by discovery), full (answered
CAPACITY_REACHED) or cooling down after an infrastructure failure. A session whose episode ended
cleanly goes back to its endpoint's idle list and the next episode there resets it: a pod reuses
the session's browser page instead of building a new context (twice the episodes/s on 2 cores);
an idle session the pod reaped meanwhile is replaced by a fresh one without counting a failure.
The pool never decides what to do with a failed episode: it raises ``EnvInfraError`` and the
rollout engine replays the episode elsewhere, so an infrastructure failure is never scored as a
policy failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from services.env.client import (
    BrowserEnvClient,
    EnvCapacityError,
    EnvError,
    EnvRequestError,
    EnvTaskError,
    EnvUnavailableError,
)
from services.protocol.env import BrowserObservation, BrowserResetOptions

log = logging.getLogger(__name__)


class EnvInfraError(RuntimeError):
    """An episode could not go on for infrastructure reasons (pod died, full, timed out).

    ``reason`` labels ``trainer_infra_retries_total``; ``endpoint`` is the pod to avoid.
    """

    def __init__(self, reason: str, endpoint: str | None, message: str) -> None:
        super().__init__(f"{reason} at {endpoint}: {message}")
        self.reason = reason
        self.endpoint = endpoint


class NoEndpointsError(EnvInfraError):
    """No usable endpoint appeared within the wait limit."""


class TaskFailedError(RuntimeError):
    """The task's page or checker failed on the pod (TASK_ERROR): the task is broken.

    Not infrastructure (a replay elsewhere fails the same way) and not the policy's fault: the
    episode is dropped and counted. The session itself stays usable.
    """


@dataclass
class _Endpoint:
    url: str
    active: int = 0  # our sessions on this pod, in use or idle
    idle: list[BrowserEnvClient] = field(default_factory=list)
    draining: bool = False
    unusable_until: float = 0.0
    consecutive_failures: int = 0


_EPISODE_IDS = itertools.count()


@dataclass
class EnvSession:
    """One episode's session on one pod; ``step`` maps env errors to ``EnvInfraError``."""

    endpoint: str
    client: BrowserEnvClient
    observation: BrowserObservation
    _closed: bool = field(default=False, repr=False)
    episode_id: int = field(default_factory=lambda: next(_EPISODE_IDS), init=False)
    """Unique in this process (unlike ``id()`` of a finished session): generation keys the
    episode's replica and pinned policy version on it."""

    async def step(self, action: str) -> BrowserObservation:
        self.observation = await self._call(self.client.step(action))
        return self.observation

    async def demonstrate(self) -> str | None:
        """The task family's scripted next action for the current page (None: it has none)."""
        return (await self._call(self.client.demonstrate())).action

    async def _call(self, request):
        try:
            return await request
        except EnvRequestError:
            raise  # a caller bug (bad request), not infrastructure: never retried
        except EnvTaskError as exc:
            raise TaskFailedError(str(exc)) from exc
        except EnvCapacityError as exc:
            raise EnvInfraError("capacity", self.endpoint, str(exc)) from exc
        except (TimeoutError, EnvUnavailableError, EnvError, OSError) as exc:
            raise EnvInfraError("env_unavailable", self.endpoint, str(exc)) from exc


ClientFactory = Callable[[str], BrowserEnvClient]


class EnvPool:
    """Sessions over a changing set of env endpoints (see module docstring)."""

    def __init__(
        self,
        endpoints: Iterable[str] = (),
        *,
        sessions_per_endpoint: int = 4,
        connect_timeout_s: float = 20.0,
        message_timeout_s: float = 60.0,
        capacity_backoff_s: float = 0.5,
        failure_cooldown_s: float = 2.0,
        wait_for_endpoint_s: float = 120.0,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.sessions_per_endpoint = sessions_per_endpoint
        self.capacity_backoff_s = capacity_backoff_s
        self.failure_cooldown_s = failure_cooldown_s
        self.wait_for_endpoint_s = wait_for_endpoint_s
        self._client_factory = client_factory or (
            lambda url: BrowserEnvClient(
                url, connect_timeout_s=connect_timeout_s, message_timeout_s=message_timeout_s
            )
        )
        self._endpoints: dict[str, _Endpoint] = {}
        self._closing: set[asyncio.Task] = set()
        self._changed = asyncio.Event()
        self.set_endpoints(endpoints)

    @classmethod
    def from_config(cls, env, *, wait_for_endpoint_s: float | None = None) -> EnvPool:
        """From the trainer config's ``env`` section (the endpoints come from discovery)."""
        return cls(
            sessions_per_endpoint=env.sessions_per_endpoint,
            connect_timeout_s=env.connect_timeout_s,
            message_timeout_s=env.message_timeout_s,
            capacity_backoff_s=env.capacity_backoff_s,
            wait_for_endpoint_s=wait_for_endpoint_s or env.wait_for_endpoint_s,
        )

    # --- membership -------------------------------------------------------------------------

    def set_endpoints(self, urls: Iterable[str]) -> None:
        """Add new endpoints; drain removed ones (their running episodes finish, no new ones)."""
        wanted = {u.rstrip("/") for u in urls}
        for url in wanted:
            ep = self._endpoints.get(url)
            if ep is None:
                self._endpoints[url] = _Endpoint(url)
                log.info("env endpoint added: %s", url)
            elif ep.draining:
                ep.draining = False
        for url, ep in list(self._endpoints.items()):
            if url not in wanted and not ep.draining:
                ep.draining = True
                log.info("env endpoint draining: %s (%d active sessions)", url, ep.active)
                self._close_idle(ep)
            if ep.draining and ep.active == 0:
                del self._endpoints[url]
        self._notify()

    def _close_idle(self, ep: _Endpoint) -> None:
        """Close a draining endpoint's idle sessions in the background (this method is sync)."""
        idle, ep.idle = ep.idle, []
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (set up before the rollouts): let the sockets go
            ep.active -= len(idle)
            return
        for client in idle:
            task = asyncio.ensure_future(self._release(ep, client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close every idle session (sessions in use close when their episode ends)."""
        for ep in list(self._endpoints.values()):
            idle, ep.idle = ep.idle, []
            for client in idle:
                await self._release(ep, client)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    @property
    def endpoints(self) -> list[str]:
        """Endpoints that take new sessions."""
        return [u for u, ep in self._endpoints.items() if not ep.draining]

    @property
    def capacity(self) -> int:
        """Sessions the pool may hold at once over the current endpoints."""
        return len(self.endpoints) * self.sessions_per_endpoint

    def active_sessions(self) -> dict[str, int]:
        """Sessions in use (idle kept-open ones not counted) per endpoint."""
        return {u: ep.active - len(ep.idle) for u, ep in self._endpoints.items()}

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- sessions ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def session(
        self, options: BrowserResetOptions, *, avoid: Iterable[str] = ()
    ) -> AsyncIterator[EnvSession]:
        """A reset env session on some endpoint (not one in ``avoid`` while others exist)."""
        session = await self._open(options, set(avoid))
        try:
            yield session
        except TaskFailedError:
            self._keep_idle(session)  # the task broke, the session is fine
            raise
        except BaseException as exc:
            if isinstance(exc, EnvInfraError) and exc.reason != "capacity":
                self.mark_failed(session.endpoint)
            await self._close(session)
            raise
        if not self._keep_idle(session):
            await self._close(session)

    def _keep_idle(self, session: EnvSession) -> bool:
        """Park a session whose episode ended cleanly; the next episode there resets it."""
        ep = self._endpoints.get(session.endpoint)
        if ep is None or ep.draining:
            return False
        ep.idle.append(session.client)
        self._notify()
        return True

    async def _open(self, options: BrowserResetOptions, avoid: set[str]) -> EnvSession:
        deadline = time.monotonic() + self.wait_for_endpoint_s
        while True:
            ep = self._pick(avoid)
            if ep is None:
                if self._all_busy():
                    # Healthy endpoints, all sessions in use: queueing is normal, not a failure.
                    deadline = time.monotonic() + self.wait_for_endpoint_s
                elif time.monotonic() > deadline:
                    raise NoEndpointsError(
                        "no_endpoint",
                        None,
                        f"no usable env endpoint for {self.wait_for_endpoint_s:.0f} s "
                        f"(endpoints and our sessions: {self.active_sessions() or 'none'})",
                    )
                changed = self._changed
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.capacity_backoff_s)
                continue
            if ep.idle:
                client = ep.idle.pop()
                try:
                    observation = await client.reset(options)
                except (EnvRequestError, EnvTaskError) as exc:
                    ep.idle.append(client)  # the session is fine; the request or task is not
                    self._notify()
                    if isinstance(exc, EnvTaskError):
                        raise TaskFailedError(str(exc)) from exc
                    raise
                except (TimeoutError, EnvError, OSError) as exc:
                    log.debug("idle session on %s is gone (%s): opening a new one", ep.url, exc)
                    await self._release(ep, client)
                    continue
                return EnvSession(endpoint=ep.url, client=client, observation=observation)
            ep.active += 1
            client = self._client_factory(ep.url)
            try:
                await client.connect()
                observation = await client.reset(options)
            except EnvTaskError as exc:
                ep.idle.append(client)
                self._notify()
                raise TaskFailedError(str(exc)) from exc
            except EnvRequestError:
                await self._release(ep, client)
                raise
            except EnvCapacityError as exc:
                log.debug("env %s full: %s", ep.url, exc)
                ep.unusable_until = time.monotonic() + self.capacity_backoff_s
                await self._release(ep, client)
                raise EnvInfraError("capacity", ep.url, str(exc)) from exc
            except (TimeoutError, EnvUnavailableError, EnvError, OSError) as exc:
                self._mark_failed(ep)
                await self._release(ep, client)
                raise EnvInfraError("env_unavailable", ep.url, str(exc)) from exc
            ep.consecutive_failures = 0
            return EnvSession(endpoint=ep.url, client=client, observation=observation)

    def _pick(self, avoid: set[str]) -> _Endpoint | None:
        now = time.monotonic()
        usable = [
            ep
            for ep in self._endpoints.values()
            if not ep.draining
            and ep.unusable_until <= now
            and (ep.idle or ep.active < self.sessions_per_endpoint)
        ]
        preferred = [ep for ep in usable if ep.url not in avoid] or usable
        # Fewest sessions in use first (a new pod gets work at once), then one with an idle session.
        return min(preferred, key=lambda ep: (ep.active - len(ep.idle), not ep.idle), default=None)

    def _all_busy(self) -> bool:
        """Some endpoint is healthy and would take a session if one of ours ended."""
        now = time.monotonic()
        return any(not ep.draining and ep.unusable_until <= now for ep in self._endpoints.values())

    def mark_failed(self, url: str) -> None:
        """An episode on ``url`` failed for infrastructure reasons: back off from it."""
        ep = self._endpoints.get(url)
        if ep is not None:
            self._mark_failed(ep)

    def _mark_failed(self, ep: _Endpoint) -> None:
        ep.consecutive_failures += 1
        backoff = self.failure_cooldown_s * 2 ** min(ep.consecutive_failures - 1, 5)
        ep.unusable_until = time.monotonic() + backoff
        log.warning(
            "env %s failed (%d in a row): avoided for %.1f s",
            ep.url,
            ep.consecutive_failures,
            backoff,
        )

    async def _close(self, session: EnvSession) -> None:
        ep = self._endpoints.get(session.endpoint)
        await self._release(ep, session.client)

    async def _release(self, ep: _Endpoint | None, client: BrowserEnvClient) -> None:
        with contextlib.suppress(Exception):  # closing a dead pod's socket may fail: nothing lost
            await asyncio.wait_for(client.close(), 5.0)
        if ep is not None:
            ep.active -= 1
            if ep.draining and ep.active == 0:
                self._endpoints.pop(ep.url, None)
        self._notify()

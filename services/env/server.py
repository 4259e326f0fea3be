"""The env pod's HTTP/WebSocket server: OpenEnv's ``/ws`` protocol over parallel browser workers.

Wire format is openenv-core's (its ``WS*`` message models and ``serialize_observation``), so
openenv-core's own clients work unchanged. The routes are ours rather than
``openenv.core.env_server.create_app`` because the pod needs what that server lacks: sessions
that run in parallel on per-browser threads (its BrowserGym-style envs share ONE thread), a
capacity error before any browser work, payload limits, per-step timeouts that recover a hung
browser, idle reaping, readiness, SIGTERM draining, domain error codes and Prometheus metrics.

Routes: ``/ws`` (sessions), ``/health`` (liveness), ``/ready`` (readiness), ``/schema``,
``/metadata``, ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import playwright.sync_api
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from openenv.core.env_server.serialization import serialize_observation
from openenv.core.env_server.types import (
    EnvironmentMetadata,
    HealthResponse,
    HealthStatus,
    SchemaResponse,
    WSErrorResponse,
    WSObservationResponse,
    WSStateResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from services.env.browser import BrowserWorker
from services.env.config import EnvServerConfig
from services.env.episode import BrowserCrashedError, NotResetError, PageEpisode
from services.env.families import TaskCatalog, TaskError, UnknownTaskError, build_families
from services.env.metrics import EnvMetrics
from services.protocol.actions import allowed_actions, describe
from services.protocol.env import (
    ENV_PROTOCOL_VERSION,
    BrowserAction,
    BrowserObservation,
    BrowserResetOptions,
    BrowserState,
    EnvErrorCode,
    succeeded,
)

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the pod refuses; becomes a ``{"type": "error"}`` reply and the session goes on."""

    def __init__(self, code: EnvErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


@dataclass
class Session:
    id: str
    websocket: WebSocket
    worker: BrowserWorker
    episode: PageEpisode
    last_active: float = field(default_factory=time.monotonic)
    busy: bool = False
    task: str = ""  # task of the running episode, '' when none runs
    closing_reason: str | None = None


class EnvService:
    """Sessions, browser workers, draining and metrics of one pod (event-loop thread only)."""

    def __init__(self, config: EnvServerConfig) -> None:
        self.config = config
        self.catalog = TaskCatalog(build_families(config.task_families), config.allowed_tasks)
        self.catalog.resolve(config.default_task)  # fail at start-up, not on the first reset
        self.metrics = EnvMetrics()
        self.metrics.sessions_capacity.set(config.max_sessions)
        self.workers: list[BrowserWorker | None] = [None] * config.worker_count
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self._reaper: asyncio.Task | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        for index in range(min(self.config.prewarm_browsers, len(self.workers))):
            worker = self._worker(index)
            await asyncio.wrap_future(worker.submit(worker.browser))
        self._reaper = asyncio.create_task(self._reap_idle_sessions())
        self._update_readiness()

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for session in list(self.sessions.values()):
            await self._close_websocket(session, "the server is shutting down")
        await asyncio.gather(
            *(asyncio.to_thread(w.stop) for w in self.workers if w is not None),
            return_exceptions=True,
        )

    async def drain(self) -> None:
        """Refuse new sessions and episodes, let running episodes end, then close everything."""
        self.draining = True
        self._update_readiness()
        deadline = time.monotonic() + self.config.drain_timeout_s
        while any(s.task for s in self.sessions.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for session in list(self.sessions.values()):
            await self._close_websocket(session, "the pod is draining: reconnect elsewhere")

    def _worker(self, index: int) -> BrowserWorker:
        worker = self.workers[index]
        if worker is None:
            worker = BrowserWorker(index, self.config, self.metrics.browser_restarts.inc)
            self.workers[index] = worker
        return worker

    # ---- readiness ----------------------------------------------------------------------------
    def not_ready_reason(self) -> str | None:
        """Why the pod should get no traffic: draining or a browser that cannot start.

        A full pod stays ready: being full is normal while a trainer uses it (the trainer fills
        every pod on purpose), and a not-ready pod would drop out of discovery, stall
        ``helm --wait`` and node drains. Capacity is answered per session (CAPACITY_REACHED).
        """
        if self.draining:
            return "draining"
        broken = [w.launch_error for w in self.workers if w is not None and w.launch_error]
        if broken:
            return f"browser launch failing: {broken[0]}"
        return None

    def _update_readiness(self) -> None:
        self.metrics.sessions_active.set(len(self.sessions))
        self.metrics.ready.set(0 if self.not_ready_reason() else 1)

    # ---- sessions -----------------------------------------------------------------------------
    def open_session(self, websocket: WebSocket) -> Session:
        if self.draining:
            raise RequestError(EnvErrorCode.DRAINING, "the pod is draining: connect elsewhere")
        if len(self.sessions) >= self.config.max_sessions:
            raise RequestError(
                EnvErrorCode.CAPACITY_REACHED,
                f"pod is full: {len(self.sessions)}/{self.config.max_sessions} sessions; "
                "connect to another pod",
                active_sessions=len(self.sessions),
                max_sessions=self.config.max_sessions,
            )
        index = min(
            range(len(self.workers)),
            key=lambda i: (self.workers[i].sessions if self.workers[i] else 0, i),
        )
        worker = self._worker(index)
        worker.sessions += 1
        session = Session(
            id=uuid.uuid4().hex,
            websocket=websocket,
            worker=worker,
            episode=PageEpisode.create(worker, self.config, self.catalog),
        )
        self.sessions[session.id] = session
        self._update_readiness()
        return session

    def release_session(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        session.worker.sessions -= 1
        self._end_episode(session, "abandoned")
        session.worker.submit(session.episode.close)  # frees the browser context, no waiting
        self._update_readiness()

    def _end_episode(self, session: Session, outcome: str) -> None:
        if session.task:
            self.metrics.episodes.labels(task=session.task, outcome=outcome).inc()
            session.task = ""

    async def _close_websocket(self, session: Session, reason: str) -> None:
        session.closing_reason = reason
        with contextlib.suppress(Exception):
            await session.websocket.send_text(
                _error(EnvErrorCode.SESSION_ERROR, f"session closed: {reason}")
            )
            await session.websocket.close(code=1001, reason=reason[:120])
        self.release_session(session)

    async def _reap_idle_sessions(self) -> None:
        ttl = self.config.idle_ttl_s
        while True:
            await asyncio.sleep(min(max(ttl / 4, 0.2), 5.0))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.busy and now - session.last_active > ttl:
                    self.metrics.errors.labels(kind="idle_timeout").inc()
                    await self._close_websocket(session, f"idle for more than {ttl:g} s")

    # ---- requests -----------------------------------------------------------------------------
    async def handle(self, session: Session, raw: str | bytes) -> str | None:
        """One client message in, one JSON reply out (None: the client closes the session)."""
        if len(raw) > self.config.max_message_bytes:
            raise RequestError(
                EnvErrorCode.PAYLOAD_TOO_LARGE,
                f"message of {len(raw)} bytes exceeds the limit of "
                f"{self.config.max_message_bytes} bytes",
            )
        try:
            message = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(EnvErrorCode.INVALID_JSON, f"Invalid JSON: {exc}") from exc
        if not isinstance(message, dict):
            raise RequestError(EnvErrorCode.INVALID_JSON, "a message must be a JSON object")
        kind = message.get("type")
        data = message.get("data") or {}
        if kind == "reset":
            return await self._reset(session, data)
        if kind == "step":
            return await self._step(session, data)
        if kind == "close":
            return None
        if kind == "state":
            state = session.episode.state(session.id)
            return WSStateResponse(data=state.model_dump()).model_dump_json()
        if kind == "demonstrate":
            demonstration = await self._run(session, session.episode.demonstrate)
            return json.dumps({"type": "demonstration", "data": demonstration.model_dump()})
        raise RequestError(
            EnvErrorCode.UNKNOWN_TYPE,
            f"Unknown message type: {kind!r}; expected reset, step, state, demonstrate or close",
        )

    async def _reset(self, session: Session, data: Any) -> str:
        if self.draining:
            raise RequestError(EnvErrorCode.DRAINING, "the pod is draining: continue elsewhere")
        options = _validate(BrowserResetOptions, data)
        try:
            task = self.catalog.reset_task(
                options.task or self.config.default_task, options.generated
            )
        except UnknownTaskError as exc:
            raise RequestError(EnvErrorCode.UNKNOWN_TASK, str(exc)) from exc
        self._end_episode(session, "abandoned")
        started = time.perf_counter()
        observation = await self._run(session, session.episode.reset, options)
        self.metrics.reset_seconds.observe(time.perf_counter() - started)
        self.metrics.resets.labels(task=task).inc()
        session.task = task
        return _observation(observation)

    async def _step(self, session: Session, data: Any) -> str:
        action = _validate(BrowserAction, data)
        if not session.task:
            raise RequestError(
                EnvErrorCode.NOT_RESET,
                "no episode is running: send a reset first"
                if not session.episode.task_name
                else "the episode has ended: send a reset to start a new one",
            )
        started = time.perf_counter()
        observation = await self._run(session, session.episode.step, action.action_str)
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        self.metrics.steps.labels(task=session.task).inc()
        if observation.error:
            self.metrics.errors.labels(kind="action").inc()
        if observation.done:
            outcome = "truncated" if observation.truncated else None
            outcome = outcome or ("success" if succeeded(observation.reward) else "failure")
            self._end_episode(session, outcome)
        return _observation(observation)

    async def _run(self, session: Session, fn, *args) -> Any:
        """Run an episode call on the session's browser thread, bounded by the step timeout."""
        future = session.worker.submit(fn, *args)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=self.config.step_timeout_s
            )
        except TimeoutError as exc:
            session.worker.kill_browser()  # unblocks the hung Playwright call
            self._end_episode(session, "abandoned")
            raise RequestError(
                EnvErrorCode.TIMEOUT,
                f"the call took longer than {self.config.step_timeout_s:g} s; the browser was "
                "restarted and the episode ended: send a reset",
            ) from exc
        except BrowserCrashedError as exc:
            self._end_episode(session, "abandoned")
            raise RequestError(EnvErrorCode.BROWSER_ERROR, f"{exc}; send a reset") from exc
        except NotResetError as exc:
            raise RequestError(EnvErrorCode.NOT_RESET, str(exc)) from exc
        except TaskError as exc:
            log.warning("session %s: %s", session.id, exc)
            self._end_episode(session, "task_error")
            raise RequestError(EnvErrorCode.TASK_ERROR, str(exc)) from exc
        except playwright.sync_api.TimeoutError as exc:
            # A page too slow for Playwright's wait (a busy machine): the browser is fine, the
            # episode is lost; TIMEOUT tells the client to replay it, not that it asked wrong.
            log.warning("session %s: %s", session.id, exc)
            self._end_episode(session, "abandoned")
            raise RequestError(
                EnvErrorCode.TIMEOUT, f"{type(exc).__name__}: {exc}; send a reset"
            ) from exc
        except Exception as exc:
            log.exception("session %s: %s failed", session.id, getattr(fn, "__name__", fn))
            self._end_episode(session, "abandoned")
            raise RequestError(
                EnvErrorCode.EXECUTION_ERROR, f"{type(exc).__name__}: {exc}"
            ) from exc

    # ---- descriptions ---------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        base = EnvironmentMetadata(
            name="browser-rl-env",
            description="Browser tasks (" + ", ".join(self.catalog.families) + ") in headless "
            "Chromium via BrowserGym, many parallel sessions per pod. Reset data: "
            + ", ".join(BrowserResetOptions.model_fields),
            version=ENV_PROTOCOL_VERSION,
        ).model_dump()
        return {
            **base,
            "tasks": list(self.catalog.allowed),
            "task_families": self.catalog.by_family(),
            "default_task": self.config.default_task,
            "action_subsets": list(self.config.action_subsets),
            "actions": list(allowed_actions(self.config.action_subsets)),
            "action_description": describe(self.config.action_subsets),
            "max_steps": self.config.max_steps,
            "max_sessions": self.config.max_sessions,
            "error_codes": [code.value for code in EnvErrorCode],
        }


def _validate(model, data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}" for e in exc.errors()
        )
        raise RequestError(
            EnvErrorCode.VALIDATION_ERROR,
            f"invalid {model.__name__}: {problems}",
            errors=[
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            ],
        ) from exc


def _observation(observation: BrowserObservation) -> str:
    return WSObservationResponse(data=serialize_observation(observation)).model_dump_json()


def _error(code: EnvErrorCode, message: str, **details: Any) -> str:
    return WSErrorResponse(
        data={"message": message, "code": code.value, **details}
    ).model_dump_json()


def create_app(config: EnvServerConfig) -> FastAPI:
    service = EnvService(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="browser-rl env pod", version=ENV_PROTOCOL_VERSION, lifespan=lifespan)
    app.state.service = service

    @app.get("/health")
    async def health() -> HealthResponse:
        return HealthResponse(status=HealthStatus.HEALTHY)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        reason = service.not_ready_reason()
        service._update_readiness()
        body = {
            "ready": reason is None,
            "reason": reason or "",
            "sessions_active": len(service.sessions),
            "sessions_capacity": config.max_sessions,
        }
        return JSONResponse(body, status_code=200 if reason is None else 503)

    @app.get("/schema")
    async def schema() -> SchemaResponse:
        return SchemaResponse(
            action=BrowserAction.model_json_schema(),
            observation=BrowserObservation.model_json_schema(),
            state=BrowserState.model_json_schema(),
        )

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.get("/metrics")
    async def metrics() -> Response:
        service._update_readiness()
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            session = service.open_session(websocket)
        except RequestError as exc:
            service.metrics.errors.labels(kind=exc.code.value.lower()).inc()
            await websocket.send_text(_error(exc.code, str(exc), **exc.details))
            await websocket.close(code=1013, reason=str(exc)[:120])
            return
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                raw = raw if raw is not None else message.get("bytes") or b""
                session.busy = True
                try:
                    reply = await service.handle(session, raw)
                except RequestError as exc:
                    service.metrics.errors.labels(kind=exc.code.value.lower()).inc()
                    reply = _error(exc.code, str(exc), **exc.details)
                finally:
                    session.busy = False
                    session.last_active = time.monotonic()
                if reply is None or session.closing_reason:
                    break
                await websocket.send_text(reply)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away; its browser context is freed below
        finally:
            service.release_session(session)
            with contextlib.suppress(Exception):
                await websocket.close()

    return app

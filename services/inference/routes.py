"""HTTP surface we add to vLLM's app: the policy-update routes and the version middleware.

Both attach to vLLM's own FastAPI app through its supported hooks (a router, an ASGI middleware);
vLLM's routes (``/v1/completions``, ``/metrics``, ``/health``, ...) stay untouched. Routes under
``/v1`` sit behind vLLM's API-key check; ``/ready`` and ``/health`` do not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.inference.policy import PolicyManager
from services.inference.validation import UpdateRefused
from services.protocol.inference import (
    ERROR_STATUS,
    POLICY_VERSION_HEADER,
    AdapterUpdate,
    FullUpdate,
    PolicyErrorCode,
    PolicyErrorDetail,
    PolicyStatus,
    PolicyUpdateError,
    PolicyUpdateResult,
    WeightTransferBegin,
    WeightTransferCommit,
)

log = logging.getLogger(__name__)
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
router = APIRouter()


def _manager(request: Request) -> PolicyManager:
    return request.app.state.policy


def _refusal(manager: PolicyManager, code: PolicyErrorCode, message: str) -> JSONResponse:
    body = PolicyUpdateError(
        error=PolicyErrorDetail(code=code, message=message, served_version=manager.served.version)
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=ERROR_STATUS[code])


async def _apply(manager: PolicyManager, update) -> JSONResponse:
    """Run an update; every refusal becomes a PolicyUpdateError with its HTTP status."""
    try:
        result: PolicyUpdateResult = await update
    except UpdateRefused as refused:
        log.warning("policy update refused (%s): %s", refused.code, refused.message)
        return _refusal(manager, refused.code, refused.message)
    except Exception as error:
        log.exception("policy update failed")
        code = PolicyErrorCode.FAILED if manager.failed else PolicyErrorCode.ENGINE_ERROR
        return _refusal(manager, code, f"{type(error).__name__}: {error}")
    return JSONResponse(result.model_dump(mode="json"))


@router.get("/v1/policy", response_model=PolicyStatus)
async def policy_status(request: Request) -> PolicyStatus:
    return _manager(request).status()


@router.get("/ready", response_model=PolicyStatus)
async def ready(request: Request) -> JSONResponse:
    manager = _manager(request)
    status = manager.status()
    return JSONResponse(status.model_dump(mode="json"), status_code=200 if status.ready else 503)


@router.post("/v1/policy/adapter", response_model=PolicyUpdateResult)
async def update_adapter_from_path(body: AdapterUpdate, request: Request) -> JSONResponse:
    manager = _manager(request)
    update = manager.update_adapter(body.version, Path(body.path), restart=body.restart)
    return await _apply(manager, update)


@router.post("/v1/policy/adapter/upload", response_model=PolicyUpdateResult)
async def update_adapter_from_upload(
    request: Request,
    version: Annotated[int, Form(ge=0)],
    files: Annotated[list[UploadFile], File()],
    restart: Annotated[bool, Form()] = False,
) -> JSONResponse:
    manager = _manager(request)
    try:
        AdapterUpdate(version=version, path="upload", restart=restart)  # the same wire rules
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from error
    contents = {Path(upload.filename or "").name: await upload.read() for upload in files}
    return await _apply(manager, manager.update_adapter(version, contents, restart=restart))


@router.post("/v1/policy/weights", response_model=PolicyUpdateResult)
async def update_full_weights(body: FullUpdate, request: Request) -> JSONResponse:
    manager = _manager(request)
    return await _apply(manager, manager.update_full(body.version, body.path, restart=body.restart))


@router.post("/v1/policy/weights/begin", response_model=PolicyStatus)
async def begin_weight_transfer(body: WeightTransferBegin, request: Request) -> JSONResponse:
    manager = _manager(request)
    try:
        await manager.begin_transfer(body.version, restart=body.restart)
    except UpdateRefused as refused:
        return _refusal(manager, refused.code, refused.message)
    return JSONResponse(manager.status().model_dump(mode="json"))


@router.post("/v1/policy/weights/commit", response_model=PolicyUpdateResult)
async def commit_weight_transfer(body: WeightTransferCommit, request: Request) -> JSONResponse:
    manager = _manager(request)
    return await _apply(manager, manager.commit_transfer(body.version, body.succeeded))


@router.post("/v1/policy/transfer/{operation}")
async def native_weight_transfer(
    operation: Literal["init", "update", "shutdown"],
    payload: Annotated[dict[str, Any], Body()],
    request: Request,
) -> JSONResponse:
    """vLLM's native weight-transfer control plane, authenticated (vLLM's own routes need dev mode).

    ``init``: ``{"init_info": {...}}``; ``update``: ``{"update_info": ...}`` (only between begin and
    commit); ``shutdown``: ``{}``. Bodies are vLLM's ``WeightTransfer*Request`` payloads.
    """
    manager = _manager(request)
    try:
        if operation == "init":
            await manager.engine.transfer_init(payload.get("init_info") or {})
        elif operation == "update":
            await manager.transfer_update(payload.get("update_info") or {})
        else:
            await manager.engine.transfer_shutdown()
    except UpdateRefused as refused:
        return _refusal(manager, refused.code, refused.message)
    except Exception as error:
        code = PolicyErrorCode.FAILED if manager.failed else PolicyErrorCode.ENGINE_ERROR
        return _refusal(manager, code, f"{type(error).__name__}: {error}")
    return JSONResponse({"operation": operation, "ok": True})


class PolicyVersionMiddleware:
    """Pins each generation to one policy version and reports it.

    ``model: <served name>`` is rewritten to the active adapter's name, so the response's ``model``
    names the exact version; the ``x-policy-version`` header carries its number. Generations pass
    ``GenerationGate`` so none runs while full weights are swapped. ``/health`` answers 503 once the
    server is marked failed.

    Installed with vLLM's ``--middleware services.inference.routes.PolicyVersionMiddleware``; it
    finds the ``PolicyManager`` at ``app.state.policy`` (set before the server accepts requests).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager: PolicyManager | None = getattr(scope["app"].state, "policy", None)
        if scope["type"] != "http" or manager is None:
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path == "/health" and manager.failed:
            response = JSONResponse({"failed": manager.failed}, status_code=503)
            return await response(scope, receive, send)
        if scope["method"] != "POST" or path not in GENERATION_PATHS:
            return await self.app(scope, receive, send)

        body = await _read_body(receive)
        async with manager.gate.generation():
            body, version = _route(manager, body)
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            await self.app(scope, _replay(body, receive), _with_version(send, version))


def _route(manager: PolicyManager, body: bytes) -> tuple[bytes, int | None]:
    """Rewrite the served name to the active adapter; return the body and the version it gets."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body, None  # vLLM answers the malformed request itself
    if not isinstance(request, dict):
        return body, None
    requested = request.get("model")
    model, version = manager.route(requested)
    if model != requested:
        request["model"] = model
        body = json.dumps(request).encode()
    return body, version


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls: wait for the disconnect, as the server would

    return replay


def _with_version(send: Send, version: int | None) -> Send:
    async def send_with_version(message: Message) -> None:
        if message["type"] == "http.response.start" and version is not None:
            headers = [
                *message.get("headers", []),
                (POLICY_VERSION_HEADER.encode(), str(version).encode()),
            ]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_version

"""Wire types of the inference service's policy-update protocol (trainer -> vLLM service).

Generation itself is vLLM's own OpenAI-compatible API (``/v1/completions`` with token-id prompts,
``return_token_ids``, ``logprobs``); this module defines only what we add beside it:

- ``GET  /v1/policy``                 -> ``PolicyStatus``: the served version, how to address it.
- ``POST /v1/policy/adapter``         ``AdapterUpdate`` (a LoRA adapter folder on a shared volume).
- ``POST /v1/policy/adapter/upload``  multipart: form field ``version`` + the adapter's files
  (``adapter_config.json``, ``adapter_model.safetensors``) uploaded as ``files``.
- ``POST /v1/policy/weights``         ``FullUpdate`` (a full safetensors checkpoint folder).
- ``POST /v1/policy/weights/begin``   ``WeightTransferBegin`` / ``POST /v1/policy/weights/commit``
  ``WeightTransferCommit``: bracket vLLM's native NCCL weight transfer (GPU clusters only).
- ``GET  /ready``                     200 ``PolicyStatus`` when generations may run, else 503.

Every update answers ``PolicyUpdateResult`` or, on refusal, ``PolicyUpdateError`` with the HTTP
status of its ``code``. A refused update never changes what is served. Versions only grow, except
when an update says ``restart``: a trainer that restarted (resumed from a checkpoint behind the
version it had pushed, or replaced) re-establishes its own policy and version.
Every generation answer carries the header ``x-policy-version`` (see ``POLICY_VERSION_HEADER``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

INFERENCE_PROTOCOL_VERSION = "1.1"
POLICY_VERSION_HEADER = "x-policy-version"
"""Response header on every generation: the policy version whose weights produced it."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Versioned(_Wire):
    """An update that installs a version: 1 and up, or 0 (the trainer's initial policy) when a
    restarted trainer re-establishes it (``restart``)."""

    version: int
    restart: bool = Field(
        default=False,
        description=(
            "The trainer restarted: accept a version at or below the served one and serve it "
            "(a resumed trainer re-establishes the policy it resumed from)."
        ),
    )

    @model_validator(mode="after")
    def _version_zero_only_on_restart(self):
        if self.version == 0 and not self.restart:
            raise ValueError("version 0 (the initial policy) is only sent with restart: true")
        return self


class UpdateKind(StrEnum):
    """How the served policy changes: a LoRA adapter swap, or the full base weights."""

    ADAPTER = "adapter"
    FULL = "full"


class AdapterUpdate(_Versioned):
    """Activate the LoRA adapter stored in a folder the service can read (a shared volume)."""

    version: int = Field(
        ...,
        ge=0,
        description="Policy version of this adapter; must exceed the served version (unless "
        "restart).",
    )
    path: str = Field(
        ...,
        min_length=1,
        description=(
            "Folder with adapter_config.json and adapter_model.safetensors (PEFT layout), as the "
            "inference service sees it. The service copies it into its own versioned folder."
        ),
    )


class FullUpdate(_Versioned):
    """Reload every base weight from a checkpoint folder the service can read (GPU-free path)."""

    version: int = Field(
        ...,
        ge=0,
        description="Policy version of these weights; must exceed the served version (unless "
        "restart).",
    )
    path: str = Field(
        ...,
        min_length=1,
        description=(
            "Folder with the model's *.safetensors files (HF names, same shapes as the served "
            "model), as the inference service sees it."
        ),
    )


class WeightTransferBegin(_Versioned):
    """Stop generations before vLLM's native weight transfer writes into the live weights."""

    version: int = Field(..., ge=0, description="Version the transfer will install.")


class WeightTransferCommit(_Wire):
    """Finish a native weight transfer: reset the prefix cache, serve ``version``, resume."""

    version: int = Field(..., ge=0, description="Must equal the version given to begin.")
    succeeded: bool = Field(
        default=True,
        description=(
            "False reports that the transfer failed half-way: the server then marks itself "
            "failed (not ready, /health 503) because its weights are no longer one policy."
        ),
    )


class PolicyStatus(_Wire):
    """What the service serves now, and how a client addresses it."""

    version: int = Field(..., ge=0, description="Policy version served now (0 = initial weights).")
    model: str = Field(
        ...,
        description=(
            "Value for the `model` field of /v1/completions: it always means the newest "
            "version. Responses name the exact adapter (e.g. 'policy-v3') in their `model`."
        ),
    )
    kind: UpdateKind | None = Field(
        default=None, description="How the served version arrived; None for the initial weights."
    )
    adapter: str | None = Field(
        default=None, description="Name of the active LoRA adapter, None when serving base weights."
    )
    ready: bool = Field(..., description="False while weights are swapped or after a fatal error.")
    updating: bool = Field(..., description="An update is being applied right now.")
    failed: str | None = Field(
        default=None,
        description="Why the server stopped serving (a failed in-place weight write); restart it.",
    )
    base_model: str = Field(..., description="Folder of the base model vLLM loaded at start.")
    lora_enabled: bool = Field(..., description="Adapter updates are accepted.")


class PolicyUpdateResult(_Wire):
    """An update that is now active: every generation that starts from now on uses it."""

    version: int = Field(..., ge=0, description="The version now served.")
    kind: UpdateKind = Field(..., description="adapter or full.")
    seconds: float = Field(..., ge=0, description="Receive-to-active time on the server.")
    path: str = Field(..., description="Where the service keeps this version's files.")
    model: str = Field(..., description="Name that addresses exactly this version.")


class PolicyErrorCode(StrEnum):
    """Why an update was refused; each maps to one HTTP status."""

    INVALID_UPDATE = "INVALID_UPDATE"  # 400: bad adapter/checkpoint, wrong shapes, bad rank
    NOT_FOUND = "NOT_FOUND"  # 404: the path does not exist on the service
    STALE_VERSION = "STALE_VERSION"  # 409: version not above the served one (and no restart)
    UNSUPPORTED = "UNSUPPORTED"  # 409: e.g. adapter update while LoRA is disabled
    FAILED = "FAILED"  # 503: the server is in a failed state and must be restarted
    ENGINE_ERROR = "ENGINE_ERROR"  # 500: vLLM refused it; the previous version keeps serving


ERROR_STATUS: dict[PolicyErrorCode, int] = {
    PolicyErrorCode.INVALID_UPDATE: 400,
    PolicyErrorCode.NOT_FOUND: 404,
    PolicyErrorCode.STALE_VERSION: 409,
    PolicyErrorCode.UNSUPPORTED: 409,
    PolicyErrorCode.FAILED: 503,
    PolicyErrorCode.ENGINE_ERROR: 500,
}


class PolicyErrorDetail(_Wire):
    code: PolicyErrorCode = Field(..., description="Machine-readable reason.")
    message: str = Field(..., description="What was wrong, for a person.")
    served_version: int = Field(..., ge=0, description="Version still served after the refusal.")


class PolicyUpdateError(_Wire):
    """Body of every refused update."""

    object: Literal["error"] = "error"
    error: PolicyErrorDetail

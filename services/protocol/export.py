"""Export the wire contract to ``proto/`` as JSON Schema files, one per service boundary.

``python -m services.protocol.export proto`` rewrites the files; ``tests/test_proto.py`` fails when
the code and ``proto/`` disagree, so every wire change shows up as a reviewed diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from services.protocol import actions, env, generated, inference, trajectory


def _bundle(title: str, version: str, models: dict[str, type[BaseModel]], **extra) -> dict:
    return {
        "title": title,
        "version": version,
        "models": {name: model.model_json_schema() for name, model in models.items()},
        **extra,
    }


def contract() -> dict[str, dict]:
    """File name in ``proto/`` -> its JSON document."""
    return {
        "env.schema.json": _bundle(
            "Env service: OpenEnv WebSocket /ws protocol for BrowserGym/MiniWoB episodes",
            env.ENV_PROTOCOL_VERSION,
            {
                "BrowserAction": env.BrowserAction,
                "BrowserResetOptions": env.BrowserResetOptions,
                "BrowserObservation": env.BrowserObservation,
                "BrowserState": env.BrowserState,
                "BrowserDemonstration": env.BrowserDemonstration,
            },
            messages={
                "reset": "BrowserResetOptions -> observation",
                "step": "BrowserAction -> observation",
                "state": "-> BrowserState",
                "demonstrate": "-> demonstration: BrowserDemonstration (the family's solver)",
                "close": "ends the session",
            },
            error_codes=[code.value for code in env.EnvErrorCode],
            action_subsets={name: list(names) for name, names in actions.SUBSETS.items()},
        ),
        "trajectory.schema.json": _bundle(
            "Trajectory records: one played episode per JSON line, in part-NNNNN.jsonl shards",
            trajectory.TRAJECTORY_FORMAT,
            {"Trajectory": trajectory.Trajectory, "TurnRecord": trajectory.TurnRecord},
        ),
        "generated.schema.json": _bundle(
            "Generated tasks: the curriculum's pool file, one task per JSON line; a reset of "
            "gen.<id> carries its task (env.schema.json)",
            f"{generated.GENERATED}/1",
            {"GeneratedTask": generated.GeneratedTask, "GoalCheck": generated.GoalCheck},
        ),
        "inference.schema.json": _bundle(
            "Inference service: policy-update protocol beside vLLM's OpenAI-compatible API",
            inference.INFERENCE_PROTOCOL_VERSION,
            {
                "AdapterUpdate": inference.AdapterUpdate,
                "FullUpdate": inference.FullUpdate,
                "WeightTransferBegin": inference.WeightTransferBegin,
                "WeightTransferCommit": inference.WeightTransferCommit,
                "PolicyStatus": inference.PolicyStatus,
                "PolicyUpdateResult": inference.PolicyUpdateResult,
                "PolicyUpdateError": inference.PolicyUpdateError,
            },
            routes={
                "GET /v1/policy": "PolicyStatus",
                "GET /ready": "PolicyStatus (200 ready, 503 while weights are swapped or failed)",
                "POST /v1/policy/adapter": "AdapterUpdate -> PolicyUpdateResult",
                "POST /v1/policy/adapter/upload": (
                    "multipart: version and restart (form fields) + files (adapter_config.json, "
                    "adapter_model.safetensors) -> PolicyUpdateResult"
                ),
                "POST /v1/policy/weights": "FullUpdate -> PolicyUpdateResult",
                "POST /v1/policy/weights/begin": "WeightTransferBegin -> PolicyStatus",
                "POST /v1/policy/weights/commit": "WeightTransferCommit -> PolicyUpdateResult",
                "POST /v1/policy/transfer/{init|update|shutdown}": (
                    "vLLM's native weight-transfer payloads ({init_info}, {update_info}, {}), "
                    "authenticated; update only between begin and commit"
                ),
            },
            error_status={code.value: status for code, status in inference.ERROR_STATUS.items()},
            generation_header=inference.POLICY_VERSION_HEADER,
        ),
    }


def render(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(out_dir: str) -> None:
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name, document in contract().items():
        (target / name).write_text(render(document))
        print(f"wrote {target / name}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "proto")

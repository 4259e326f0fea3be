"""Export the wire contract to ``proto/`` as JSON Schema files, one per service boundary.

``python -m services.protocol.export proto`` rewrites the files; ``tests/test_proto.py`` fails when
the code and ``proto/`` disagree, so every wire change shows up as a reviewed diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from services.protocol import actions, env


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
            },
            error_codes=[code.value for code in env.EnvErrorCode],
            action_subsets={name: list(names) for name, names in actions.SUBSETS.items()},
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

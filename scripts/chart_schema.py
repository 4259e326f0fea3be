"""Keep the chart's `trainer.config` schema equal to the trainer's own config model.

`helm/browser-rl/values.schema.json` embeds `TrainerConfig`'s JSON Schema (services/trainer/
config.py) under `properties.trainer.properties.config`, so `helm install` refuses an unknown
trainer key or a wrong type before any pod starts, with the same field docs. Keys the chart fills
in itself (`env`) are not required from the values. `make chart-schema` rewrites that part of the
file; tests/deploy checks it is current (the rest of the schema is written by hand).
``model.source`` is not required either: the chart sets it from the top-level ``model`` value
(one value for trainer and vLLM) and refuses a ``trainer.config.model.source``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[1] / "helm" / "browser-rl" / "values.schema.json"
PREFIX = "trainer."
# Filled in by templates/_trainer.tpl, so values need not carry them.
CHART_SUPPLIED = {"env", "model"}


def _rename_refs(node: Any) -> Any:
    """Point pydantic's `#/$defs/X` at `#/$defs/trainer.X` (the defs move to the root)."""
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", f"#/$defs/{PREFIX}") if k == "$ref" else _rename_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rename_refs(v) for v in node]
    return node


def _drop_formats(node: Any) -> Any:
    """pydantic's `format: path` is not a JSON Schema format; Helm's validator need not know it."""
    if isinstance(node, dict):
        return {k: _drop_formats(v) for k, v in node.items() if not (k == "format" and v == "path")}
    if isinstance(node, list):
        return [_drop_formats(v) for v in node]
    return node


def updated_schema(schema: dict[str, Any]) -> dict[str, Any]:
    from services.trainer.config import TrainerConfig

    trainer = _drop_formats(_rename_refs(TrainerConfig.model_json_schema()))
    definitions = trainer.pop("$defs")
    trainer["required"] = [k for k in trainer.get("required", []) if k not in CHART_SUPPLIED]
    model = definitions["ModelConfig"]
    model["required"] = [k for k in model.get("required", []) if k != "source"]
    trainer["description"] = (
        "The trainer's config (services/trainer/config.py TrainerConfig); the chart fills in "
        "model.source (from `model`), env discovery, run.output_dir, model.cache_dir, use_cpu, "
        "metrics and, with inference enabled, generation.backend and policy_sync."
    )
    schema = json.loads(json.dumps(schema))
    schema["$defs"] = {
        **{k: v for k, v in schema["$defs"].items() if not k.startswith(PREFIX)},
        **{PREFIX + k: v for k, v in definitions.items()},
    }
    schema["properties"]["trainer"]["properties"]["config"] = trainer
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA.write_text(render(updated_schema(json.loads(SCHEMA.read_text()))))
    print(f"wrote {SCHEMA}", file=sys.stderr)

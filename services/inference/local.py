"""Run the inference service as a local process (tests, benchmarks, the one-machine setup).

The service needs vLLM, which lives in its own virtualenv (``.venv-vllm``, ``make setup-vllm``);
this module only starts that interpreter, so it imports nothing from vLLM itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from services.inference.config import InferenceConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


class InferenceStartError(RuntimeError):
    """The service process exited or did not become ready in time (message ends with its log)."""


def _log_tail(log_file: Path, lines: int = 40) -> str:
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def start_local_inference(
    config: InferenceConfig,
    *,
    python: Path = VLLM_PYTHON,
    startup_timeout_s: float = 600.0,
    log_file: Path | None = None,
    port: int = 0,
) -> Iterator[str]:
    """Start ``python -m services.inference``; yield its base URL (``port`` 0: a free one).

    Waits until ``/ready`` answers 200. On exit the whole process group (API server and vLLM's
    engine process) is terminated, then killed if it lingers.
    """
    if not python.exists():
        raise InferenceStartError(f"{python} is missing: run `make setup-vllm` first")
    config = with_local_model(config)
    with tempfile.TemporaryDirectory(prefix="inference-") as scratch:
        scratch_dir = Path(scratch)
        config_file = scratch_dir / "inference.yaml"
        config_file.write_text(
            yaml.safe_dump(config.model_copy(update={"port": port}).model_dump())
        )
        port_file = scratch_dir / "port"
        log_path = log_file or scratch_dir / "server.log"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **config.vllm_env()}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    str(python),
                    "-m",
                    "services.inference",
                    "--config",
                    str(config_file),
                    "--port-file",
                    str(port_file),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            url = _wait_ready(process, port_file, log_path, config, startup_timeout_s)
            yield url
        finally:
            _stop(process)


def with_local_model(config: InferenceConfig) -> InferenceConfig:
    """vLLM needs a folder; turn a model source (``pypi:gemma3-270m``, a hub id) into one here,
    in the main virtualenv, with the trainer's resolver (vLLM's own virtualenv cannot convert)."""
    if Path(config.model).expanduser().is_dir():
        return config
    from services.trainer.models import resolve_model

    return config.model_copy(update={"model": str(resolve_model(config.model))})


def _wait_ready(
    process: subprocess.Popen,
    port_file: Path,
    log_path: Path,
    config: InferenceConfig,
    timeout_s: float,
) -> str:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {key}"} if (key := config.api_key()) else {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InferenceStartError(
                f"inference service exited with {process.returncode}:\n{_log_tail(log_path)}"
            )
        if port_file.exists() and port_file.read_text().strip():
            url = f"http://127.0.0.1:{port_file.read_text().strip()}"
            try:
                if httpx.get(f"{url}/ready", headers=headers, timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(1.0)
    raise InferenceStartError(
        f"inference service not ready after {timeout_s:.0f} s:\n{_log_tail(log_path)}"
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # vLLM's engine process lives in the same group; make sure nothing is left behind.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    """``python -m services.inference.local --config FILE``: serve until Ctrl-C (local runs)."""
    import argparse

    cli = argparse.ArgumentParser(description=main.__doc__)
    cli.add_argument("--config", required=True, help="inference service YAML")
    cli.add_argument("--port", type=int, default=None, help="fixed port (default: from config)")
    options = cli.parse_args()
    config = InferenceConfig.from_yaml(options.config)
    port = options.port if options.port is not None else config.port
    log_file = Path(config.update_dir) / "server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with start_local_inference(config, log_file=log_file, port=port) as url:
        print(f"inference service ready at {url} (log: {config.update_dir}/server.log)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

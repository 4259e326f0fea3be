"""Run one env pod: ``python -m services.env --host 127.0.0.1 --port 8000 --max-sessions 4``.

SIGTERM drains: readiness turns "not ready", new sessions and resets get DRAINING, running
episodes may finish (up to ``drain_timeout_s``), then the process exits 0. A second SIGTERM or
a SIGINT exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from services.env.config import load_config
from services.env.server import EnvService, create_app

log = logging.getLogger("services.env")


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains the pod before shutting down."""

    def __init__(self, config: uvicorn.Config, service: EnvService) -> None:
        super().__init__(config)
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.service.draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        log.info("SIGTERM: draining (up to %.0f s)", self.service.config.drain_timeout_s)
        self.service.draining = True  # visible at once, before the loop runs the drain task
        self._loop.call_soon_threadsafe(self._loop.create_task, self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self.service.drain()
        self.should_exit = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.env", description=__doc__)
    parser.add_argument("--config", help="YAML file with EnvServerConfig fields")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--max-sessions", type=int)
    parser.add_argument("--browsers", type=int, help="browser threads (default: max sessions)")
    parser.add_argument("--chromium-path")
    parser.add_argument("--default-task")
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    config = load_config(
        args.config,
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        browsers=args.browsers,
        chromium_path=args.chromium_path,
        default_task=args.default_task,
        log_level=args.log_level,
    )
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(config)
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            # Above our own limit so that oversized messages get a PAYLOAD_TOO_LARGE reply
            # instead of a dropped connection (up to this size).
            ws_max_size=max(16 * config.max_message_bytes, 1 << 20),
            timeout_graceful_shutdown=5,
        ),
        app.state.service,
    )
    server.run()


if __name__ == "__main__":
    main()

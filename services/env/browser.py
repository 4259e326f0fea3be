"""Browser workers: one thread, one sync Playwright driver and one headless Chromium each.

Playwright's sync API is bound to the thread that started it, so every call on a browser (and on
its pages) runs on that browser's worker thread; other threads hand work over with ``submit``.
Different workers run truly in parallel (Chromium work and waits overlap; only the Python parts
share the GIL). The browser stays up across episodes and is relaunched after
``episodes_per_browser`` episodes or when it dies. A hung call is cut short by ``kill_browser``
(from any thread): killing the Chromium process makes the stuck Playwright call raise at once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psutil
from browsergym.core.constants import BROWSERGYM_ID_ATTRIBUTE
from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright

from services.env.config import EnvServerConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = object()


class BrowserWorker:
    """A thread that owns one Chromium; sessions on this worker get a browser context each."""

    def __init__(self, index: int, config: EnvServerConfig, on_restart: Callable[[], None]):
        self.index = index
        self.config = config
        self._on_restart = on_restart
        self._jobs: queue.Queue = queue.Queue()
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._browser_pids: list[int] = []
        self._pid_lock = threading.Lock()
        #: Bumped on every (re)launch; contexts of an older generation are dead.
        self.generation = 0
        self.episodes_since_launch = 0
        self.active_episodes = 0  # episodes running on this browser (worker thread only)
        self.sessions = 0  # assigned sessions (owned by the event loop thread)
        self.launch_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"browser-{index}", daemon=True)
        self._thread.start()

    # ---- called from any thread -------------------------------------------------------------
    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return future

    def kill_browser(self) -> None:
        """Kill this worker's Chromium processes so that a hung call on it fails now."""
        with self._pid_lock:
            pids = list(self._browser_pids)
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                for child in proc.children(recursive=True):
                    child.kill()
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    def stop(self, timeout_s: float = 10.0) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.kill_browser()
            self._thread.join(timeout_s)

    # ---- worker thread only ----------------------------------------------------------------
    def _run(self) -> None:
        self._playwright = sync_playwright().start()
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    break
                future, fn, args = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the waiting caller
                    future.set_exception(exc)
        finally:
            self._close_browser()
            self._playwright.stop()

    def browser(self) -> Browser:
        """The live browser, relaunching it when missing or dead."""
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        if self._browser is not None:
            log.warning("worker %d: Chromium died; relaunching", self.index)
            self._close_browser()
            self._on_restart()
        self._launch()
        assert self._browser is not None
        return self._browser

    def due_for_recycle(self) -> bool:
        return self.episodes_since_launch >= self.config.episodes_per_browser

    def recycle(self) -> None:
        """Close the browser (leak guard); the next ``browser()`` call launches a fresh one."""
        log.info(
            "worker %d: recycling Chromium after %d episodes",
            self.index,
            self.episodes_since_launch,
        )
        self._close_browser()
        self._on_restart()

    def new_context(self) -> tuple[BrowserContext, int]:
        """A fresh browser context on the live browser, with the generation it belongs to."""
        context = self.browser().new_context(viewport={"width": 332, "height": 214})
        context.set_default_timeout(self.config.action_timeout_ms)
        return context, self.generation

    def is_current(self, generation: int) -> bool:
        return (
            generation == self.generation
            and self._browser is not None
            and self._browser.is_connected()
        )

    def _launch(self) -> None:
        assert self._playwright is not None
        tag = f"--browser-rl-worker={uuid.uuid4().hex}"
        args = [*self.config.chromium_args, tag]
        no_sandbox = self.config.no_sandbox
        if no_sandbox is None:
            no_sandbox = os.geteuid() == 0
        if no_sandbox and "--no-sandbox" not in args:
            args.append("--no-sandbox")
        # BrowserGym's element-id attribute: its actions locate elements with get_by_test_id().
        self._playwright.selectors.set_test_id_attribute(BROWSERGYM_ID_ATTRIBUTE)
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=self.config.chromium_path,
                headless=True,
                slow_mo=self.config.slow_mo_ms,
                args=args,
                ignore_default_args=["--hide-scrollbars"],
            )
        except Exception as exc:
            self.launch_error = f"{type(exc).__name__}: {exc}"
            raise
        self.launch_error = None
        self.generation += 1
        self.episodes_since_launch = 0
        pids = [
            p.pid
            for p in psutil.Process().children(recursive=True)
            if _has_arg(p, tag) and not _has_arg(p, "--type=")
        ]
        with self._pid_lock:
            self._browser_pids = pids

    def _close_browser(self) -> None:
        if self._browser is not None:
            try:
                self._browser.close()
            except Exception as exc:  # already dead: nothing to close
                log.debug("worker %d: closing browser: %s", self.index, exc)
            self._browser = None
        self.kill_browser()  # leftovers of a crashed browser
        with self._pid_lock:
            self._browser_pids = []


def _has_arg(proc: psutil.Process, needle: str) -> bool:
    try:
        return any(arg.startswith(needle) for arg in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False

"""The inference replicas the trainer generates on and pushes each policy to: one policy, N servers.

Data plane and control plane are split, as in the peer systems (prime-rl, SkyRL, AReaL): each
generation request goes to one replica, chosen here; every policy update goes to every replica
(``policy_sync.py``). This module holds the shared state and the rules; HTTP lives with its users
(``generation/remote.py``, ``policy_sync.py``). Both run in different threads, so every method
takes the lock.

The rules (each tested in tests/trainer/test_replicas.py):

- **Current replicas only.** A replica takes generation traffic only while it is *current*: up
  (its last answer came) and serving the version the trainer last pushed (before the first push,
  or when nothing pushes, any version is current).
- **Routing.** All turns of an episode go to the replica of its first turn while that one is
  current (its prefix cache holds the episode); otherwise to the current replica with the fewest
  requests in flight.
- **A dying replica.** A request that gets no usable answer (connection refused or reset,
  timeout, HTTP 5xx) marks its replica down and is retried on another current replica: counted,
  never scored as a policy failure. A replica that is not current is asked again what it serves
  every ``probe_after_s`` (it may be back, or already at the pushed version).
- **Updates.** A new version goes to every known replica. One that accepts serves it; one that
  refuses or cannot be reached keeps its old version and gets no traffic; the trainer sends it
  the current version again before the next rollout and at every push. The update counts as
  done when at least one replica serves it; when none does it is a refusal (every replica said
  no) or an outage (waited for, as with one server).
- **Answers across an update.** With rollouts overlapping the update (``rollout.max_staleness``
  k > 0) a request may be answered after a push by the version it started on: an answer up to k
  versions behind the pushed one is used (its version is recorded per sample and corrected for
  in the update) and does not mark its replica behind; an older one is a restarted replica's and
  goes elsewhere. With k = 0 only the pushed version's answers are used.
- **(Re)joining.** A replica that discovery lists anew, or that comes back after a restart
  (serving version 0), is behind: no traffic until the trainer has brought it up to date, which
  it does before every step and, when generation finds such a replica mid-rollout, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import InitVar, dataclass, field

#: Episodes whose replica is remembered (least recently used beyond this are forgotten).
STICKY_EPISODES = 4096


@dataclass
class Replica:
    """What the trainer knows about one server."""

    url: str
    version: int | None = None
    """The policy version it serves (None: not asked yet)."""
    up: bool = True
    in_flight: int = 0
    retry_at: float = 0.0
    """When a down replica may be probed again (``time.monotonic``)."""
    requests: int = 0
    failures: int = 0
    reason: str = ""
    """Why it is down or behind, for logs and errors."""


@dataclass
class ReplicaSet:
    """The known replicas, their versions and load; the version the trainer last pushed."""

    urls: InitVar[Iterable[str]] = ()
    """The first replicas (``set_urls`` replaces them later: not kept as a field to go stale)."""
    probe_after_s: float = 5.0
    max_lag: int = 0
    """How many versions behind the pushed one an answer may be (``rollout.max_staleness``)."""
    target: int | None = None
    """The version every replica should serve (None: nothing pushed, any version will do)."""
    retries: int = 0
    """Requests moved to another replica after theirs failed."""
    on_close: Callable[[], None] | None = None
    """Stops what keeps the set up to date (a discovery watch), if anything."""
    catch_up: Callable[[list[str]], object] | None = None
    """Sends the pushed version to the given replicas (set by the policy pushes): generation
    calls it for a replica it finds up but behind, so a restarted one rejoins mid-rollout."""
    _replicas: dict[str, Replica] = field(default_factory=dict, init=False)
    _sticky: OrderedDict[Hashable, str] = field(default_factory=OrderedDict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self, urls: Iterable[str]) -> None:
        self.set_urls(urls)

    # --- membership (discovery) -----------------------------------------------------------------

    def set_urls(self, urls: Iterable[str]) -> None:
        """The replicas discovery lists now: new ones join behind, missing ones are forgotten."""
        wanted = [u.rstrip("/") for u in urls]
        with self._lock:
            for url in wanted:
                self._replicas.setdefault(url, Replica(url))
            for gone in set(self._replicas) - set(wanted):
                del self._replicas[gone]

    def all(self) -> list[Replica]:
        """Every known replica (copies: safe to read in another thread)."""
        with self._lock:
            return [Replica(**vars(r)) for r in self._replicas.values()]

    # --- the data plane -------------------------------------------------------------------------

    def choose(self, episode: Hashable | None = None) -> Replica | None:
        """The replica for the next request of ``episode`` (counted in flight), or None."""
        with self._lock:
            current = [r for r in self._replicas.values() if self._current(r)]
            if not current:
                return None
            chosen = None
            if episode is not None and (url := self._sticky.get(episode)) in self._replicas:
                chosen = self._replicas[url] if self._current(self._replicas[url]) else None
            if chosen is None:
                chosen = min(current, key=lambda r: (r.in_flight, r.requests))
            if episode is not None:
                self._sticky[episode] = chosen.url
                self._sticky.move_to_end(episode)
                while len(self._sticky) > STICKY_EPISODES:
                    self._sticky.popitem(last=False)
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def release(self, url: str) -> None:
        with self._lock:
            if (replica := self._replicas.get(url)) is not None:
                replica.in_flight = max(replica.in_flight - 1, 0)

    def failed(self, url: str, reason: str) -> None:
        """A request to ``url`` got no usable answer: down until probed again."""
        with self._lock:
            if (replica := self._replicas.get(url)) is not None:
                replica.up = False
                replica.failures += 1
                replica.reason = reason
                replica.retry_at = time.monotonic() + self.probe_after_s

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def due_for_probe(self) -> list[str]:
        """Replicas that are not current (down, behind, or not asked yet) and whose back-off has
        passed: the caller asks them what they serve now."""
        now = time.monotonic()
        with self._lock:
            due = [r for r in self._replicas.values() if not self._current(r) and r.retry_at <= now]
            for replica in due:
                replica.retry_at = now + self.probe_after_s  # one probe at a time per replica
            return [r.url for r in due]

    # --- the control plane ----------------------------------------------------------------------

    def served(self, url: str, version: int | None, *, up: bool = True, reason: str = "") -> None:
        """``url`` answered (a status, an update, a generation): it serves ``version``."""
        with self._lock:
            if (replica := self._replicas.get(url)) is not None:
                replica.up = up
                replica.version = version if version is not None else replica.version
                replica.reason = reason
                if not up:
                    replica.retry_at = time.monotonic() + self.probe_after_s

    def answered(self, url: str, version: int) -> bool:
        """A generation on ``url`` came back from ``version``: is the answer usable (see
        "Answers across an update")? A usable one from before the last push leaves the
        replica's known version alone; an unusable one records it (the replica is behind)."""
        with self._lock:
            target = self.target
            usable = target is None or target - self.max_lag <= version <= target
            replica = self._replicas.get(url)
            if replica is not None and (not usable or target is None or version == target):
                replica.up, replica.version, replica.reason = True, version, ""
            return usable

    def pushed(self, version: int) -> None:
        """The trainer's policy is now ``version``: only replicas serving it are current."""
        with self._lock:
            self.target = version

    def behind(self) -> list[str]:
        """Replicas not serving the pushed version (down ones too): the trainer re-sends it."""
        with self._lock:
            return [r.url for r in self._replicas.values() if not self._current(r)]

    def describe(self) -> str:
        with self._lock:
            parts = [
                f"{r.url} v{r.version} {'up' if r.up else 'down'}"
                + (f" ({r.reason})" if r.reason else "")
                for r in self._replicas.values()
            ]
        return f"target version {self.target}; " + ("; ".join(parts) or "none discovered")

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def _current(self, replica: Replica) -> bool:
        return replica.up and (self.target is None or replica.version == self.target)


def replica_set(servers, *, probe_after_s: float = 5.0, max_lag: int = 0) -> ReplicaSet:
    """The replicas of a ``servers`` setting (a ``DiscoveryConfig``): its static URLs, or the
    ready pods of a Kubernetes Service, kept up to date by a watch in a background thread (the
    generation loop and the policy pushes both read the set)."""
    if servers.type == "static":
        return ReplicaSet(servers.endpoints, probe_after_s=probe_after_s, max_lag=max_lag)
    from services.trainer.discovery import build_discovery

    replicas = ReplicaSet(probe_after_s=probe_after_s, max_lag=max_lag)
    discovery = build_discovery(servers)
    loop = asyncio.new_event_loop()

    async def watch() -> None:
        replicas.set_urls(await discovery.current())
        await discovery.watch(replicas.set_urls)

    watching = loop.create_task(watch())

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(watching)
        loop.close()

    threading.Thread(target=run, name="replica-discovery", daemon=True).start()
    replicas.on_close = lambda: loop.call_soon_threadsafe(watching.cancel)
    return replicas

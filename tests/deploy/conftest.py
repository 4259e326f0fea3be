"""Live env pods (real Chromium) shared by the deploy tests, started once per session."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

from services.env.local import start_local_env_pods


@pytest.fixture(scope="session")
def env_pods():
    """Pods A and B stay up; pod C has its own stack so the discovery test can stop it (a
    scale-down). All start before any test needs them: a pod only shows up as ready in its
    EndpointSlice once it is up, so Chromium's start-up time is not what the tests measure."""
    with start_local_env_pods(2, max_sessions=2) as urls, contextlib.ExitStack() as pod_c:
        (url_c,) = pod_c.enter_context(start_local_env_pods(1, max_sessions=2))
        yield SimpleNamespace(a=urls[0], b=urls[1], c=url_c, stop_c=pod_c.close)

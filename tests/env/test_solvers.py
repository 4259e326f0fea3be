"""Scripted solvers on real pages: the ``demonstrate`` message names the next action of the task
family's solver, and following it solves every covered task; tasks without one say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.env.client import BrowserEnvClient, EnvRequestError
from services.env.families.miniwob.solvers import SOLVERS
from services.env.local import start_local_env_pods

pytestmark = pytest.mark.chromium
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pages"


@pytest.fixture(scope="module")
def pod():
    families = [{"type": "miniwob"}, {"type": "pages", "name": "pages", "folder": str(EXAMPLES)}]
    with start_local_env_pods(
        1, max_sessions=2, action_subsets=["miniwob_liu18"], task_families=families
    ) as urls:
        yield urls[0]


async def solve(env: BrowserEnvClient, task: str, seed: int) -> tuple[float, list[str]]:
    obs = await env.reset(task=task, seed=seed)
    actions = []
    while not obs.done and len(actions) < 6:
        demonstration = await env.demonstrate()
        assert demonstration.task == task and demonstration.action is not None
        actions.append(demonstration.action)
        obs = await env.step(demonstration.action)
        assert obs.error == "", obs.error
    return obs.reward, actions


@pytest.mark.parametrize("task", sorted(SOLVERS))
async def test_following_the_solver_solves_the_task(pod, task):
    async with BrowserEnvClient(pod) as env:
        for seed in (0, 1):
            reward, actions = await solve(env, task, seed)
            assert reward == 1.0, (task, seed, actions)


async def test_reading_tasks_need_the_goal_read(pod):
    """The right element of a reading task changes with the seed: no fixed id sequence works."""
    async with BrowserEnvClient(pod) as env:
        for task in ("click-button", "click-option", "click-tab"):
            firsts = {(await solve(env, task, seed))[1][0] for seed in range(6)}
            assert len(firsts) > 1, (task, firsts)


async def test_tasks_without_a_solver_demonstrate_nothing(pod):
    async with BrowserEnvClient(pod) as env:
        with pytest.raises(EnvRequestError, match="reset first"):
            await env.demonstrate()
        await env.reset(task="focus-text-2", seed=0)
        assert (await env.demonstrate()).action is None
        await env.reset(task="pages.greet", seed=0)
        demonstration = await env.demonstrate()
        assert (demonstration.action, demonstration.task) == (None, "pages.greet")

"""The page-folder task family: the user's own pages served beside MiniWoB by the same pod."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from services.env.client import BrowserEnvClient, EnvRequestError, EnvTaskError
from services.env.local import start_local_env_pods

pytestmark = pytest.mark.chromium
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pages"


@pytest.fixture(scope="module")
def page_folder(tmp_path_factory):
    """The shipped examples plus three broken tasks (page, checker, manifest)."""
    folder = tmp_path_factory.mktemp("pages")
    for task in ("greet", "pick-color"):
        shutil.copytree(EXAMPLES / task, folder / task)
    broken_page = folder / "broken-page"
    broken_page.mkdir()
    (broken_page / "task.yaml").write_text("checker: js\n")
    (broken_page / "index.html").write_text(
        "<script>window.browserRL = {setup() { throw new Error('no goal today'); }};</script>"
    )
    broken_check = folder / "broken-check"
    shutil.copytree(EXAMPLES / "pick-color", broken_check)
    (broken_check / "check.py").write_text(
        (EXAMPLES / "pick-color" / "check.py").read_text()
        + "\n\ndef check(page, params):\n    return 7\n"
    )
    broken_manifest = folder / "broken-manifest"
    broken_manifest.mkdir()
    (broken_manifest / "task.yaml").write_text("checker: ruby\n")
    return folder


@pytest.fixture(scope="module")
def pod(page_folder):
    families = [{"type": "miniwob"}, {"type": "pages", "name": "mine", "folder": str(page_folder)}]
    with start_local_env_pods(1, max_sessions=2, task_families=families) as urls:
        yield urls[0]


def bid(axtree: str, role: str, name: str) -> str:
    return re.search(rf"\[(\w+)\] {role} '{name}'", axtree).group(1)


async def test_js_checked_page_rewards_the_goal_and_only_the_goal(pod):
    async with BrowserEnvClient(pod) as env:
        seen_bids = set()
        for seed, right in ((3, True), (4, False)):
            obs = await env.reset(task="mine.greet", seed=seed)
            assert obs.task == "mine.greet"
            name = re.search(r'"(\w+)"', obs.goal).group(1)
            textbox = bid(obs.axtree_txt, "textbox", "Name")
            seen_bids.add(textbox)
            obs = await env.step(f"fill('{textbox}', '{name if right else 'Nobody'}')")
            assert (obs.done, obs.error) == (False, "")
            obs = await env.step(f"click('{bid(obs.axtree_txt, 'button', 'Greet')}')")
            assert (obs.done, obs.reward) == (True, 1.0 if right else 0.0)
        for seed in range(5, 9):
            obs = await env.reset(task="mine.greet", seed=seed)
            seen_bids.add(bid(obs.axtree_txt, "textbox", "Name"))
        assert len(seen_bids) > 1  # the page is laid out per seed: ids must be read, not learnt


async def test_python_checked_page_and_miniwob_share_one_session(pod):
    async with BrowserEnvClient(pod) as env:
        obs = await env.reset(task="mine.pick-color", seed=5)
        colour = re.search(r"Click the (\w+) square", obs.goal).group(1)
        obs = await env.step(f"click('{bid(obs.axtree_txt, 'button', colour)}')")
        assert (obs.done, obs.reward) == (True, 1.0)
        obs = await env.reset(task="click-test", seed=1)
        assert (await env.step("click('13')")).reward == 1.0


async def test_broken_tasks_answer_task_error_naming_the_task_and_the_pod_keeps_serving(pod):
    async with BrowserEnvClient(pod) as env:
        with pytest.raises(EnvTaskError, match=r"task mine.broken-page: .*setup.*no goal today"):
            await env.reset(task="mine.broken-page", seed=1)
        obs = await env.reset(task="mine.broken-check", seed=1)
        any_square = bid(obs.axtree_txt, "button", r"\w+")
        with pytest.raises(EnvTaskError, match=r"mine.broken-check: the checker returned 7"):
            await env.step(f"click('{any_square}')")
        with pytest.raises(
            EnvTaskError,
            match=r"task mine.broken-manifest \(.*\): checker: Input should be 'js' or",
        ):
            await env.reset(task="mine.broken-manifest", seed=1)
        with pytest.raises(EnvRequestError, match=r"'mine\.nothing' is unknown"):
            await env.reset(task="mine.nothing", seed=1)
        obs = await env.reset(task="mine.greet", seed=1)  # the same session goes on
        assert obs.goal.startswith("Enter the name")


def test_metadata_lists_every_family_and_its_tasks(pod):
    import httpx

    metadata = httpx.get(f"{pod}/metadata").json()
    mine = metadata["task_families"]["mine"]
    assert mine == [
        f"mine.{t}"
        for t in sorted(["broken-check", "broken-manifest", "broken-page", "greet", "pick-color"])
    ]
    assert "click-test" in metadata["task_families"]["miniwob"]
    assert set(mine) <= set(metadata["tasks"])

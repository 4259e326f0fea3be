"""Env pieces that need no browser: config loading, the task catalogue, client error mapping."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.env.client import (
    BrowserEnvClient,
    EnvCapacityError,
    EnvRequestError,
    EnvUnavailableError,
    error_from_reply,
)
from services.env.config import MiniWoBFamilyConfig, load_config
from services.env.families import FAMILIES, TaskCatalog, UnknownTaskError, build_families
from services.env.families.miniwob import TASK_CLASSES
from services.protocol.axtree import elements
from services.protocol.tasks import miniwob_tasks


def miniwob_catalog(allowed=None) -> TaskCatalog:
    return TaskCatalog(build_families([MiniWoBFamilyConfig()]), allowed)


def test_config_layers_yaml_then_environment_then_overrides(tmp_path):
    path = tmp_path / "pod.yaml"
    path.write_text("max_sessions: 6\nmax_steps: 15\nallowed_tasks: [click-test]\n")
    environ = {"BROWSERENV_MAX_STEPS": "20", "BROWSERENV_ACTION_SUBSETS": '["miniwob_liu18"]'}
    config = load_config(path, environ=environ, max_sessions=None, port=9100)
    assert (config.max_sessions, config.max_steps, config.port) == (6, 20, 9100)
    assert config.allowed_tasks == ["click-test"] and config.action_subsets == ["miniwob_liu18"]
    assert config.worker_count == 6


def test_config_rejects_bad_values_with_the_reason():
    with pytest.raises(ValidationError, match="unknown action subset"):
        load_config(environ={}, action_subsets=["teleport"])
    with pytest.raises(ValidationError, match="max_sesions"):
        load_config(environ={}, max_sesions=3)


def test_catalog_has_all_125_tasks_and_accepts_prefixed_names():
    assert len(TASK_CLASSES) == 125
    catalog = miniwob_catalog()
    for name in ["click-test", "miniwob.click-test", "browsergym/miniwob.click-test"]:
        assert catalog.resolve(name) == "click-test"


def test_catalog_allow_list():
    catalog = miniwob_catalog(["login-user", "miniwob.click-test"])
    assert catalog.allowed == ("click-test", "login-user")
    with pytest.raises(UnknownTaskError, match="not allowed on this pod; valid tasks: click"):
        catalog.resolve("enter-text")
    with pytest.raises(UnknownTaskError, match=r"names unknown task\(s\) \['click-tset'\]"):
        miniwob_catalog(["click-tset"])


def test_generated_tasks_come_with_their_reset_on_pods_that_serve_them():
    from services.env.config import GeneratedFamilyConfig
    from services.protocol.env import BrowserResetOptions
    from services.protocol.generated import GeneratedTask, GoalCheck

    spec = GeneratedTask(id="click-button-3-ab12", base_task="click-button", seed=3,
                         goal="Click the button \"No\".", generator="programmatic",
                         check=GoalCheck(kind="click", bids=["12"]))  # fmt: skip
    served = TaskCatalog(build_families([MiniWoBFamilyConfig(), GeneratedFamilyConfig()]))
    assert served.reset_task("ignored", spec) == "gen.click-button-3-ab12"
    assert served.instance(spec.name, 0, spec).spec == spec
    with pytest.raises(UnknownTaskError, match=r"its reset must carry it \(options.generated\)"):
        served.resolve("gen.click-button-3-ab12")  # a name alone: no pod keeps a list
    with pytest.raises(UnknownTaskError, match=r"serves no generated tasks; add \{type: gen"):
        miniwob_catalog().reset_task("gen.click-button-3-ab12", spec)
    limited = TaskCatalog(served.families.values(), ["click-test"])
    with pytest.raises(UnknownTaskError, match="'click-button' is not allowed on this pod"):
        limited.reset_task("gen.click-button-3-ab12", spec)  # its page's task must be allowed
    assert BrowserResetOptions(generated=spec).generated == spec
    with pytest.raises(ValidationError, match="is not the generated task sent"):
        BrowserResetOptions(task="click-button", generated=spec)


def test_published_miniwob_task_list_is_what_the_family_serves():
    """The trainer checks task names against the published list: it must not drift."""
    assert miniwob_tasks() == frozenset(miniwob_catalog().allowed)


def test_every_family_config_type_has_a_registry_entry():
    from typing import get_args

    from services.env.config import TaskFamilyConfig

    union = get_args(get_args(TaskFamilyConfig)[0])
    assert {m.model_fields["type"].default for m in union} == set(FAMILIES.names())


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("CAPACITY_REACHED", EnvCapacityError),
        ("DRAINING", EnvUnavailableError),
        ("TIMEOUT", EnvUnavailableError),
        ("BROWSER_ERROR", EnvUnavailableError),
        ("SESSION_ERROR", EnvUnavailableError),
        ("UNKNOWN_TASK", EnvRequestError),
        ("VALIDATION_ERROR", EnvRequestError),
        ("NOT_RESET", EnvRequestError),
    ],
)
def test_error_codes_map_to_what_the_caller_should_do(code, kind):
    error = error_from_reply({"code": code, "message": "why"})
    assert type(error) is kind and (error.code, error.message) == (code, "why")


async def test_unreachable_pod_is_unavailable():
    with pytest.raises(EnvUnavailableError, match="CONNECT_FAILED"):
        async with BrowserEnvClient("http://127.0.0.1:9", connect_timeout_s=2) as env:
            await env.reset()
    with pytest.raises(ValueError, match="needs a scheme"):
        BrowserEnvClient("127.0.0.1:8000")


def test_solvers_read_bids_from_the_accessibility_tree():
    tree = "RootWebArea 'x'\n\t[13] button 'Click Me!'\n\t\t[a4] textbox ''\n\tStaticText 'y'"
    assert [(n.bid, n.role, n.name) for n in elements(tree)] == [
        ("13", "button", "Click Me!"),
        ("a4", "textbox", ""),
    ]


def test_action_code_uses_the_pods_timeout_not_browsergyms_500_ms():
    """BrowserGym's action functions hard-code timeout=500: a valid click failed on a busy
    machine. The pod's action code carries its own ``action_timeout_ms`` everywhere."""
    from services.env.config import EnvServerConfig
    from services.env.episode import action_set_for

    action_set = action_set_for(EnvServerConfig(action_timeout_ms=4321))
    code = action_set.to_python_code("click('13')")
    assert "timeout=500" not in code
    assert code.count("timeout=4321") >= 3  # click, and the scroll-into-view helpers

"""The run report: plots drawn from metrics.jsonl, and the HTML opened in real headless Chromium
(no console errors, the plots render, the filters filter)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from PIL import Image, ImageStat

from services.protocol.trajectory import Trajectory
from services.trainer.cli import main
from services.trainer.config import load_config
from services.trainer.discovery import StaticDiscovery
from services.trainer.evaluation.report import (
    EpisodeRecord,
    EvalSettings,
    PolicyReport,
    TaskScore,
    write_reports,
)
from services.trainer.evaluation.run import evaluate_backend
from services.trainer.frames import OUTLINE, FrameWriter
from services.trainer.generation.scripted import ScriptedBackend
from services.trainer.plots import FIGURES, draw_plots
from services.trainer.run_report import write_report
from services.trainer.trajectories import TrajectoryWriter

TASKS = ("click-button", "click-link")


def _metrics(path, grpo_steps=3, sft_steps=2):
    records = [
        {"stage": "sft", "step": s, "loss": 2.0 / s, "mean_token_accuracy": 0.3 * s}
        for s in range(1, sft_steps + 1)
    ]
    records += [{"stage": "sft", "step": sft_steps, "train_loss": 1.5}]  # the end-of-stage summary
    for s in range(1, grpo_steps + 1):
        records.append(
            {
                "stage": "grpo",
                "step": s,
                "loss": 0.01,
                "kl": 0.001 * s,
                "reward": 0.2 * s,
                "rollout/episode_turns": 2.0,
                "rollout/invalid_action_rate": 0.1,
                "rollout/seconds": 40.0,
                "update/seconds": 30.0,
                "success/click-button": 0.25 * s,
                "success/click-link": 0.1,
                "curriculum/click-button": 0.6,
                "curriculum/click-link": 0.4,
            }
        )
    # the held-out seeds at the phase starts (eval.phase_seeds)
    records += [
        {"stage": "phase_eval", "step": s, "trained": 0.2 * s, "held_out": 0.1,
         "success/click-button": 0.2 * s, "success/click-link": 0.1}
        for s in range(0, grpo_steps + 1, 2)
        if grpo_steps
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"stage": "grpo", "st')


def _policy(label, outcomes):
    episodes = [
        EpisodeRecord(task, seed, float(o == "success"), o, 1, [f"click('{seed}')"], 0, 0)
        for (task, seed), o in outcomes.items()
    ]
    scores = {
        t: TaskScore(t, 2, sum(e.outcome == "success" for e in episodes if e.task == t), 0, 1, 0)
        for t in TASKS
    }
    return PolicyReport(label, "m", None, scores, 1.0, episodes)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _metrics(run / "metrics.jsonl")
    settings = EvalSettings(TASKS, 2, 1000, 10, 0.0, 24, trained_tasks=TASKS[:1])
    base = _policy(
        "base",
        {(t, s): "failure" for t in TASKS for s in (1000, 1001)},
    )
    trained = _policy(
        "trained",
        {
            ("click-button", 1000): "success",
            ("click-button", 1001): "failure",
            ("click-link", 1000): "success",
            ("click-link", 1001): "truncated",
        },
    )
    write_reports([base, trained], settings, run / "eval")
    episodes = [
        {"step": 1, "task": t, "seed": 7, "outcome": "failure", "actions": ["click('3')"]}
        for t in TASKS
    ]
    (run / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    return run


def test_every_figure_is_drawn_from_the_metrics_and_a_missing_stage_is_left_out(tmp_path):
    _metrics(tmp_path / "metrics.jsonl")
    drawn = draw_plots(tmp_path / "metrics.jsonl", tmp_path / "plots")
    assert [p.name for p in drawn] == list(FIGURES)
    for path in drawn:
        image = Image.open(path)
        assert image.size[0] > 400 and max(ImageStat.Stat(image.convert("L")).stddev) > 10

    _metrics(tmp_path / "metrics.jsonl", grpo_steps=0)  # an SFT-only run
    drawn = draw_plots(tmp_path / "metrics.jsonl", tmp_path / "sft_only")
    assert [p.name for p in drawn] == ["sft.png"]
    assert draw_plots(tmp_path / "missing.jsonl", tmp_path / "none") == []


def test_trajectory_datasets_in_the_run_are_listed_with_who_played_them(run_dir):
    record = Trajectory(
        task="click-link", seed=3, goal='Click on the link "Tortor".', source="scripted",
        policy="rules", tokenizer="t", prompt_format="plain", max_turns=3, prompt_ids=[1],
        completion_ids=[2, 3], env_mask=[1, 1], logprobs=[0.0, 0.0],
        turns=[{"observation": "[14] generic 'Tortor'", "action": "click('14')", "start": 0,
                "end": 2, "error": "TimeoutError: <b>slow</b>"}],
        reward=1.0, outcome="success",
    )  # fmt: skip
    writer = TrajectoryWriter(run_dir / "demos" / "scripted")
    writer.add([record])
    writer.flush()
    page = write_report(run_dir).read_text()
    assert "<h3>demos/scripted" in page
    assert "Click on the link &quot;Tortor&quot;." in page and "scripted: rules" in page
    assert "<code>click(&#x27;14&#x27;)</code>" in page
    assert "&lt;b&gt;slow&lt;/b&gt;" in page  # the env's error, escaped


def test_the_report_command_names_a_missing_run_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


@contextlib.contextmanager
def _opened(report):
    """``report`` in headless Chromium: (page, the console errors so far)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            yield page, errors
        finally:
            browser.close()


def _ink(png: bytes) -> float:
    """How much is drawn in an image (0 for a blank one)."""
    return max(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).stddev)


@pytest.mark.chromium
def test_the_report_loads_in_chromium_with_its_plots_and_working_filters(run_dir):
    assert main(["report", str(run_dir)]) == 0
    assert {p.name for p in (run_dir / "plots").glob("*.png")} == set(FIGURES)
    page = (run_dir / "report.html").read_text()
    assert "<td>click-link (held out)</td>" in page  # not among the training tasks
    assert "<td><b>mean, trained tasks</b></td><td><b>0.000</b></td><td><b>0.500</b></td>" in page
    with _opened(run_dir / "report.html") as (page, errors):
        assert errors == []
        images = page.locator(".plots img")
        assert images.count() == len(FIGURES)
        assert all(
            images.nth(i).evaluate("img => img.complete && img.naturalWidth > 400")
            for i in range(images.count())
        )
        assert _ink(images.first.screenshot()) > 10  # a drawn plot, not a blank box

        rows = page.locator("tr[data-task]")
        assert rows.count() == 4 + 2  # 4 evaluation pages + 2 training episodes
        page.select_option("#task", "click-link")
        visible = [r for r in rows.all() if r.is_visible()]
        assert len(visible) == 3
        assert all(r.get_attribute("data-task") == "click-link" for r in visible)
        page.select_option("#outcome", "changed")  # base failed, trained did not
        visible = [r.inner_text() for r in rows.all() if r.is_visible()]
        assert len(visible) == 1 and "1000" in visible[0] and "success" in visible[0]
        assert page.inner_text("#shown") == "1 episodes shown"
        assert errors == []


@pytest.mark.chromium
def test_each_turns_page_is_kept_with_the_element_acted_on_outlined(
    env_pods, tiny_base_model, tmp_path
):
    """Real env pods, the rule-based policy: every turn's screenshot with its target's role,
    label and box, an episode GIF, and the report's filmstrip with the outline on the element."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    cfg = load_config(
        {
            "model": {"source": str(tiny_base_model)},
            "tasks": {"train": ["click-test"]},
            "env": {"discovery": {"endpoints": list(env_pods)}},
            "grpo": {"max_steps": 1},
            "eval": {"tasks": ["click-test", "enter-text"], "seeds_per_task": 3, "frame_seeds": 2},
            "metrics": {"port": None},
        }
    )
    run = tmp_path / "run"
    report = evaluate_backend(
        cfg,
        ScriptedBackend(tokenizer),
        tokenizer,
        StaticDiscovery(env_pods),
        label="scripted",
        model="rules",
        frames=FrameWriter(run / "eval", "frames/scripted"),
    )
    write_reports([report], EvalSettings.of(cfg), run / "eval")
    assert report.mean_success == 1.0
    assert [e.frames is not None for e in report.episodes] == [True, True, False] * 2
    for episode in (e for e in report.episodes if e.frames):
        turns = episode.frames["turns"]
        assert len(turns) == episode.turns + 1 and turns[-1]["action"] is None
        assert [t["action"] for t in turns[:-1]] == episode.actions
        for turn in turns:
            image = Image.open(run / "eval" / turn["file"])
            assert image.format == "JPEG" and image.size == (332, 214)
        gif = Image.open(run / "eval" / episode.frames["gif"])
        assert gif.n_frames == len(turns)
        assert turns[-2]["target"]["role"] == "button"  # both tasks end on a button
    click = next(e for e in report.episodes if e.task == "click-test").frames["turns"][0]
    target = click["target"]
    assert target["role"] == "button" and target["name"] == "Click Me!"
    x, y, w, h = target["box"]
    assert x >= 0 and y >= 0 and x + w <= 332 and y + h <= 214 and w > 10 and h > 10
    gif = Image.open(run / "eval" / next(e for e in report.episodes).frames["gif"]).convert("RGB")
    assert gif.getpixel((int(x - 2), int(y + h / 2))) == pytest.approx(OUTLINE, abs=60)
    fill = next(e for e in report.episodes if e.task == "enter-text").frames["turns"][0]
    assert fill["target"]["role"] == "textbox" and fill["action"].startswith("fill(")

    write_report(run)
    with _opened(run / "report.html") as (page, errors):
        first = page.locator("details.frames").first
        assert first.locator("img").count() == 0  # frames load when opened
        first.locator("summary").click()
        shots = first.locator(".shot")
        assert shots.count() == 2
        assert shots.first.locator("img").evaluate("img => img.complete && img.naturalWidth")
        box = shots.first.locator(".box").bounding_box()
        picture = shots.first.locator("img").bounding_box()
        assert picture["x"] <= box["x"] and box["x"] + box["width"] <= picture["x"] + 340
        assert _ink(page.screenshot(clip=box)) > 20  # the button is there, not a blank box
        assert errors == []

"""``python -m services.trainer orm train|eval --config cfg.yaml``: the outcome reward model."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

from services.trainer.config import TrainerConfig
from services.trainer.orm.data import Example, describe
from services.trainer.orm.report import judge_report, majority, write_report
from services.trainer.orm.scorer import OrmScorer
from services.trainer.orm.train import load_splits, orm_base, orm_folder, train_orm

log = logging.getLogger(__name__)


def run(cfg: TrainerConfig, action: str) -> int:
    try:
        if action == "train":
            print(f"ORM model: {train_orm(cfg)}", flush=True)
        else:
            print(evaluate(cfg), flush=True)
    except (ValueError, FileNotFoundError) as exc:
        print(f"orm {action}: {exc} (orm.data lists labelled trajectories: make orm-data)",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


def evaluate(cfg: TrainerConfig) -> str:
    """The trained ORM beside the untrained base (same prompt) and the majority verdict, on the
    held-out seeds and the held-out tasks; the table (also written to <run>/orm/eval/)."""
    splits = load_splits(cfg)
    cache = cfg.model.cache_dir.expanduser()
    page_tokens = cfg.orm.page_tokens
    base = orm_base(cfg).model.source
    judges = {
        "majority": majority(splits["train"]),
        "base zero-shot": _timed(OrmScorer.load(base, cache_dir=cache, page_tokens=page_tokens)),
        "ORM": _timed(
            OrmScorer.load(orm_folder(cfg) / "model", cache_dir=cache, page_tokens=page_tokens)
        ),
    }
    tests = {k: v for k, v in splits.items() if k != "train"}
    data = {split: describe(items) for split, items in splits.items()}
    path = write_report(judge_report(judges, tests), orm_folder(cfg) / "eval", data)
    return path.read_text()


def _timed(scorer: OrmScorer):
    def judge(items: Sequence[Example]) -> list[float]:
        started = time.perf_counter()
        scores = scorer.scores([e.judge_input for e in items])
        seconds = time.perf_counter() - started
        log.info("judged %d trajectories in %.1f s (%.1f/s)", len(items), seconds,
                 len(items) / max(seconds, 1e-9))  # fmt: skip
        return scores

    return judge
